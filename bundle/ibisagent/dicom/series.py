"""Read one DICOM series (a folder or a list of files) into a sorted volume and a display slice.

A DICOM-SEG must reference real source instances, so this reader is strict
where the standard is strict (UIDs, one series, one orientation, decodable
pixels) and lenient where it allows (empty Type 2 attributes, an empty
Specific Character Set, tilted or unevenly spaced stacks: warned, still
sorted). Messages name files and attributes, never patient names or IDs.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..imaging.orientation import (IDENTITY, DisplayTransform, orientation_note, patient_orientation_cosines,
                                   standard_display)
from .pixels import (DicomPixelError, check_window, decoded_pixels, display_rgb, frame_count, functional_group_item,
                     is_colour, modality_values)
from .withheld import shown_value, values_withheld

__all__ = ["DicomSeries", "DicomSeriesError", "DicomSeriesWarning", "SeriesGeometry", "SeriesSummary",
           "SkippedFile", "display_orientation", "image_orientation", "list_series", "non_image_reason", "read_series",
           "values_withheld"]

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_NOT_SOURCE_CLASSES = {  # have pixel data (or may) but are not images to segment
    SEG_SOP_CLASS: "a Segmentation, not a source image",
    "1.2.840.10008.5.1.4.1.1.481.2": "an RT Dose, not a source image",
}
_TILT_TOLERANCE_DEG = 0.1
_DEFER = "64 KB"


class DicomSeriesError(ValueError):
    """A series that cannot be turned into a volume a DICOM-SEG can reference."""


class DicomSeriesWarning(UserWarning):
    """Readable, but something the user should know (tilt, uneven spacing, no geometry)."""


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class SeriesSummary:
    """One series found in the input; what the 'several series' error lists."""

    series_instance_uid: str
    series_number: str
    description: str
    modality: str
    count: int

    def describe(self) -> str:
        return (f"series {self.series_number or '?'} {self.description or '(no description)'!r} "
                f"{self.modality or '?'}: {self.count} image(s), SeriesInstanceUID {self.series_instance_uid}")


@dataclass(frozen=True)
class SeriesGeometry:
    """Where the slices are: patient coordinates (LPS, mm) in sorted order, or the fallback used."""

    sorted_by: str  # "geometry" | "instance_number" | "file_order" | "frame_order" | "single"
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column direction cosines
    normal: tuple[float, float, float] | None  # row x column: the direction slice indices grow along
    positions: np.ndarray | None  # (N, 3) ImagePositionPatient of each sorted slice
    slice_positions: tuple[float, ...] | None  # positions projected on the normal (ascending)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    slice_spacing: float | None  # median distance between neighbouring slices along the normal
    uniform_spacing: bool
    tilt_degrees: float  # angle between the stack direction and the normal (gantry tilt)
    frame_of_reference_uid: str | None


@dataclass(frozen=True)
class DicomSeries:
    """The chosen slice for display, its source dataset and the whole sorted series."""

    rgb: np.ndarray  # (H, W, 3) uint8: what the policy and the tool see, in the standard display
    index: int  # the chosen slice in sorted order
    source: Dataset  # the dataset holding the chosen slice
    frame_index: int | None  # 0-based frame within `source` for multi-frame objects, else None
    datasets: tuple[Dataset, ...]  # the series in sorted order (one entry per object)
    files: tuple[Path, ...]  # the file of each sorted slice
    volume: np.ndarray  # (N, H, W) float32 modality values, or (N, H, W, 3) uint8 for colour
    geometry: SeriesGeometry
    modality: str
    window: str  # the display window applied: a CT preset, "percentile", "file" or "colour"
    series_instance_uid: str
    warnings: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]
    display: DisplayTransform = IDENTITY  # stored slice -> `rgb`; `display.to_stored` maps a mask back

    @property
    def display_note(self) -> str | None:
        """Why and how `rgb` differs from the stored pixel order, or None when it does not."""
        orientation, patient_orientation = display_orientation(self.source, self.frame_index)
        return orientation_note(orientation, self.display, patient_orientation)

    @property
    def slice_count(self) -> int:
        return int(self.volume.shape[0])

    @property
    def sop_instance_uid(self) -> str:
        """The SOPInstanceUID the chosen slice's SEG frame must reference."""
        return str(self.source.SOPInstanceUID)


@dataclass(frozen=True)
class _Slice:
    """One 2D image: a single-frame object or one frame of a multi-frame object."""

    dataset: Dataset
    path: Path
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance_number: int | None



