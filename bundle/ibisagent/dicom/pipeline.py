"""`ibis segment-dicom`: a DICOM series in, a DICOM-SEG (plus a JSON trajectory side-car) out.

The handler is a plain function so the CLI only wires argparse to it. Like
`ibis segment`, nothing is written unless the agent's run completed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..agent import Agent, AgentResult, TurnCallback
from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from .codes import code_for_label
from .seg_writer import WrittenSeg, write_segmentation
from .series import DicomSeries, read_series

__all__ = ["DicomSegmentationRun", "segment_dicom"]


@dataclass(frozen=True)
class DicomSegmentationRun:
    series: DicomSeries
    result: AgentResult
    label: str  # the SegmentLabel written (the label, else "target")
    written: WrittenSeg | None  # None when the run did not complete: nothing was written

    @property
    def completed(self) -> bool:
        return self.result.status.completed


def segment_dicom(series_dir: str | Path | Sequence[str | Path], query: str, out_dir: str | Path,
                  tool: SegmentationTool, policy: Policy, slice_index: int | None = None, label: str | None = None,
                  *, prompts: PromptSet | None = None, max_turns: int = 20, window: str | None = None,
                  series_uid: str | None = None, human_clicked: bool = False, on_turn: TurnCallback | None = None,
                  file_name: str = "seg.dcm", tool_name: str | None = None, policy_name: str | None = None,
                  series: DicomSeries | None = None) -> DicomSegmentationRun:
    """Read the series, run the agent on the chosen slice, write `out_dir/seg.dcm` and `seg.json`.

    `label` picks the segment's codes (see `codes.code_for_label`); without it the
    segment is labelled "target" with the generic code and a warning, because the
    free-text query is never parsed for anatomy. Input errors raise
    `DicomSeriesError`; to get them before loading models, call `read_series`
    first and pass its result as `series` (then the reading options are unused).
    """
    if not query or not query.strip():
        raise ValueError("the query is empty")
    if series is None:
        series = read_series(series_dir, slice_index=slice_index, series_uid=series_uid, window=window)
    segment_label = label.strip() if label and label.strip() else "target"
    code_for_label(segment_label)  # warn about an unknown label before the (slow) run, not after
    agent = Agent(tool, policy, prompts, max_turns=max_turns)
    result = agent.run(series.rgb, query, on_turn=on_turn)
    if not result.status.completed:
        return DicomSegmentationRun(series, result, segment_label, None)
    mask = series.display.to_stored(np.asarray(result.mask, bool))
    trajectory = {
        "input": Path(series_dir).name if isinstance(series_dir, (str, Path)) else "file list",
        "series_instance_uid": series.series_instance_uid, "slice_index": series.index,
        "slice_count": series.slice_count, "window": series.window, "query": query, "label": segment_label,
        "tool": tool_name or getattr(tool, "name", type(tool).__name__),
        "policy": policy_name or type(policy).__name__, "input_warnings": list(series.warnings),
        "display": series.display_note or "as stored",  # the frame of the clicks below; the SEG is in stored order
        **result.trajectory(),
    }
    written = write_segmentation(Path(out_dir) / file_name, series.source, mask, segment_label,
                                 frame_index=series.frame_index, human_clicked=human_clicked, trajectory=trajectory)
    return DicomSegmentationRun(series, result, segment_label, written)
