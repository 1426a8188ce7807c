"""One selected series in, one DICOM-SEG and one DICOM SR out: the agent on each target, all or nothing.

This is the deployment's work without the SDK around it (the operators in
`operators.py` call it), so it can be tested and reused on its own.

A series of several slices is segmented whole, as `ibis segment-volume`
does: for each target the agent's sweep picks a key slice, the agent
segments it, and propagation carries the mask through the series both ways
(`volume.session.VolumeSession`; one slice encoder is shared by the targets,
so no slice is encoded twice). A series of one image (a radiograph, a single
slice) is segmented on that image. Every target must complete: a run that
ends otherwise (invalid answers, a tool error) fails the whole study and
nothing is written, because a report missing a target reads like a finding
of nothing. A completed run whose confidence is below its threshold is
written, flagged unreliable in the SR and run.json, and logged as a warning.
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
from ..dicom.series import DicomSeries, DicomSeriesError, read_series
from ..dicom.seg_writer import Segment, write_segments
from ..dicom.sr_writer import TargetFinding, build_report, write_report
from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from ..volume.key_slice import choose_key_slice
from ..volume.pipeline import series_sources
from ..volume.readers import volume_from_series
from ..volume.session import VolumeSession
from ..volume.slices import SliceEncoder
from ..volume.volume import VolumeError
from .config import Target

__all__ = ["OUTPUT_NAMES", "DeployError", "StudyResult", "TargetResult", "segment_series", "write_study"]

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("seg.dcm", "sr.dcm", "run.json")


class DeployError(ValueError):
    """A study the deployment cannot turn into a SEG and an SR (the message says why)."""


@dataclass(frozen=True)
class TargetResult:
    target: Target
    result: AgentResult  # the agent's run on the key slice
    mask: np.ndarray  # (N, H, W) bool: plane k on the series' sorted slice k, stored pixel order
    key_slice: int
    key_slice_from: str  # how the key slice was chosen
    propagation: dict | None = None  # the volume session's record (None for a one-image series)

    def reasoning(self) -> str:
        """The agent's own words, turn by turn."""
        lines = [f"Turn {turn.index + 1} ({turn.action or 'unparseable'}): {turn.think.strip()}"
                 for turn in self.result.turns if turn.think and turn.think.strip()]
        return "\n".join(lines)

    def slices(self) -> list[int]:
        """Sorted slice indices holding the mask."""
        return [int(k) for k in np.nonzero(self.mask.any(axis=(1, 2)))[0]]

    def extent(self, slice_count: int) -> str:
        """The SR's extent line: which slices hold the segment, and where the agent worked."""
        held = self.slices()
        if slice_count == 1:
            return "the series' one image"
        where = (f"slices {held[0] + 1}-{held[-1] + 1} of {slice_count} ({len(held)} holding it)" if held
                 else f"no slice of {slice_count}")
        return f"{where}; key slice {self.key_slice + 1} ({self.key_slice_from}), propagated both ways"


@dataclass(frozen=True)
class StudyResult:
    series: DicomSeries
    targets: tuple[TargetResult, ...]
    algorithm_parameters: Mapping[str, str] = field(default_factory=dict)
    encoded_slices: int = 0  # slices the encoder ran on (each once, shared by the targets)

    def voxel_ml(self) -> float:
        """The volume of one voxel: pixel spacing x slice spacing (or slice thickness for one image)."""
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


def _completed(target: Target, result: AgentResult) -> AgentResult:
    if not result.status.completed:
        raise DeployError(f"target {target.label!r}: the agent's run ended with {result.status.value} "
                          f"({result.error or 'no usable answer'}); nothing was written")
    if result.unreliable:
        log.warning("target %r: %s", target.label, result.confidence.warning())
    return result


def segment_series(files: Sequence[str | Path], targets: Sequence[Target], tool: SegmentationTool, policy: Policy,
                   prompts: PromptSet | None = None, max_turns: int = 20,
                   algorithm_parameters: Mapping[str, str] | None = None) -> StudyResult:
    """Run the agent for each target on the whole series; raise DeployError if any run fails."""
    try:
        series = read_series(files, slice_index=0)
    except DicomSeriesError as error:
        raise DeployError(str(error)) from None
    log.info("series %s: %d slice(s), %s", series.series_instance_uid, series.slice_count,
             series.modality or "unknown modality")
    if series.slice_count == 1:
        results = [_one_image(series, target, tool, policy, prompts, max_turns) for target in targets]
        encoded = 1
    else:
        try:  # no geometry, colour: refused here; uneven spacing below, with the deployment's own words
            volume = volume_from_series(series, allow_uneven_spacing=True)
        except VolumeError as error:
            raise DeployError(str(error)) from None
        if not volume.uniform_spacing:
            raise DeployError(f"series {series.series_instance_uid}: the slice spacing is uneven (a slice is "
                              "probably missing), so a whole-series mask and its volume would be wrong; restore "
                              "the missing slice. Nothing was written")
        encoder = SliceEncoder(tool, volume)
        results = [_whole_series(volume, encoder, target, tool, policy, prompts, max_turns) for target in targets]
        encoded = len(encoder.encoded)
    return StudyResult(series, tuple(results), dict(algorithm_parameters or {}), encoded)


