"""What the kill trials kill: the product's own writers, rewriting one output again and again.

`python -m ibisagent.stress.writers KIND OUT` writes output number 1, 2, 3 ...
over the same place (as reruns do) and prints each number once it is
complete; the trial SIGKILLs it at a random moment and then checks that
what is there is one complete output (`check_output`). Each number gives
another mask, so files of two outputs mixed together do not agree.
KIND: run (a run folder, `outputs.write_run`), seg (a DICOM-SEG and its
side-car, `write_segmentation`), checkpoint (`outputs.save_torch_atomic`,
what training writes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["KINDS", "check_output", "main"]

KINDS = ("run", "seg", "checkpoint")
_SIDE = 192


def _mask(number: int) -> np.ndarray:
    """A square whose side grows with the number: outputs differ in area."""
    mask = np.zeros((_SIDE, _SIDE), bool)
    side = 8 + (number * 7) % (_SIDE - 16)
    mask[4:4 + side, 4:4 + side] = True
    return mask


def _write_run(out: Path, number: int, image: np.ndarray) -> None:
    from ..agent import AgentResult, RunStatus, Turn
    from ..outputs import write_run

    turns = [Turn(i, "<think>t</think><action>Terminate</action>", "t", "Terminate", []) for i in range(number % 4 + 1)]
    result = AgentResult(_mask(number), RunStatus.TERMINATED, turns, [])
    write_run(out, image, result, [_mask(number)] * len(turns), {"output_number": number})


def _seg_source():
    from pydicom.data import get_testdata_file
    import pydicom

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    source.Rows = source.Columns = _SIDE
    source.PixelData = np.zeros((_SIDE, _SIDE), np.int16).tobytes()
    return source


def _write_seg(out: Path, number: int, source) -> None:
    from ..dicom.seg_writer import write_segmentation

    write_segmentation(out / "seg.dcm", source, _mask(number), "liver", trajectory={"output_number": number})


def _write_checkpoint(out: Path, number: int) -> None:
    import torch

    from ..outputs import save_torch_atomic

    out.mkdir(parents=True, exist_ok=True)
    weights = torch.full((256, 1024), float(number))  # 1 MiB: the write takes a while
    save_torch_atomic({"output_number": number, "weights": weights}, out / "last.pt")


def check_output(kind: str, out: Path) -> tuple[int | None, list[str]]:
    """(the output number found, problems). No output at all is (None, []); debris are hidden temporaries."""
    if not out.exists():
        return None, []
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if not visible:
        return None, []
    try:
        if kind == "run":
            return _check_run(out, visible)
        if kind == "seg":
            return _check_seg(out, visible)
        return _check_checkpoint(out, visible)
    except Exception as error:  # an unreadable file is exactly what the trial looks for
        return None, [f"unreadable output: {type(error).__name__}: {str(error)[:200]}"]


def _check_run(out: Path, visible: list[str]) -> tuple[int | None, list[str]]:
    from PIL import Image

    if "trajectory.json" not in visible:
        return None, [f"no trajectory.json beside {visible}"]
    trajectory = json.loads((out / "trajectory.json").read_text())
    number = trajectory["output_number"]
    expected = sorted(["mask.png", "overlay.png", "trajectory.json",
                       *[f"turn_{i:02d}.png" for i in range(len(trajectory["turns"]))]])
    problems = [] if visible == expected else [f"files {visible}, expected {expected}"]
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    if not np.array_equal(mask, _mask(number)):
        problems.append(f"mask.png is not output {number}'s (trajectory says {number})")
    for name in visible:
        if name.endswith(".png"):
            Image.open(out / name).load()
    return number, problems


def _check_seg(out: Path, visible: list[str]) -> tuple[int | None, list[str]]:
    import pydicom

    from ..dicom.seg_writer import segment_mask

    if visible not in (["seg.dcm"], ["seg.dcm", "seg.json"]):  # killed after the SEG, before its side-car: allowed
        return None, [f"files {visible}, expected seg.dcm (and seg.json)"]
    seg = pydicom.dcmread(out / "seg.dcm")
    mask = segment_mask(out / "seg.dcm", str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
                                             .ReferencedSOPInstanceUID))
    number = next((n for n in range(1, _SIDE - 15) if np.array_equal(mask, _mask(n))), None)
    if number is None:
        return None, ["seg.dcm holds no output's mask"]
    if visible == ["seg.dcm"]:
        return number, []
    sidecar = json.loads((out / "seg.json").read_text())
    problems = []
    if sidecar["sop_instance_uid"] != str(seg.SOPInstanceUID) or sidecar["trajectory"]["output_number"] != number:
        problems.append(f"seg.json describes another SEG than seg.dcm (output {number})")
    return number, problems


def _check_checkpoint(out: Path, visible: list[str]) -> tuple[int | None, list[str]]:
    import torch

    if visible != ["last.pt"]:
        return None, [f"files {visible}, expected last.pt"]
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    number = checkpoint["output_number"]
    problems = [] if bool((checkpoint["weights"] == number).all()) else ["last.pt holds mixed weights"]
    return number, problems


def main(argv: list[str] | None = None) -> None:
    kind, out = (argv or sys.argv[1:])[:2]
    out = Path(out)
    if kind not in KINDS:
        raise SystemExit(f"KIND must be one of {', '.join(KINDS)}")
    image = np.full((_SIDE, _SIDE, 3), 90, np.uint8)
    source = _seg_source() if kind == "seg" else None
    number = 0
    while True:
        number += 1
        if kind == "run":
            _write_run(out, number, image)
        elif kind == "seg":
            _write_seg(out, number, source)
        else:
            _write_checkpoint(out, number)
        print(number, flush=True)


if __name__ == "__main__":
    main()
