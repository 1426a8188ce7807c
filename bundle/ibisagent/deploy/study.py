"""One selected series in, one DICOM-SEG and one DICOM SR out: the agent on each target, all or nothing.

This is the deployment's work without the SDK around it (the operators in
`operators.py` call it), so it can be tested and reused on its own.

Today the agent segments each target on the series' key slice (the middle
one); the SEG holds that frame and the SR says so in each group's extent
line. Whole-series masks come with the volume session (the volumes room).
Every target must complete: a run that ends otherwise (invalid answers, a
tool error) fails the whole study and nothing is written, because a report
missing a target reads like a finding of nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from ..agent import Agent, AgentResult
from ..dicom.derived import write_json_atomic
from ..dicom.series import DicomSeries, read_series
from ..dicom.seg_writer import write_segmentation
from ..dicom.sr_writer import TargetFinding, build_report, write_report
from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from .config import Target

__all__ = ["OUTPUT_NAMES", "DeployError", "StudyResult", "TargetResult", "segment_series", "write_study"]

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("seg.dcm", "sr.dcm", "run.json")


class DeployError(ValueError):
    """A study the deployment cannot turn into a SEG and an SR (the message says why)."""


@dataclass(frozen=True)
class TargetResult:
    target: Target
    result: AgentResult
    mask: np.ndarray  # (H, W) bool in the key slice's stored pixel order

    def reasoning(self) -> str:
        """The agent's own words, turn by turn."""
        lines = [f"Turn {turn.index + 1} ({turn.action or 'unparseable'}): {turn.think.strip()}"
                 for turn in self.result.turns if turn.think and turn.think.strip()]
        return "\n".join(lines)


@dataclass(frozen=True)
class StudyResult:
    series: DicomSeries  # read at the key slice
    targets: tuple[TargetResult, ...]
    algorithm_parameters: Mapping[str, str] = field(default_factory=dict)

    def voxel_ml(self) -> float:
        """The volume of one voxel of the key slice (pixel spacing x slice spacing or thickness)."""
        spacing = self.series.geometry.pixel_spacing
        depth = self.series.geometry.slice_spacing or _float(self.series.source.get("SliceThickness"))
        if spacing is None or depth is None:
            raise DeployError("the series has no PixelSpacing or slice spacing/thickness: volumes cannot be given")
        return spacing[0] * spacing[1] * depth / 1000.0


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def segment_series(files: Sequence[str | Path], targets: Sequence[Target], tool: SegmentationTool, policy: Policy,
                   prompts: PromptSet | None = None, max_turns: int = 20,
                   algorithm_parameters: Mapping[str, str] | None = None) -> StudyResult:
    """Run the agent for each target on the series' key slice; raise DeployError if any run fails."""
    series = read_series(files, slice_index=0)
    if series.slice_count > 1:
        series = read_series(files, slice_index=series.slice_count // 2)
    log.info("series %s: %d slice(s), %s; key slice %d", series.series_instance_uid, series.slice_count,
             series.modality or "unknown modality", series.index)
    agent = Agent(tool, policy, prompts, max_turns=max_turns)
    results = []
    for target in targets:
        result = agent.run(series.rgb, target.query)
        if not result.status.completed:
            raise DeployError(f"target {target.label!r}: the agent's run ended with {result.status.value} "
                              f"({result.error or 'no usable answer'}); nothing was written")
        mask = series.display.to_stored(np.asarray(result.mask, bool))
        log.info("target %r: %s after %d turn(s), %d px", target.label, result.status.value, len(result.turns),
                 int(mask.sum()))
        results.append(TargetResult(target, result, mask))
    return StudyResult(series, tuple(results), dict(algorithm_parameters or {}))


def _run_record(study: StudyResult, seg_uid: str, sr_uid: str) -> dict:
    """The run in JSON (no patient attributes): what was asked, every turn, which weights."""
    series = study.series
    return {"seg_sop_instance_uid": seg_uid, "sr_sop_instance_uid": sr_uid,
            "source_series_instance_uid": series.series_instance_uid, "key_slice": series.index,
            "slice_count": series.slice_count, "window": series.window, "input_warnings": list(series.warnings),
            "display": series.display_note or "as stored", "algorithm_parameters": dict(study.algorithm_parameters),
            "targets": [{"label": t.target.label, "query": t.target.query, "segment_number": number,
                         **t.result.trajectory()} for number, t in enumerate(study.targets, 1)]}


def write_study(out_dir: str | Path, study: StudyResult) -> list[Path]:
    """seg.dcm, sr.dcm and run.json in `out_dir`, all or none.

    Everything is written into a hidden staging folder inside `out_dir`
    first and moved into place only once all of it was written; on any error
    the staging folder is removed. An `out_dir` that already holds these
    names is refused (an earlier result is never overwritten).
    """
    out_dir = Path(out_dir)
    taken = [name for name in OUTPUT_NAMES if (out_dir / name).exists()]
    if taken:
        raise DeployError(f"{out_dir} already holds {', '.join(taken)} from an earlier run; "
                          "give an empty output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".ibisagent-staging-", dir=out_dir))
    except OSError as error:
        raise DeployError(f"cannot write to the output folder {out_dir}: {error.strerror or error}") from None
    moved: list[Path] = []
    try:
        series = study.series
        labels = [t.target.label for t in study.targets]
        written = write_segmentation(staging / "seg.dcm", series.source, np.stack([t.mask for t in study.targets]),
                                     labels, frame_index=series.frame_index, human_clicked=False,
                                     series_description="ibisagent segmentation (AI, not verified)",
                                     algorithm_parameters=study.algorithm_parameters)
        seg = pydicom.dcmread(written.path)
        voxel_ml = study.voxel_ml()
        extent = f"key slice {series.index + 1} of {series.slice_count} only (no whole-series propagation)"
        findings = [TargetFinding(number, t.target.query, t.reasoning(), t.result.status.value,
                                  round(float(t.mask.sum()) * voxel_ml, 3), extent)
                    for number, t in enumerate(study.targets, 1)]
        report = build_report(seg, list(series.datasets), findings, algorithm_parameters=study.algorithm_parameters,
                              series_description="ibisagent report (AI, not verified)")
        write_report(staging / "sr.dcm", report)
        write_json_atomic(staging / "run.json", _run_record(study, written.sop_instance_uid,
                                                            str(report.SOPInstanceUID)))
        for name in ("run.json", "seg.dcm", "sr.dcm"):  # the DICOM last: a watcher finds its side-car there
            os.replace(staging / name, out_dir / name)
            moved.append(out_dir / name)
    except OSError as error:
        for path in moved:  # all or none: take back what was moved before the failure
            path.unlink(missing_ok=True)
        raise DeployError(f"cannot write to the output folder {out_dir}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", ", ".join(OUTPUT_NAMES))
    return [out_dir / name for name in OUTPUT_NAMES]
