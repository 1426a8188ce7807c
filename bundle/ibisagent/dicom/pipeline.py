"""`ibis segment-dicom`: a DICOM series in, a DICOM-SEG (plus a JSON trajectory side-car) out.

The handler is a plain function so the CLI only wires argparse to it. Like
`ibis segment`, nothing is written unless the agent's run completed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..agent import Agent, AgentResult, TurnCallback
from ..labels import LabelChoice, choose_label
from ..outputs import marked_overlay, write_image_atomic
from ..policies.base import Policy
from ..policies.query_encoder import shared_query_encoder
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from .codes import SegmentCode, UnknownLabelWarning, code_for_label
from .seg_writer import WrittenSeg, write_segmentation
from .series import DicomSeries, read_series

__all__ = ["DicomSegmentationRun", "segment_dicom"]


@dataclass(frozen=True)
class DicomSegmentationRun:
    series: DicomSeries
    result: AgentResult
    label: str  # the SegmentLabel written (the label, else "target")
    written: WrittenSeg | None  # None when the run did not complete: nothing was written
    label_choice: LabelChoice  # how the label was chosen (given, named in the query, inferred, none)
    code: SegmentCode  # the segment's codes (generic Tissue when the label has no specific one)
    overlay: Path | None = None  # the segmented slice with the mask and the clicks, for a person (stored order)

    @property
    def completed(self) -> bool:
        return self.result.status.completed


def segment_dicom(series_dir: str | Path | Sequence[str | Path], query: str, out_dir: str | Path,
                  tool: SegmentationTool, policy: Policy, slice_index: int | None = None,
                  label: str | LabelChoice | None = None, *, prompts: PromptSet | None = None, max_turns: int = 20,
                  window: str | None = None, series_uid: str | None = None, human_clicked: bool = False,
                  on_turn: TurnCallback | None = None, file_name: str = "seg.dcm", tool_name: str | None = None,
                  policy_name: str | None = None, series: DicomSeries | None = None) -> DicomSegmentationRun:
    """Read the series, run the agent on the chosen slice, write `out_dir/seg.dcm`, `seg.json` and
    `seg_overlay.png` (the slice with the mask and the clicks, in the stored pixel order).

    `label` names the segment and picks its codes (see `codes.code_for_label`);
    without it the label comes from the query (`labels.choose_label`: a known
    target named in it, or inferred by the query encoder), else "target" with
    the generic code and one `UnknownLabelWarning`. The side-car records how
    the label was chosen. Input errors raise `DicomSeriesError`; to get them
    before loading models, call `read_series` first and pass its result as
    `series` (then the reading options are unused).
    """
    if not query or not query.strip():
        raise ValueError("the query is empty")
    if series is None:
        series = read_series(series_dir, slice_index=slice_index, series_uid=series_uid, window=window)
    choice = label if isinstance(label, LabelChoice) else choose_label(label, query, shared_query_encoder)
    segment_label = choice.segment_label
    with warnings.catch_warnings():  # said once, here, before the (slow) run; the writer looks the code up again
        warnings.simplefilter("ignore", UnknownLabelWarning)
        code = code_for_label(segment_label)
    if not code.known:
        warnings.warn(f"{choice.describe()}; the segment {segment_label!r} gets the generic code Tissue",
                      UnknownLabelWarning, stacklevel=2)
    agent = Agent(tool, policy, prompts, max_turns=max_turns)
    result = agent.run(series.rgb, query, on_turn=on_turn)
    if not result.status.completed:
        return DicomSegmentationRun(series, result, segment_label, None, choice, code)
    mask = series.display.to_stored(np.asarray(result.mask, bool))
    trajectory = {
        "input": Path(series_dir).name if isinstance(series_dir, (str, Path)) else "file list",
        "series_instance_uid": series.series_instance_uid, "slice_index": series.index,
        "slice_count": series.slice_count, "window": series.window, "query": query, "label": segment_label,
        "label_choice": choice.to_dict(),
        "tool": tool_name or getattr(tool, "name", type(tool).__name__),
        "policy": policy_name or type(policy).__name__, "input_warnings": list(series.warnings),
        "display": series.display_note or "as stored",  # the frame of the clicks below; the SEG is in stored order
        **result.trajectory(),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownLabelWarning)
        written = write_segmentation(Path(out_dir) / file_name, series.source, mask, segment_label,
                                     frame_index=series.frame_index, human_clicked=human_clicked,
                                     trajectory=trajectory)
    overlay = Path(out_dir) / f"{Path(file_name).stem}_overlay.png"
    write_image_atomic(overlay, marked_overlay(series.rgb, result.mask, result.clicks, series.display))
    return DicomSegmentationRun(series, result, segment_label, written, choice, code, overlay)
