"""`ibis bench --volume`: seconds per volume and per slice reached, encoder share, torch vs onnxruntime, one run.

Each repetition starts cold (a fresh SliceEncoder, no disk cache): the
oracle segments the key slice (the reference's largest) and propagation runs
both ways, as `segment-volume` does. Reported: medians of seconds per
volume and per slice reached, the encoder's share, and the slices encoded
against the distinct slices reached (a slice encoded twice would show).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ..policies import build_policy
from ..tools.base import SegmentationTool
from ..tools.factory import build_tool
from ..tools.torch_tool import TorchSamTool
from .key_slice import reference_key_slice
from .readers import read_label_map, read_volume
from .session import VolumeSession
from .slices import SliceEncoder

__all__ = ["DEFAULT_VOLUME", "run_volume_bench"]

DEFAULT_VOLUME = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "volumes" / "msd-spleen" / \
    "spleen2_ivadomed_crop.npz"


def _time_volume(tool: SegmentationTool, volume, reference, runs: int) -> dict:
    key = reference_key_slice(reference)
    samples = []
    for _ in range(runs):
        encoder = SliceEncoder(tool, volume)
        session = VolumeSession(tool, volume, encoder=encoder)
        oracle = build_policy("oracle", ground_truth=volume.to_display(reference[key]), target_iou=0.9)
        started = time.perf_counter()
        session.run_agent(oracle, "Segment the target.", key, max_turns=5)
        seconds = time.perf_counter() - started
        samples.append({"seconds": seconds, "reached": len(session.reached), "encoded": len(encoder.encoded),
                        "distinct": len(set(encoder.encoded)), "encoder": encoder.encode_seconds})
    median = {key: statistics.median(s[key] for s in samples) for key in ("seconds", "reached", "encoder")}
    median["per_slice"] = statistics.median(s["seconds"] / max(1, s["reached"]) for s in samples)
    median["share"] = statistics.median(s["encoder"] / s["seconds"] for s in samples)
    median["encoded"] = max(s["encoded"] for s in samples)
    median["twice"] = sum(s["encoded"] - s["distinct"] for s in samples)
    return median


def run_volume_bench(volume_path: str | Path | None = None, label: str | None = None, tool_spec: str = "lite-medsam",
                     runs: int = 3) -> str:
    """Torch and onnxruntime on the same volume, the same key slice and the same oracle, side by side."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    path = Path(volume_path) if volume_path else DEFAULT_VOLUME
    if not path.exists():
        raise ValueError(f"{path} not found: give a volume with a label map (an npz of ../shared/data/volumes) "
                         "as --volume PATH")
    volume = read_volume(path)
    labels = read_label_map(volume)
    which = label or next(iter(sorted(labels.names.items())), (1, ""))[0]
    reference = labels.mask(which)
    torch_tool = build_tool(tool_spec, backend="torch")
    if not isinstance(torch_tool, TorchSamTool):
        raise ValueError(f"bench compares torch with onnxruntime: give a spec built from torch weights, not "
                         f"{tool_spec!r}")
    onnx_tool = build_tool(tool_spec, backend="onnxruntime")  # the same weights' cached graphs
    results = {"torch": _time_volume(torch_tool, volume, reference, runs),
               "onnxruntime": _time_volume(onnx_tool, volume, reference, runs)}
    lines = [f"tool {torch_tool.name}; {volume.describe()}; label {which}; medians of {runs} cold run(s) "
             "(oracle key slice, both ways)",
             "| backend | s / volume | slices reached | s / slice reached | encoder share | slices encoded | "
             "encoded twice |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['reached']:.0f} | {r['per_slice']:.3f} | "
                     f"{100 * r['share']:.0f} % | {r['encoded']} | {r['twice']} |")
    t, o = results["torch"], results["onnxruntime"]
    lines.append(f"| ratio onnxruntime/torch | {o['seconds'] / t['seconds']:.2f} | | "
                 f"{o['per_slice'] / t['per_slice']:.2f} | | | |")
    return "\n".join(lines)