def _one_image(series: DicomSeries, target: Target, tool: SegmentationTool, policy: Policy,
               prompts: PromptSet | None, max_turns: int) -> TargetResult:
    result = _completed(target, Agent(tool, policy, prompts, max_turns=max_turns).run(series.rgb, target.query))
    mask = series.display.to_stored(np.asarray(result.mask, bool))[None]
    log.info("target %r: %s after %d turn(s), %d px", target.label, result.status.value, len(result.turns),
             int(mask.sum()))
    return TargetResult(target, result, mask, 0, "the only image")


def _whole_series(volume, encoder: SliceEncoder, target: Target, tool: SegmentationTool, policy: Policy,
                  prompts: PromptSet | None, max_turns: int) -> TargetResult:
    choice = choose_key_slice(encoder, policy, target.query, prompts)
    session = VolumeSession(tool, volume, encoder=encoder)
    result = _completed(target, session.run_agent(policy, target.query, choice.index, prompts=prompts,
                                                  max_turns=max_turns))
    mask = session.mask()
    how = "chosen by the agent's sweep"
    held = TargetResult(target, result, mask, choice.index, how,
                        {"key_slice_choice": choice.record(), **session.trajectory()})
    log.info("target %r: %s after %d turn(s) on key slice %d; %d voxel(s) on %d slice(s)", target.label,
             result.status.value, len(result.turns), choice.index, int(mask.sum()), len(held.slices()))
    return held


def _findings(study: StudyResult) -> list[TargetFinding]:
    voxel_ml = study.voxel_ml()
    findings = []
    for number, t in enumerate(study.targets, 1):
        confidence = t.result.confidence
        findings.append(TargetFinding(
            number, t.target.query, t.reasoning(), t.result.status.value, round(float(t.mask.sum()) * voxel_ml, 3),
            t.extent(study.series.slice_count), confidence.value if confidence else None,
            confidence.threshold if confidence else None, confidence.source if confidence else ""))
    return findings


def _run_record(study: StudyResult, findings: Sequence[TargetFinding], seg_uid: str, sr_uid: str) -> dict:
    """The run in JSON (no patient attributes): what was asked, every turn and slice, which weights."""
    series = study.series
    targets = []
    for number, (t, finding) in enumerate(zip(study.targets, findings, strict=True), 1):
        propagation = {k: v for k, v in (t.propagation or {}).items() if k != "agent"}  # the turns are below
        targets.append({"label": t.target.label, "query": t.target.query, "segment_number": number,
                        "key_slice": t.key_slice, "key_slice_from": t.key_slice_from,
                        "mask_voxels": int(t.mask.sum()), "mask_slices": t.slices(), "volume_ml": finding.volume_ml,
                        **t.result.trajectory(),
                        **({"propagation": propagation} if t.propagation is not None else {})})
    return {"seg_sop_instance_uid": seg_uid, "sr_sop_instance_uid": sr_uid,
            "source_series_instance_uid": series.series_instance_uid, "slice_count": series.slice_count,
            "encoded_slices": study.encoded_slices, "window": series.window,
            "input_warnings": list(series.warnings), "display": series.display_note or "as stored",
            "algorithm_parameters": dict(study.algorithm_parameters), "targets": targets}


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
    findings = _findings(study)  # DeployError (no spacing) before anything is written
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".ibisagent-staging-", dir=out_dir))
    except OSError as error:
        raise DeployError(f"cannot write to the output folder {out_dir}: {error.strerror or error}") from None
    moved: list[Path] = []
    try:
        series = study.series
        sources, frames = series_sources(series)
        segments = [Segment(t.target.label, t.mask) for t in study.targets]
        written = write_segments(staging / "seg.dcm", sources, segments, frame_indices=frames,
                                 series_description="ibisagent segmentation (AI, not verified)",
                                 algorithm_parameters=study.algorithm_parameters)
        seg = pydicom.dcmread(written.path)
        report = build_report(seg, list(series.datasets), findings, algorithm_parameters=study.algorithm_parameters,
                              series_description="ibisagent report (AI, not verified)")
        write_report(staging / "sr.dcm", report)
        write_json_atomic(staging / "run.json", _run_record(study, findings, written.sop_instance_uid,
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
