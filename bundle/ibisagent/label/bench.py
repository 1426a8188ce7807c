"""`ibis bench --label`: ms per click in a label-task session vs MONAI Label's re-encode-every-click pattern.

Both sides use the same tool on the same image and the same clicks, in one
run. Ours: the label task (`AgentLabelTask`, the code the server's worker
runs) with one session: the first click encodes, later clicks reuse the
embedding and pass the previous logits. MONAI Label's SAM2 task: every click
encodes the slice again and predicts from all clicks without a previous mask.
The clicks come from the click simulator against the demo's liver reference
(pydicom's abdominal MR), so they go where an annotator would put them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from ..clicks import next_click, normalised_to_pixel
from ..imaging.io import read_image
from ..tools.base import Click, SegmentationTool
from ..tools.factory import build_tool

__all__ = ["run_label_bench"]


def _clicks(tool: SegmentationTool, image, reference, count: int) -> list[Click]:
    embedding = tool.encode(image)
    clicks: list[Click] = []
    mask = reference & False
    low_res = None
    for _ in range(count):
        click, _ = next_click(mask, reference)
        if click is None:
            break
        clicks.append(click)
        output = tool.predict(embedding, clicks, low_res)
        mask, low_res = output.mask, output.low_res_logits
    return clicks


def _point(click: Click, shape) -> list[int]:
    row, col = normalised_to_pixel(click.x, click.y, shape)
    return [col, row]


def run_label_bench(tool_spec: str = "lite-medsam", clicks: int = 6, rounds: int = 3) -> str:
    """One table: first-click and later-click milliseconds, ours vs the re-encoding pattern, and their ratio."""
    import numpy as np
    from pydicom.data import get_testdata_file

    from ..demo import DEMO_REFERENCE
    from ..policies import build_policy
    from .task import AgentLabelTask

    if clicks < 2 or rounds < 1:
        raise ValueError("--clicks must be >= 2 and rounds >= 1")
    tool = build_tool(tool_spec)
    source = get_testdata_file("examples_overlay.dcm")
    image = read_image(source).rgb
    reference = np.asarray(Image.open(DEMO_REFERENCE)) > 0
    sequence = _clicks(tool, image, reference, clicks)
    ours_first, ours_next, theirs_first, theirs_next = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        studies = Path(folder)
        Image.fromarray(image).save(studies / "demo.png")
        out = studies / "out"
        out.mkdir()
        for round_index in range(rounds):
            task = AgentLabelTask(tool, build_policy, ["lite"], [studies])  # a fresh server: nothing cached
            points: list[list[int]] = []
            for index, click in enumerate(sequence):
                points.append(_point(click, image.shape))
                params = {"foreground": [p for p, c in zip(points, sequence) if c.positive],
                          "background": [p for p, c in zip(points, sequence) if not c.positive],
                          "client_id": f"bench-{round_index}", "label": "liver"}
                started = time.perf_counter()
                _, result = task.infer(studies / "demo.png", "demo", params, out)
                elapsed = 1000 * (time.perf_counter() - started)
                assert result["encoded"] == (index == 0)
                (ours_first if index == 0 else ours_next).append(elapsed)
            for index in range(1, len(sequence) + 1):  # MONAI Label's SAM2 pattern: encode, all clicks, no mask
                started = time.perf_counter()
                embedding = tool.encode(image)
                tool.predict(embedding, sequence[:index], None)
                (theirs_first if index == 1 else theirs_next).append(1000 * (time.perf_counter() - started))
    first, later, their_first, reencode = (statistics.median(v)
                                           for v in (ours_first, ours_next, theirs_first, theirs_next))
    lines = [
        f"tool {tool.name}; pydicom's abdominal MR {image.shape[1]}x{image.shape[0]}; {len(sequence)} simulated "
        f"clicks per session, {rounds} sessions; medians in ms",
        "| pattern | first click (encode included) | each later click |",
        "|---|---|---|",
        f"| ibisagent session (label task) | {first:.1f} | {later:.1f} |",
        f"| re-encode every click (MONAI Label SAM2 task) | {their_first:.1f} | {reencode:.1f} |",
        f"| ratio re-encode / session | | {reencode / later:.1f}x |",
    ]
    return "\n".join(lines)