# ----------------------------------------------------------------------------- finding files

def _input_files(source: str | Path | Sequence[str | Path]) -> tuple[list[Path], Path]:
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_file():
            return [root], root.parent
        if not root.is_dir():
            raise DicomSeriesError(f"{root}: no such file or folder")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise DicomSeriesError(f"{root}: the folder is empty")
        return files, root
    files = [Path(p) for p in source]
    if not files:
        raise DicomSeriesError("no files given")
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise DicomSeriesError(f"no such file: {', '.join(missing[:5])}")
    return files, files[0].parent


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _has_dicm_magic(path: Path) -> bool:
    with path.open("rb") as stream:
        head = stream.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _read_header(path: Path, root: Path) -> Dataset | SkippedFile:
    """Header with pixel data deferred; non-DICOM files are skipped, damaged DICOM files refused."""
    try:
        with values_withheld() as caught:
            dataset = pydicom.dcmread(path, defer_size=_DEFER, force=True)
    except Exception as error:  # pydicom raises many types for broken bytes
        if _has_dicm_magic(path):
            raise DicomSeriesError(f"{_name(path, root)}: damaged DICOM file ({type(error).__name__}); "
                                   "remove it from the folder or restore it") from None
        return SkippedFile(path, "not a DICOM file")
    if caught:
        log.debug("%s: %d value warning(s) while reading (not shown: they may quote patient data)",
                  _name(path, root), len(caught))
    meta_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if "SOPClassUID" not in dataset and "PixelData" not in dataset and meta_class != _DICOMDIR_CLASS \
            and "DirectoryRecordSequence" not in dataset:
        if _has_dicm_magic(path):  # claims to be DICOM but holds nothing usable
            raise DicomSeriesError(f"{_name(path, root)}: damaged DICOM file (a DICM header, then no readable "
                                   "SOP Class or pixel data); remove it from the folder or restore it")
        return SkippedFile(path, "not a DICOM file")
    return dataset


