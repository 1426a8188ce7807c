"""Write results as DICOM Segmentations (BINARY) with highdicom, and read SEGs back.

One writer serves one slice and whole series: each segment gets a frame on
every source slice that holds it, referencing that exact instance (and
frame); it carries SNOMED codes per segment and the algorithm that made it, and is
written atomically beside a JSON side-car holding the agent's trajectory.
The source's header is copied and repaired as `derived.py` says; the
caller's datasets are never modified.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from .. import __version__
from .codes import SegmentCode, code_for_label
from .derived import TYPE2, build_without_phi, source_header, staged_file
from .pixels import DicomPixelError, frame_count
from .withheld import shown_value, values_withheld

if TYPE_CHECKING:
    from highdicom.seg import Segmentation, SegmentDescription

__all__ = ["SegWriteError", "Segment", "SegmentInfo", "WrittenSeg", "list_segments", "read_segmentation",
           "segment_mask", "write_segmentation", "write_segments"]

log = logging.getLogger(__name__)

# Recommended display colours (RGB), one per segment, cycled.
_COLOURS = [(34, 139, 34), (220, 20, 60), (30, 144, 255), (255, 165, 0), (148, 0, 211), (0, 206, 209),
            (255, 215, 0), (139, 69, 19)]


class SegWriteError(ValueError):
    """A mask or source that cannot become a valid DICOM-SEG."""


@dataclass(frozen=True)
class WrittenSeg:
    path: Path
    sidecar: Path | None
    sop_instance_uid: str
    series_instance_uid: str
    segments: tuple[str, ...]  # the segment labels, segment number = position + 1
    codes: tuple[SegmentCode, ...]


@dataclass(frozen=True)
class SegmentInfo:
    number: int
    label: str
    category: str  # CodeMeaning
    type: str  # CodeMeaning
    type_code: str  # "SCT 10200004"
    modifier: str | None


# ----------------------------------------------------------------------------- writing

def _as_masks(masks: np.ndarray | Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    stack = np.asarray(masks)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or stack.shape[1:] != shape:
        raise SegWriteError(f"masks must be (H, W) or (S, H, W) with H, W = {shape}; got shape {stack.shape}")
    if stack.dtype != bool:
        if not np.isin(stack, (0, 1)).all():
            raise SegWriteError("masks must be binary (bool or 0/1)")
        stack = stack.astype(bool)
    return stack


def _description(number: int, label: str, code: SegmentCode, human_clicked: bool,
                 parameters: Mapping[str, str] | None = None,
                 colour: tuple[int, int, int] | None = None) -> SegmentDescription:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="ibisagent", family=codes.cid7162.ArtificialIntelligence,
                                                   version=__version__, parameters=dict(parameters) if parameters else None)
    kinds = hd.seg.SegmentAlgorithmTypeValues
    kind = kinds.SEMIAUTOMATIC if human_clicked else kinds.AUTOMATIC
    colour = hd.color.CIELabColor.from_rgb(*(colour or _COLOURS[(number - 1) % len(_COLOURS)]))
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=label[:64], segmented_property_category=code.category,
        segmented_property_type=code.type, algorithm_type=kind, algorithm_identification=algorithm,
        tracking_uid=hd.UID(), tracking_id=f"{label[:60]} #{number}", display_color=colour)
    if code.modifier is not None:
        type_item = description.SegmentedPropertyTypeCodeSequence[0]
        modifier = hd.sr.CodedConcept.from_code(code.modifier)
        type_item.SegmentedPropertyTypeModifierCodeSequence = DicomSequence([modifier])
    return description


@dataclass(frozen=True)
class Segment:
    """One structure of a SEG: its mask on each source slice, its label, and optionally its codes and colour.

    `mask` is (S, H, W) (or (H, W) for one slice) in the sources' stored pixel
    order, plane s on source slice s. `code` defaults to `code_for_label(label)`;
    `colour` (RGB) to the writer's palette by segment number.
    """

    label: str
    mask: np.ndarray
    code: SegmentCode | None = None
    colour: tuple[int, int, int] | None = None
    human_clicked: bool = False  # SEMIAUTOMATIC when a person clicked, else AUTOMATIC


def write_segmentation(out_path: str | Path, source: Dataset, masks: np.ndarray | Sequence[np.ndarray],
                       labels: str | Sequence[str], *, frame_index: int | None = None, human_clicked: bool = False,
                       trajectory: dict | None = None, content_creator: str = "ibisagent^",
                       series_description: str = "ibisagent segmentation", series_number: int | None = None,
                       device_serial_number: str = "1",
                       algorithm_parameters: Mapping[str, str] | None = None) -> WrittenSeg:
    """One BINARY SEG for one source slice: a segment per (mask, label), coded by `code_for_label`.

    `source` is the dataset of the slice the masks were drawn on (`DicomSeries.source`);
    `frame_index` (0-based) selects the frame of a multi-frame source. An all-empty
    mask is written as an explicit empty frame (a valid "found nothing"). With
    `trajectory`, a side-car `<name>.json` is written next to the SEG.
    `algorithm_parameters` (e.g. the weights' sha256) go into each segment's
    Algorithm Identification.
    """
    shape = (int(source.Rows), int(source.Columns))
    stack = _as_masks(masks, shape)
    names = [str(name).strip() for name in ([labels] if isinstance(labels, str) else labels)]
    if len(names) != stack.shape[0]:
        raise SegWriteError(f"{stack.shape[0]} mask(s) but {len(names)} label(s)")
    segments = [Segment(name, plane[None], human_clicked=human_clicked) for name, plane in zip(names, stack)]
    return write_segments(out_path, [source], segments, frame_indices=None if frame_index is None else [frame_index],
                          trajectory=trajectory, content_creator=content_creator,
                          series_description=series_description, series_number=series_number,
                          device_serial_number=device_serial_number, algorithm_parameters=algorithm_parameters)


def _source_frames(sources: Sequence[Dataset], frame_indices: Sequence[int] | None, planes: int) -> int:
    """Check that planes and sources line up; the number of frames of a multi-frame source (else 0)."""
    try:
        frames = [frame_count(source, "the source") for source in sources]
    except DicomPixelError as error:
        raise SegWriteError(str(error)) from None
    if len(sources) == 1 and frames[0] > 1:
        source = sources[0]
        if not str(source.get("FrameOfReferenceUID", "") or "").strip():
            raise SegWriteError(f"the source is a {frames[0]}-frame object without a Frame of Reference (cine or "
                                "time series): highdicom can only write a SEG for such a source when it has one frame")
        if frame_indices is None or len(frame_indices) != planes or len(set(frame_indices)) != planes \
                or not all(0 <= f < frames[0] for f in frame_indices):
            noun = "frame_index" if planes == 1 else f"frame_indices (distinct, one per mask plane: {planes})"
            raise SegWriteError(f"the source has {frames[0]} frames: pass {noun} in 0..{frames[0] - 1}")
        return frames[0]
    if frame_indices is not None and any(f != 0 for f in frame_indices):
        raise SegWriteError(f"frame_index {max(frame_indices)} given for a single-frame source")
    if max(frames) > 1:
        raise SegWriteError("a multi-frame source must be the only source")
    if len(sources) != planes:
        raise SegWriteError(f"{planes} mask plane(s) for {len(sources)} source slice(s): one plane per source slice")
    return 0


def write_segments(out_path: str | Path, sources: Sequence[Dataset], segments: Sequence[Segment], *,
                   frame_indices: Sequence[int] | None = None, trajectory: dict | None = None,
                   content_creator: str = "ibisagent^", series_description: str = "ibisagent segmentation",
                   series_number: int | None = None, device_serial_number: str = "1",
                   algorithm_parameters: Mapping[str, str] | None = None) -> WrittenSeg:
    """One BINARY SEG over one or many source slices, with several segments (the whole-series writer).

    `sources`: the single-frame datasets of the slices, in the order of the
    mask planes (a sorted `DicomSeries.datasets`); or one multi-frame dataset
    with `frame_indices`, the source frame of each plane. Each segment gets a
    frame on every source slice that holds it, referencing that instance (and
    frame); a result with nothing anywhere is written as explicit empty frames
    (a valid "found nothing"). With `trajectory`, a side-car `<name>.json` is
    written first, then the SEG, each atomically. `algorithm_parameters` go
    into each segment's Algorithm Identification.
    """
    import highdicom as hd

    out_path = Path(out_path)
    if not sources:
        raise SegWriteError("no source slices given")
    if not segments:
        raise SegWriteError("a SEG needs at least one segment")
    shape = (int(sources[0].Rows), int(sources[0].Columns))
    if any((int(s.Rows), int(s.Columns)) != shape for s in sources):
        raise SegWriteError("the source slices differ in size")
    stacks = [_as_masks(segment.mask, shape) for segment in segments]
    planes = stacks[0].shape[0]
    if any(stack.shape[0] != planes for stack in stacks):
        raise SegWriteError("every segment needs the same number of mask planes (one per source slice)")
    names = [str(segment.label).strip() for segment in segments]
    if not all(names):
        raise SegWriteError("every segment needs a non-empty label")
    frame_indices = list(frame_indices) if frame_indices is not None else None
    frames = _source_frames(sources, frame_indices, planes)
    codes_used = [segment.code or code_for_label(name) for segment, name in zip(segments, names, strict=True)]
    volume = np.stack(stacks, axis=-1)  # (planes, H, W, segments)
    if frames:
        pixel_array = np.zeros((frames, *shape, len(segments)), bool)
        pixel_array[frame_indices] = volume
    else:
        pixel_array = volume
    anything = bool(volume.any())
    # Many planes or a multi-frame source: frames only where a structure is; one slice keeps every segment's frame.
    omit_empty = anything and (planes > 1 or frames > 1)
    headers = []
    for source in sources:
        header, repaired = source_header(source)
        for note in repaired:
            log.info("source header repaired for the SEG: %s", note)
        _check_measures(header)
        headers.append(header)
    descriptions = [_description(i + 1, name, code, segment.human_clicked, algorithm_parameters, segment.colour)
                    for i, (name, code, segment) in enumerate(zip(names, codes_used, segments, strict=True))]
    first = sources[0]
    if series_number is None:
        try:
            series_number = 1000 + int(first.get("SeriesNumber") or 0)
        except (TypeError, ValueError):
            series_number = 1000

    def build() -> Dataset:
        return hd.seg.Segmentation(
            source_images=headers, pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ibisagent",
            manufacturer_model_name="ibisagent", software_versions=__version__,
            device_serial_number=device_serial_number, content_label="IBISAGENT",
            content_description=f"ibisagent segmentation: {', '.join(names)}"[:64],
            content_creator_name=content_creator, series_description=series_description[:64],
            omit_empty_frames=omit_empty)

    seg = build_without_phi(build, first, "segmentation", SegWriteError)
    for keyword, vr in TYPE2.items():  # highdicom copies what exists; keep Type 2 present when it did not
        if keyword not in seg:
            seg.add_new(keyword, vr, None)
    shared = seg.get("SharedFunctionalGroupsSequence") or [Dataset()]
    if "PlaneOrientationSequence" not in shared[0] and "PatientOrientation" not in seg:
        # Without patient geometry (X-ray, photos, stripped headers) General Image needs PatientOrientation (2C).
        seg.PatientOrientation = _valid_orientation(first.get("PatientOrientation"))

    encoded = io.BytesIO()
    pydicom.dcmwrite(encoded, seg, enforce_file_format=True)
    files = {out_path: encoded.getvalue()}
    sidecar = out_path.with_suffix(".json") if trajectory is not None else None
    if sidecar is not None:
        files[sidecar] = (json.dumps(_sidecar(out_path, seg, sources, frame_indices, stacks, names, codes_used,
                                              segments, trajectory), indent=2, default=str) + "\n").encode()
    _publish_pair(files)
    log.info("wrote SEG %s (%d segment(s), %d source slice(s))", out_path.name, len(names), planes)
    return WrittenSeg(out_path, sidecar, str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID), tuple(names),
                      tuple(codes_used))


def _check_measures(header: Dataset) -> None:
    """Refuse what highdicom would copy into an invalid SEG: a Pixel Spacing that is not two positive numbers,
    a Frame of Reference without the Slice Thickness the SEG's Pixel Measures then need."""
    spacing = header.get("PixelSpacing")
    if spacing is not None:
        try:
            values = [float(v) for v in spacing]
        except (TypeError, ValueError):
            values = []
        if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
            raise SegWriteError(f"the source's PixelSpacing {shown_value(spacing)} is not two positive numbers")
    thickness = header.get("SliceThickness")
    in_groups = any(key in header for key in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"))
    if "FrameOfReferenceUID" in header and (thickness is None or str(thickness).strip() == "") and not in_groups:
        raise SegWriteError("the source has a Frame of Reference but no SliceThickness; its SEG would lack the "
                            "slice thickness its Pixel Measures need")


def _valid_orientation(value) -> list[str] | None:
    """PatientOrientation as the standard allows it (two values of L, R, A, P, H, F), else None (Type 2: empty)."""
    values = [str(v) for v in value] if value else []
    if len(values) == 2 and all(v and set(v) <= set("LRAPHF") for v in values):
        return values
    return None


def _publish_pair(files: dict[Path, bytes]) -> None:
    """The SEG and its side-car: both written in full to temporaries first (a full disk changes nothing), then
    the earlier side-car removed, the SEG and the side-car renamed in place. A process killed at any moment
    leaves the old pair, a SEG alone, or the new pair; never a side-car describing another SEG."""
    temporaries: dict[Path, Path] = {}
    folder = next(iter(files)).parent
    made = not folder.exists()
    try:
        for path, data in files.items():
            temporaries[path] = staged_file(path, data)
        _, *sidecar = files
        if sidecar:
            sidecar[0].unlink(missing_ok=True)
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
    except BaseException:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a folder made for a SEG that was never written
        raise


def _sidecar(out_path: Path, seg: Dataset, sources: Sequence[Dataset], frame_indices: list[int] | None,
             stacks: list[np.ndarray], names: list[str], codes_used: list[SegmentCode], segments: Sequence[Segment],
             trajectory: dict) -> dict:
    """What the SEG holds, in JSON, plus the caller's trajectory (no patient attributes).

    One slice: its SOPInstanceUID (and frame); a series: per segment, the
    source slices (plane indices) that hold it.
    """
    described = []
    for i, (name, code, segment, stack) in enumerate(zip(names, codes_used, segments, stacks, strict=True)):
        entry = {"number": i + 1, "label": name, "category": code.category.meaning, "type": code.type.meaning,
                 "type_code": f"{code.type.scheme_designator} {code.type.value}",
                 "modifier": code.modifier.meaning if code.modifier else None, "known": code.known,
                 "area_px": int(stack.sum())}
        if stack.shape[0] > 1:
            entry["slices"] = [int(k) for k in np.nonzero(stack.any(axis=(1, 2)))[0]]
        described.append(entry)
    human = any(segment.human_clicked for segment in segments)
    record = {"seg": out_path.name, "sop_instance_uid": str(seg.SOPInstanceUID),
              "series_instance_uid": str(seg.SeriesInstanceUID)}
    if len(sources) == 1 and (frame_indices is None or len(frame_indices) == 1):
        record |= {"source_sop_instance_uid": str(sources[0].SOPInstanceUID),
                   "source_frame_index": frame_indices[0] if frame_indices else None}
    else:
        record |= {"source_series_instance_uid": str(sources[0].SeriesInstanceUID), "source_slices": stacks[0].shape[0]}
    return record | {"segments": described, "algorithm_type": "SEMIAUTOMATIC" if human else "AUTOMATIC",
                     "ibisagent_version": __version__, "trajectory": trajectory}


# ----------------------------------------------------------------------------- reading back

def read_segmentation(path: str | Path) -> Segmentation:
    """The SEG as a highdicom Segmentation (raises SegWriteError for non-SEG files)."""
    import highdicom as hd

    try:
        with values_withheld():  # reading may warn, quoting header values
            dataset = pydicom.dcmread(str(path))
            _hide_measures_highdicom_refuses(dataset)
            return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as error:  # highdicom/pydicom raise many types for foreign files
        raise SegWriteError(f"{Path(path).name}: not a readable DICOM Segmentation ({type(error).__name__})") from None


def _hide_measures_highdicom_refuses(dataset: Dataset) -> None:
    """Drop a shared Pixel Measures item that has Pixel Spacing but no Slice Thickness, in memory, when the SEG
    has no Frame of Reference.

    highdicom writes the SEG of a secondary capture or photo so (dciodvfy
    accepts it), but its reader requires Slice Thickness there. The pixels map
    to their source by reference, which the measures do not affect.
    """
    if str(dataset.get("FrameOfReferenceUID", "") or ""):
        return
    for group in dataset.get("SharedFunctionalGroupsSequence") or []:
        measures = group.get("PixelMeasuresSequence")
        if measures and len(measures) == 1 and "SliceThickness" not in measures[0]:
            del group.PixelMeasuresSequence


def _spatial_locations_preserved(seg: Segmentation) -> bool:
    """False only where a frame says the SEG grid differs from its source; absent counts as same grid."""
    for frame in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            for reference in derivation.get("SourceImageSequence", []):
                if str(reference.get("SpatialLocationsPreserved", "YES") or "YES") != "YES":
                    return False
    return True


def segment_mask(seg_or_path: Segmentation | str | Path, source_sop_instance_uid: str, segment_number: int = 1,
                 frame_number: int | None = None) -> np.ndarray:
    """(H, W) bool mask of one segment on one source instance (1-based `frame_number` for multi-frame).

    SEGs whose frames omit SpatialLocationsPreserved (dcmqi writes none) are
    mapped by reference with highdicom's `ignore_spatial_locations=True`; a
    frame that declares its grid differs from the source is refused.
    """
    seg = read_segmentation(seg_or_path) if isinstance(seg_or_path, (str, Path)) else seg_or_path
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    if source_sop_instance_uid not in referenced:
        raise SegWriteError(f"the SEG does not reference SOPInstanceUID {source_sop_instance_uid}")
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    if segment_number not in numbers:
        raise SegWriteError(f"no segment {segment_number}; the SEG has segments {numbers}")
    if not _spatial_locations_preserved(seg):
        raise SegWriteError("the SEG declares its frames are not on the source pixel grid; cannot map them")
    options = dict(segment_numbers=[segment_number], ignore_spatial_locations=True,
                   assert_missing_frames_are_empty=True)
    if frame_number is None:
        pixels = seg.get_pixels_by_source_instance([source_sop_instance_uid], **options)
    else:
        pixels = seg.get_pixels_by_source_frame(source_sop_instance_uid, [frame_number], **options)
    return pixels[0, :, :, 0] > 0


def list_segments(seg_or_path: Segmentation | str | Path) -> list[SegmentInfo]:
    """Number, label and codes of every segment, as stored."""
    seg = read_segmentation(seg_or_path) if isinstance(seg_or_path, (str, Path)) else seg_or_path
    out = []
    for item in seg.SegmentSequence:
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        modifiers = type_item.get("SegmentedPropertyTypeModifierCodeSequence") or []
        out.append(SegmentInfo(int(item.SegmentNumber), str(item.get("SegmentLabel", "")), str(category.CodeMeaning),
                               str(type_item.CodeMeaning), f"{type_item.CodingSchemeDesignator} {type_item.CodeValue}",
                               str(modifiers[0].CodeMeaning) if modifiers else None))
    return out
