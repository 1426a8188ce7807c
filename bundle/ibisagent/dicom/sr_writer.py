"""A DICOM SR (TID 1500 Measurement Report, Comprehensive 3D SR) for the agent's segments.

One measurement group (TID 1411, volumetric ROI) per SEG segment: it
references the segment and the source series, carries the segment's codes
as the finding, its volume in ml, and, as TEXT items, what was asked, the
agent's reasoning, how its run ended and how sure it is of the mask
(a TEXT item with the score, and a coded qualitative evaluation "Unreliable
result" answered SNOMED CT Yes or No, so a reader can filter on it without
parsing text). highdicom's qualitative
evaluations take coded answers only; TID 1411 also allows coded questions
with text answers, which is what the agent's free text is. Those questions
use the private coding scheme `99IBISAGENT` (declared in the SR), because
no standard concept means "the agent's reasoning". The report is marked
PRELIMINARY and UNVERIFIED: an algorithm wrote it and nobody has signed it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from .. import __version__
from .derived import DerivedObjectError, build_without_phi, source_header, write_atomic
from .withheld import values_withheld

__all__ = ["AGENT_SCHEME", "ReportWriteError", "TargetFinding", "build_report", "read_report", "write_report"]

log = logging.getLogger(__name__)

AGENT_SCHEME = "99IBISAGENT"
_TEXT_CONCEPTS = {  # field of TargetFinding -> (code value, code meaning) in AGENT_SCHEME
    "query": ("IBIS001", "Clinician request"),
    "reasoning": ("IBIS002", "Agent reasoning"),
    "status": ("IBIS003", "Agent run status"),
    "extent": ("IBIS004", "Segmented extent"),
    "confidence_text": ("IBIS005", "Agent confidence"),
}
_UNRELIABLE = ("IBIS006", "Unreliable result")  # coded question, answered SCT Yes / No


class ReportWriteError(DerivedObjectError):
    """Findings or a SEG that cannot become a valid TID 1500 report."""


@dataclass(frozen=True)
class TargetFinding:
    """What the report says about one SEG segment."""

    segment_number: int
    query: str  # what the clinician asked for
    reasoning: str  # the agent's own words (its <think> texts), as it gave them
    status: str  # how the run ended: "terminated", "max_turns", ...
    volume_ml: float
    extent: str = ""  # which part of the series holds the segment, e.g. "slices 3-17 of 28"
    confidence: float | None = None  # the run's confidence in its mask, in [0, 1] (confidence.py)
    confidence_threshold: float | None = None  # below it the result is unreliable
    confidence_source: str = ""  # what estimated it ("tool", "lite")

    @property
    def unreliable(self) -> bool | None:
        if self.confidence is None or self.confidence_threshold is None:
            return None
        return self.confidence < self.confidence_threshold

    @property
    def confidence_text(self) -> str:
        if self.confidence is None:
            return ""
        verdict = "unreliable: check the mask" if self.unreliable else "at or above it"
        return (f"{self.confidence:.3f} ({self.confidence_source or 'unknown'} estimate); threshold "
                f"{self.confidence_threshold:.3f}: {verdict}")


def _concept(field: str):
    import highdicom as hd

    value, meaning = _TEXT_CONCEPTS[field]
    return hd.sr.CodedConcept(value, AGENT_SCHEME, meaning)


def _reliability(finding: TargetFinding) -> list:
    """The coded "Unreliable result" evaluation (none when the run has no confidence)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if finding.unreliable is None:
        return []
    question = hd.sr.CodedConcept(_UNRELIABLE[0], AGENT_SCHEME, _UNRELIABLE[1])
    return [hd.sr.QualitativeEvaluation(question, codes.SCT.Yes if finding.unreliable else codes.SCT.No)]


def _device_uid() -> str:
    """One Device Observer UID per ibisagent version: the same software is the same observer."""
    return generate_uid(entropy_srcs=["ibisagent", __version__])