def non_image_reason(dataset: Dataset) -> str | None:
    """Why an object is not a source image, or None when it is one."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    meta_class = str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if meta_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in dataset:
        return "a DICOMDIR (media directory), not an image"
    if sop_class in _NOT_SOURCE_CLASSES:
        return _NOT_SOURCE_CLASSES[sop_class]
    if sop_class.startswith(_SR_PREFIX):
        return "a structured report, not an image"
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            return "float pixel data (parametric map): not supported"
        kind = (UID(sop_class).name if UID(sop_class).is_valid else "an invalid SOP Class UID") if sop_class else \
            "no SOP Class"
        return f"no pixel data ({kind})"
    return None


# ----------------------------------------------------------------------------- grouping

def _uid_text(dataset: Dataset, keyword: str) -> str:
    return str(dataset.get(keyword, "") or "").strip()


_Groups = dict[str, list[tuple[Path, Dataset]]]  # SeriesInstanceUID -> (file, header) pairs


def _scan(source: str | Path | Sequence[str | Path]) -> tuple[_Groups, list[SkippedFile], Path]:
    files, root = _input_files(source)
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: list[SkippedFile] = []
    for path in files:
        header = _read_header(path, root)
        if isinstance(header, SkippedFile):
            skipped.append(header)
            continue
        sop_class = UID(_uid_text(header, "SOPClassUID"))
        if "PixelData" not in header and sop_class.name.endswith("Image Storage"):
            raise DicomSeriesError(f"{_name(path, root)}: a {sop_class.name} object without pixel data (Type 1): "
                                   "the file is truncated or damaged; remove it from the folder or restore it")
        reason = non_image_reason(header)
        if reason:
            skipped.append(SkippedFile(path, reason))
            continue
        groups.setdefault(_uid_text(header, "SeriesInstanceUID"), []).append((path, header))
    for item in skipped:
        log.info("skipped %s: %s", _name(item.path, root), item.reason)
    if not groups:
        reasons = Counter(item.reason for item in skipped)
        summary = "; ".join(f"{reason} ({count})" for reason, count in reasons.most_common(5))
        files = f"{len(skipped)} file{'s' if len(skipped) != 1 else ''}"
        raise DicomSeriesError(f"{root}: no DICOM image found; skipped {files}: {summary}")
    if "" in groups:
        names = ", ".join(_name(path, root) for path, _ in groups[""][:5])
        raise DicomSeriesError(f"SeriesInstanceUID is missing or blank in {len(groups[''])} image(s) ({names}); "
                               "a DICOM-SEG must reference the source series, so these files cannot be used")
    return groups, skipped, root


def _summary(uid: str, members: list[tuple[Path, Dataset]]) -> SeriesSummary:
    first = members[0][1]
    return SeriesSummary(uid, str(first.get("SeriesNumber", "") or ""), str(first.get("SeriesDescription", "") or ""),
                         str(first.get("Modality", "") or ""), len(members))


def list_series(source: str | Path | Sequence[str | Path]) -> list[SeriesSummary]:
    """The image series in a folder or file list (for choosing one with `series_uid=`)."""
    with values_withheld():
        groups, _, _ = _scan(source)
    return [_summary(uid, members) for uid, members in groups.items()]


# ----------------------------------------------------------------------------- checks and slices

def _check_uids(members: list[tuple[Path, Dataset]], root: Path) -> None:
    """Every UID the SEG will copy or reference must be present, valid and consistent."""
    seen: dict[str, str] = {}
    for path, dataset in members:
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
            value = _uid_text(dataset, keyword)
            if not value:
                raise DicomSeriesError(f"{_name(path, root)}: {keyword} is missing or blank; a DICOM-SEG must "
                                       "reference it, so this series cannot be used")
            if not UID(value).is_valid:
                raise DicomSeriesError(f"{_name(path, root)}: {keyword} {shown_value(value)} is not a valid UID")
        frame_of_reference = _uid_text(dataset, "FrameOfReferenceUID")  # optional, but the SEG copies it
        if frame_of_reference and not UID(frame_of_reference).is_valid:
            raise DicomSeriesError(f"{_name(path, root)}: FrameOfReferenceUID {shown_value(frame_of_reference)} is not "
                                   "a valid UID")
        sop = _uid_text(dataset, "SOPInstanceUID")
        if sop in seen:
            raise DicomSeriesError(f"{_name(path, root)} and {seen[sop]} share one SOPInstanceUID; "
                                   "remove the duplicate file")
        seen[sop] = _name(path, root)
    studies = {_uid_text(dataset, "StudyInstanceUID") for _, dataset in members}
    if len(studies) > 1:
        raise DicomSeriesError(f"one SeriesInstanceUID but {len(studies)} StudyInstanceUIDs: "
                               "the files are inconsistent")


def _floats(value, count: int) -> np.ndarray | None:
    try:
        array = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (count,) and np.all(np.isfinite(array)) else None


def display_orientation(dataset: Dataset, frame: int | None = None) -> tuple[tuple[float, ...] | None,
                                                                              tuple[str, ...] | None]:
    """What the standard display is derived from: ImageOrientationPatient, else (projection radiographs)
    the directions PatientOrientation names, with its values for the note."""
    cosines = image_orientation(dataset, frame)
    if cosines is not None:
        return tuple(cosines.tolist()), None
    values = dataset.get("PatientOrientation")
    letters = tuple(str(v) for v in values) if values is not None and not isinstance(values, str) else None
    derived = patient_orientation_cosines(letters)
    return (derived, letters) if derived is not None else (None, None)


def image_orientation(dataset: Dataset, frame: int | None = None) -> np.ndarray | None:
    """ImageOrientationPatient of a slice: a frame's functional groups in a multi-frame object, else the top level."""
    groups = "PerFrameFunctionalGroupsSequence" in dataset or "SharedFunctionalGroupsSequence" in dataset
    if frame is not None and groups:
        item = functional_group_item(dataset, frame, "PlaneOrientationSequence")
        return _floats(item.get("ImageOrientationPatient"), 6) if item else None
    return _floats(dataset.get("ImageOrientationPatient"), 6)


def _instance_number(dataset: Dataset) -> int | None:
    try:
        return int(dataset.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


def _slices(members: list[tuple[Path, Dataset]], root: Path) -> list[_Slice]:
    try:
        frames = [frame_count(dataset, _name(path, root)) for path, dataset in members]
    except DicomPixelError as error:
        raise DicomSeriesError(str(error)) from None
    if max(frames) > 1:
        if len(members) > 1:
            raise DicomSeriesError(f"the series mixes {len(members)} objects, some multi-frame; pass the "
                                   "multi-frame file on its own")
        path, dataset = members[0]
        out = []
        for frame in range(frames[0]):
            plane = functional_group_item(dataset, frame, "PlanePositionSequence")
            out.append(_Slice(dataset, path, frame, _floats(plane.get("ImagePositionPatient"), 3) if plane else None,
                              image_orientation(dataset, frame), frame + 1))
        return out
    return [_Slice(dataset, path, None, _floats(dataset.get("ImagePositionPatient"), 3), image_orientation(dataset),
                   _instance_number(dataset))
            for path, dataset in members]


def _pixel_spacing(dataset: Dataset) -> tuple[float, float] | None:
    multi = "SharedFunctionalGroupsSequence" in dataset or "PerFrameFunctionalGroupsSequence" in dataset
    measures = functional_group_item(dataset, 0, "PixelMeasuresSequence") if multi else None
    spacing = _floats((measures or dataset).get("PixelSpacing"), 2)
    return (float(spacing[0]), float(spacing[1])) if spacing is not None else None


# ----------------------------------------------------------------------------- sorting

def _sort(slices: list[_Slice], root: Path, notes: list[str]) -> tuple[list[_Slice], SeriesGeometry]:
    """Order slices along the normal of ImageOrientationPatient; InstanceNumber only without geometry."""
    first = slices[0].dataset
    frame_of_reference = _uid_text(first, "FrameOfReferenceUID") or None
    spacing = _pixel_spacing(first)
    have_geometry = all(s.position is not None and s.orientation is not None for s in slices)
    if len(slices) == 1:
        s = slices[0]
        normal = None
        if s.orientation is not None:
            normal = tuple(np.cross(s.orientation[:3], s.orientation[3:]).tolist())
        return slices, SeriesGeometry("single", tuple(s.orientation) if s.orientation is not None else None, normal,
                                      s.position[None] if s.position is not None else None,
                                      None, spacing, None, True, 0.0, frame_of_reference)
    if not have_geometry:
        missing = sum(s.position is None or s.orientation is None for s in slices)
        if slices[0].frame is not None:  # frames of one object (cine, time series): their own order
            return list(slices), SeriesGeometry("frame_order", None, None, None, None, spacing, None, False, 0.0,
                                                frame_of_reference)
        if all(s.instance_number is not None for s in slices):
            ordered, how = sorted(slices, key=lambda s: s.instance_number), "instance_number"
            notes.append(f"{missing} of {len(slices)} slices lack ImagePositionPatient/ImageOrientationPatient: "
                         "sorted by InstanceNumber, which need not follow anatomy")
        else:
            ordered, how = list(slices), "file_order"
            notes.append(f"{missing} of {len(slices)} slices lack geometry and InstanceNumber: kept in file-name order")
        return ordered, SeriesGeometry(how, None, None, None, None, spacing, None, False, 0.0, frame_of_reference)

    orientation = slices[0].orientation
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - orientation)) > 1e-3:
            raise DicomSeriesError(f"{_name(s.path, root)}: ImageOrientationPatient differs from the other slices "
                                   "(a localizer or a second stack in the series?); pass the files of one stack")
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-2 or abs(np.linalg.norm(col) - 1) > 1e-2 or abs(float(row @ col)) > 1e-2:
        raise DicomSeriesError(f"ImageOrientationPatient {orientation.round(4).tolist()} is not two orthogonal unit "
                               "vectors; the slice geometry is invalid")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    projected = [float(s.position @ normal) for s in slices]
    order = sorted(range(len(slices)), key=lambda i: (projected[i], slices[i].instance_number or 0))
    ordered = [slices[i] for i in order]
    along = np.asarray([projected[i] for i in order])
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        raise DicomSeriesError(f"{int(np.sum(gaps < 1e-3)) + 1} slices share a position along the normal: the series "
                               "holds several volumes (echoes, phases or time points); split it before segmenting")
    positions = np.stack([s.position for s in ordered])
    stack = positions[-1] - positions[0]
    cosine = min(1.0, abs(float(stack @ normal)) / float(np.linalg.norm(stack)))
    tilt = math.degrees(math.acos(cosine))
    if tilt > _TILT_TOLERANCE_DEG:
        notes.append(f"the stack runs {tilt:.2f} degrees off the slice normal (gantry tilt or sheared stack): "
                     "slices were ordered by their position projected on the normal; each 2D slice is unaffected, "
                     "a 3D volume built from them would be sheared")
    median = float(np.median(gaps))
    uniform = bool(np.all(np.abs(gaps - median) <= max(0.02, 0.01 * median)))
    if not uniform:
        notes.append(f"variable slice spacing: {gaps.min():.3f} to {gaps.max():.3f} mm (median {median:.3f}); "
                     "a slice may be missing. Slices are still sorted by position")
    geometry = SeriesGeometry("geometry", tuple(orientation.tolist()), tuple(normal.tolist()), positions,
                              tuple(along.tolist()), spacing, median, uniform, tilt, frame_of_reference)
    return ordered, geometry