def _group(seg: Dataset, finding: TargetFinding, parameters: Mapping[str, str]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segments = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    if finding.segment_number not in segments:
        raise ReportWriteError(f"no segment {finding.segment_number} in the SEG; it has {sorted(segments)}")
    if finding.confidence is not None and not (0.0 <= finding.confidence <= 1.0):
        raise ReportWriteError(f"segment {finding.segment_number}: confidence {finding.confidence!r} is not in [0, 1]")
    if not finding.volume_ml >= 0:
        raise ReportWriteError(f"segment {finding.segment_number}: volume {finding.volume_ml!r} ml is not a volume")
    item = segments[finding.segment_number]
    label = str(item.SegmentLabel)
    finding_type = hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0])
    category = hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyCategoryCodeSequence[0])
    algorithm = hd.sr.AlgorithmIdentification("ibisagent", __version__,
                                             parameters=[f"{k}={v}" for k, v in parameters.items()] or None)
    volume = hd.sr.Measurement(name=codes.SCT.Volume, value=float(finding.volume_ml),
                               unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"), algorithm_id=algorithm)
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=str(item.TrackingUID) if "TrackingUID" in item else None,
                                                     identifier=f"{label} #{finding.segment_number}"[:64]),
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(_segments_per_frame(seg),
                                                                     finding.segment_number),
        finding_type=finding_type, finding_category=category, algorithm_id=algorithm, measurements=[volume],
        qualitative_evaluations=_reliability(finding) or None)
    container = group[0]
    for field in ("query", "reasoning", "status", "extent", "confidence_text"):
        text = str(getattr(finding, field) or "").strip()
        if text:
            container.ContentSequence.append(hd.sr.TextContentItem(_concept(field), text, "CONTAINS"))
    return group


def _segments_per_frame(seg: Dataset) -> Dataset:
    """The SEG with each frame's Segment Identification in its own functional group.

    highdicom writes it into the shared group when the SEG has one segment,
    but its `ReferencedSegment.from_segmentation` reads it per frame only (an
    AttributeError: `ibis deploy` with one target failed so).
    """
    shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if "SegmentIdentificationSequence" not in shared:
        return seg
    copy = deepcopy(seg)
    for frame in copy.get("PerFrameFunctionalGroupsSequence") or []:
        if "SegmentIdentificationSequence" not in frame:
            frame.SegmentIdentificationSequence = deepcopy(shared.SegmentIdentificationSequence)
    return copy


def build_report(seg: Dataset, source_images: Sequence[Dataset], findings: Sequence[TargetFinding], *,
                 algorithm_parameters: Mapping[str, str] | None = None, series_number: int | None = None,
                 series_description: str = "ibisagent report") -> Dataset:
    """The Comprehensive 3D SR for `seg` (a SEG made from `source_images`), one group per finding.

    `algorithm_parameters` go into every Algorithm Identification (e.g. the
    weights' sha256), so a reader can tell which models made the numbers.
    Nothing is written; `write_report` does that.
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes

    if not findings:
        raise ReportWriteError("a report needs at least one finding")
    if not source_images:
        raise ReportWriteError("a report needs the source images its SEG was made from")
    numbers = [f.segment_number for f in findings]
    if len(set(numbers)) != len(numbers):
        raise ReportWriteError(f"segment numbers repeat: {numbers}")
    headers = []
    for source in source_images:
        header, repaired = source_header(source)
        for note in repaired:
            log.info("source header repaired for the SR: %s", note)
        headers.append(header)
    groups = [_group(seg, finding, algorithm_parameters or {}) for finding in findings]
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_device_uid(), name="ibisagent", manufacturer_name="ibisagent", model_name="ibisagent"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    if series_number is None:
        try:
            series_number = 2000 + int(source_images[0].get("SeriesNumber") or 0)
        except (TypeError, ValueError):
            series_number = 2000
    scheme = CodingSchemeIdentificationItem(AGENT_SCHEME, name="ibisagent agent concepts", version=__version__,
                                            responsible_organization="ibisagent")

    def build() -> Dataset:
        return hd.sr.Comprehensive3DSR(
            evidence=[seg, *headers], content=report[0], series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ibisagent", is_complete=True,
            is_final=False, is_verified=False, series_description=series_description[:64],
            manufacturer_model_name="ibisagent", software_versions=__version__, coding_schemes=[scheme])

    return build_without_phi(build, source_images[0], "report", ReportWriteError)


def write_report(path: str | Path, report: Dataset) -> Path:
    """Write the SR atomically (temp file, fsync, rename)."""
    path = Path(path)
    write_atomic(path, lambda stream: pydicom.dcmwrite(stream, report, enforce_file_format=True))
    log.info("wrote SR %s", path.name)
    return path


def read_report(path: str | Path):
    """The SR as a highdicom Comprehensive3DSR (raises ReportWriteError for other files)."""
    import highdicom as hd

    try:
        with values_withheld():
            return hd.sr.srread(str(path))
    except Exception as error:  # foreign files fail in many ways
        raise ReportWriteError(f"{Path(path).name}: not a readable DICOM SR ({type(error).__name__})") from None