# ----------------------------------------------------------------------------- pixels

def _build_volume(ordered: list[_Slice], root: Path) -> np.ndarray:
    colour = is_colour(ordered[0].dataset)
    cache: dict[int, np.ndarray] = {}
    planes = []
    for s in ordered:
        key = id(s.dataset)
        if key not in cache:
            try:
                cache[key] = decoded_pixels(s.dataset, _name(s.path, root))
            except DicomPixelError as error:
                raise DicomSeriesError(str(error)) from None
        pixels = cache[key] if s.frame is None else cache[key][s.frame]
        planes.append(pixels if colour else modality_values(pixels, s.dataset, s.frame))
    shapes = Counter(p.shape for p in planes)
    if len(shapes) > 1:
        listed = ", ".join(f"{'x'.join(map(str, shape))} ({count})" for shape, count in shapes.most_common())
        raise DicomSeriesError(f"slices of different sizes in one series: {listed}; pass the files of one stack")
    return np.stack(planes)


def _choose(count: int, slice_index: int | None) -> int:
    if slice_index is None:
        if count == 1:
            return 0
        raise DicomSeriesError(f"the series has {count} slices; choose one with slice_index (CLI: --slice N), "
                               f"N in 0..{count - 1}, counted from the lowest position along the slice normal")
    if not 0 <= slice_index < count:
        raise DicomSeriesError(f"slice {slice_index} is out of range: the series has {count} slices (0..{count - 1})")
    return slice_index


# ----------------------------------------------------------------------------- entry point

def read_series(source: str | Path | Sequence[str | Path], slice_index: int | None = None,
                series_uid: str | None = None, window: str | None = None) -> DicomSeries:
    """Read one series from a folder (searched recursively) or a file list and display one slice.

    The slice is shown in the standard display whatever its stored orientation
    (`DicomSeries.display` says how; `display.to_stored` maps a mask back).

    `window`: a CT preset (abdomen, lung, bone, brain), "percentile" or "file"
    (the series' own WindowCenter/WindowWidth or VOI LUT); by default CT gets
    "abdomen" and every other modality percentiles.
    """
    check_window(window)
    with values_withheld() as caught:
        try:
            series = _read(source, slice_index, series_uid, window)
        except NotImplementedError as error:  # pydicom meets a VR it does not know when it reads the value
            raise DicomSeriesError(f"damaged DICOM header: {error}") from None
    if caught:
        log.debug("%d library warning(s) while reading withheld: they may quote patient data", len(caught))
    for note in series.warnings:
        warnings.warn(note, DicomSeriesWarning, stacklevel=2)
        log.info("%s", note)
    if series.display_note:
        log.info("%s", series.display_note)
    return series


def _read(source: str | Path | Sequence[str | Path], slice_index: int | None, series_uid: str | None,
          window: str | None) -> DicomSeries:
    groups, skipped, root = _scan(source)
    if series_uid is not None:
        if series_uid not in groups:
            listed = "; ".join(_summary(uid, m).describe() for uid, m in groups.items())
            raise DicomSeriesError(f"series {series_uid} not found; the input holds: {listed}")
        members = groups[series_uid]
    elif len(groups) > 1:
        listed = "; ".join(_summary(uid, m).describe() for uid, m in groups.items())
        raise DicomSeriesError(f"the input holds {len(groups)} series; choose one with series_uid "
                               f"(CLI: --series-uid): {listed}")
    else:
        (series_uid, members), = groups.items()
    _check_uids(members, root)
    notes: list[str] = []
    ordered, geometry = _sort(_slices(members, root), root, notes)
    index = _choose(len(ordered), slice_index)
    volume = _build_volume(ordered, root)
    chosen = ordered[index]
    modality = str(chosen.dataset.get("Modality", "") or "")
    try:
        rgb, used = display_rgb(volume[index], chosen.dataset, modality, window, chosen.frame,
                                _name(chosen.path, root))
    except DicomPixelError as error:
        raise DicomSeriesError(str(error)) from None
    display = standard_display(display_orientation(chosen.dataset, chosen.frame)[0])
    datasets = tuple({id(s.dataset): s.dataset for s in ordered}.values())  # one per object, sorted order
    return DicomSeries(display.to_display(rgb), index, chosen.dataset, chosen.frame, datasets,
                       tuple(s.path for s in ordered), volume, geometry, modality, used, str(series_uid), tuple(notes),
                       tuple(skipped), display)
