"""Read a volume from a DICOM series, a NIfTI file or an npz of ../shared/data/volumes, and write masks back.

Each reader converts its convention to the Volume's once (LPS affine, voxels
(slice, row, column)); `write_mask_nifti` converts back once, so a mask of a
NIfTI input carries that file's own affine and voxel order, and opens
aligned with it in any viewer. Bad input is refused with the reason before
any model runs: a single slice, a 4D file, a DICOM stack with a gap, a label
map of another shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .volume import RAS_FROM_LPS, Volume, VolumeError

if TYPE_CHECKING:
    from ..dicom.series import DicomSeries

__all__ = ["DicomSource", "LabelMap", "NiftiSource", "NpzSource", "read_label_map", "read_volume",
           "volume_from_series", "write_mask_nifti"]

_CANONICAL = np.array([[0, 1], [1, 1], [2, 1]], float)  # nibabel's orientation of RAS+ voxel axes


@dataclass(frozen=True, eq=False)
class NiftiSource:
    """A NIfTI file as read (nibabel's image: header and affine; the voxels were read into the Volume)."""

    path: Path
    image: object  # nibabel.Nifti1Image: `imaging.nifti.on_file_grid` puts masks back on its grid


@dataclass(frozen=True, eq=False)
class NpzSource:
    """An npz volume of ../shared/data/volumes: its own RAS affine for (z, y, x) when it has one."""

    path: Path
    ras_affine: np.ndarray | None
    labels: np.ndarray | None  # the label map stored beside the image, same axes
    label_names: dict[int, str]


@dataclass(frozen=True, eq=False)
class DicomSource:
    """A DICOM series, sorted along the slice normal: the datasets a DICOM-SEG references."""

    series: DicomSeries


@dataclass(frozen=True, eq=False)
class LabelMap:
    """A label map on the volume's voxels: ids, and their names where the file says."""

    labels: np.ndarray  # (N, H, W) integer, the volume's voxel order
    names: dict[int, str]

    def mask(self, label: int | str) -> np.ndarray:
        """The voxels of one label, given by id or by name."""
        if isinstance(label, str) and not label.isdigit():
            ids = [i for i, name in self.names.items() if name == label]
            if not ids:
                raise VolumeError(f"no label {label!r}; the label map has {self.describe()}")
            label = ids[0]
        return self.labels == int(label)

    def describe(self) -> str:
        present = sorted(int(v) for v in np.unique(self.labels) if v != 0)
        return ", ".join(f"{i} ({self.names.get(i, '?')})" for i in present) or "no labels"


# ----------------------------------------------------------------------------- NIfTI

def _load_nifti(path: Path):
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise VolumeError(f"{path.name}: not a readable NIfTI file ({type(error).__name__})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2 or (data.ndim == 3 and 1 in data.shape):
        raise VolumeError(f"{path.name}: a 2D image (shape {data.shape}), not a volume; segment it with `ibis segment`")
    if data.ndim != 3:
        raise VolumeError(f"{path.name}: {data.ndim}D data (shape {data.shape}); a volume has 3 axes (split a time "
                          "series or multi-channel file into 3D files first)")
    return image, data


def _to_canonical(data: np.ndarray, affine: np.ndarray):
    """Voxels reordered (flips and axis swaps only) so the axes run toward R, A, S; the matching affine."""
    import nibabel as nib

    orientation = nib.orientations.io_orientation(affine)
    canonical = nib.orientations.apply_orientation(data, orientation)
    return canonical, affine @ nib.orientations.inv_ornt_aff(orientation, data.shape), orientation


def _zyx_lps(ras_affine_xyz: np.ndarray) -> np.ndarray:
    """An affine of (x, y, z) voxel indices to RAS -> the Volume's (slice, row, column) to LPS."""
    return RAS_FROM_LPS @ ras_affine_xyz[:, [2, 1, 0, 3]]


def _read_nifti(path: Path, modality: str | None) -> Volume:
    image, data = _load_nifti(path)
    canonical, affine, orientation = _to_canonical(data, image.affine)
    voxels = np.ascontiguousarray(canonical.transpose(2, 1, 0))
    if voxels.dtype.kind == "f":
        voxels = voxels.astype(np.float32)
    notes = []
    if not np.allclose(orientation, _CANONICAL):
        notes.append(f"voxel axes reordered from the file's {''.join(_axcodes(image.affine))} to RAS (no resampling); "
                     "mask.nii.gz is written back in the file's own order")
    source = NiftiSource(path, image)
    return Volume(voxels, _zyx_lps(affine), modality, True, source, path.name, tuple(notes))


def _axcodes(affine: np.ndarray) -> tuple[str, ...]:
    import nibabel as nib

    return nib.aff2axcodes(affine)


# ----------------------------------------------------------------------------- npz

_NPZ_KEYS = ("image", "spacing")


def _read_npz(path: Path, modality: str | None) -> Volume:
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except Exception as error:  # zip, pickle and format errors
        raise VolumeError(f"{path.name}: not a readable npz file ({type(error).__name__})") from None
    missing = [key for key in _NPZ_KEYS if key not in contents]
    if missing:
        raise VolumeError(f"{path.name}: lacks {', '.join(missing)}; expected the ../shared/data/volumes layout "
                          f"(image (z, y, x), labels, spacing, optional affine); it holds {', '.join(contents)}")
    image = contents["image"]
    if image.ndim == 2:
        raise VolumeError(f"{path.name}: a 2D image (shape {image.shape}), not a volume")
    if image.ndim != 3:
        raise VolumeError(f"{path.name}: image has shape {image.shape}; expected (z, y, x)")
    spacing = np.asarray(contents["spacing"], float).reshape(-1)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise VolumeError(f"{path.name}: spacing must be three positive numbers (z, y, x mm), got {spacing.tolist()}")
    labels = contents.get("labels")
    if labels is not None and labels.shape != image.shape:
        raise VolumeError(f"{path.name}: labels {labels.shape} and image {image.shape} differ in shape")
    names = _label_names(contents.get("label_names"), path)
    ras = np.asarray(contents["affine"], float) if "affine" in contents else None
    if ras is not None:
        if ras.shape != (4, 4):
            raise VolumeError(f"{path.name}: affine must be 4x4, got {ras.shape}")
        affine, known, notes = RAS_FROM_LPS @ ras, True, ()
        if not np.allclose(np.linalg.norm(ras[:3, :3], axis=0), spacing, rtol=1e-3):
            notes = (f"spacing {spacing.tolist()} differs from the affine's; the affine is used",)
    else:
        affine, known = np.eye(4), False  # nominal axes: slices toward S, rows toward P, columns toward L
        affine[:3, :3] = np.array([[0, 0, spacing[2]], [0, spacing[1], 0], [spacing[0], 0, 0]])
        notes = ("no affine: orientation unknown, slices shown as stored; mask.nii.gz gets a spacing-only affine",)
    source = NpzSource(path, ras, labels, names)
    return Volume(np.ascontiguousarray(image), affine, modality, known, source, path.name, notes)


def _label_names(value: np.ndarray | None, path: Path) -> dict[int, str]:
    if value is None:
        return {}
    try:
        return {int(key): str(name) for key, name in json.loads(str(value)).items()}
    except (ValueError, AttributeError):
        raise VolumeError(f"{path.name}: label_names is not a JSON object of id -> name") from None


# ----------------------------------------------------------------------------- DICOM

def volume_from_series(series: DicomSeries, allow_uneven_spacing: bool = False) -> Volume:
    """A sorted DICOM series as a Volume: the affine from its positions, orientation and pixel spacing.

    A stack with uneven spacing (a missing slice, or variable spacing by
    design) is refused unless `allow_uneven_spacing`: propagation would jump
    the gap and no single affine is true. When allowed, the SEG still
    references every slice exactly; only mask.nii.gz is not written.
    """
    geometry = series.geometry
    name = f"series {series.series_instance_uid}"
    if series.volume.ndim == 4:
        raise VolumeError(f"{name}: a colour series ({series.modality or 'no modality'}); volumes are grey-level CT, "
                          "MR or PET stacks. Segment one image with segment-dicom --slice")
    if series.slice_count < 2:
        raise VolumeError(f"{name}: one slice is a 2D image, not a volume; segment it with `ibis segment-dicom`")
    if geometry.sorted_by != "geometry":
        raise VolumeError(f"{name}: the slices lack ImagePositionPatient/ImageOrientationPatient (sorted by "
                          f"{geometry.sorted_by.replace('_', ' ')}), so their 3D arrangement is unknown; segment single "
                          "slices with segment-dicom --slice")
    if geometry.pixel_spacing is None:
        raise VolumeError(f"{name}: PixelSpacing is missing or invalid; the voxel size is unknown")
    notes = list(series.warnings)
    if not geometry.uniform_spacing:
        gaps = np.diff(np.asarray(geometry.slice_positions))
        widest = int(np.argmax(gaps))
        detail = (f"slice spacing varies from {gaps.min():.3f} to {gaps.max():.3f} mm (median "
                  f"{geometry.slice_spacing:.3f}); the widest gap is between slices {widest} and {widest + 1}")
        if not allow_uneven_spacing:
            raise VolumeError(f"{name}: {detail}: a slice is probably missing. Restore it, or pass "
                              "allow_uneven_spacing (CLI: --allow-uneven-spacing) to segment the stack as it is "
                              "(the SEG is exact; mask.nii.gz is then not written)")
        notes.append(f"{detail}; segmented as it is (allow_uneven_spacing): mask.nii.gz is not written")
    orientation = np.asarray(geometry.orientation, float)
    row_spacing, column_spacing = geometry.pixel_spacing
    positions = np.asarray(geometry.positions, float)
    affine = np.eye(4)
    affine[:3, 0] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 1] = orientation[3:] * row_spacing
    affine[:3, 2] = orientation[:3] * column_spacing
    affine[:3, 3] = positions[0]
    return Volume(series.volume, affine, series.modality or None, True, DicomSource(series), name, tuple(notes),
                  geometry.uniform_spacing)


def _read_dicom(path: Path, modality: str | None, series_uid: str | None, allow_uneven_spacing: bool) -> Volume:
    from ..dicom.series import DicomSeriesError, read_series

    try:
        series = read_series(path, slice_index=0, series_uid=series_uid)  # slice 0: any slice, the volume is whole
    except DicomSeriesError as error:
        raise VolumeError(str(error)) from None
    volume = volume_from_series(series, allow_uneven_spacing)
    if modality and modality != volume.modality:
        volume = replace(volume, modality=modality).with_window(None)
    return volume


# ----------------------------------------------------------------------------- entry points

def read_volume(path: str | Path, *, modality: str | None = None, window: str | None = None,
                series_uid: str | None = None, allow_uneven_spacing: bool = False) -> Volume:
    """A DICOM series folder, a NIfTI file (.nii, .nii.gz) or an npz volume as a Volume.

    `modality` ("CT", "MR", ...) picks the default window where the file does
    not say (NIfTI, npz: values at or below -500 are taken as CT);
    `window` overrides it (a CT preset or "percentile").
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_dir():
        volume = _read_dicom(path, modality, series_uid, allow_uneven_spacing)
    elif name.endswith((".nii", ".nii.gz")):
        volume = _read_nifti(path, modality)
    elif name.endswith(".npz"):
        volume = _read_npz(path, modality)
    else:
        raise VolumeError(f"{path.name}: a volume is a DICOM series folder, a NIfTI file (.nii, .nii.gz) or an "
                          ".npz volume")
    return volume.with_window(window) if window else volume


def read_label_map(volume: Volume, path: str | Path | None = None) -> LabelMap:
    """The reference labels on the volume's voxels: an npz volume's own `labels`, or a NIfTI/npz label file.

    A NIfTI label map must lie on the volume's voxel grid (its affine may order
    or flip the axes differently: it is reordered exactly, never resampled).
    """
    source = volume.source
    if path is None:
        if isinstance(source, NpzSource) and source.labels is not None:
            return LabelMap(source.labels, source.label_names)
        raise VolumeError(f"{volume.name}: no label map given and the input holds none")
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such file")
    if path.name.lower().endswith(".npz"):
        labels_volume = _read_npz(path, None)
        labels_source = labels_volume.source
        labels = labels_source.labels if labels_source.labels is not None else labels_volume.voxels
        names = labels_source.label_names
    elif path.name.lower().endswith((".nii", ".nii.gz")):
        image, data = _load_nifti(path)
        labels, names = _on_volume_grid(data, image.affine, volume, path.name), {}
    else:
        raise VolumeError(f"{path.name}: a label map is a NIfTI file or an npz")
    if labels.shape != volume.shape:
        raise VolumeError(f"{path.name}: label map of shape {labels.shape}, the volume is {volume.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.mod(labels, 1) == 0):
            raise VolumeError(f"{path.name}: the label map holds non-integer values; expected label ids")
        labels = labels.astype(np.int32)
    return LabelMap(np.asarray(labels), names)


def _on_volume_grid(data: np.ndarray, ras_affine: np.ndarray, volume: Volume, name: str) -> np.ndarray:
    """A NIfTI array put onto the volume's voxels, when it lies on the volume's grid.

    The file may order or flip the axes differently and may cover only a
    block of the volume (dcmqi writes a segment over the slices it spans):
    the map from volume voxels to file voxels must be a signed permutation
    with a whole-voxel shift, and the file must fit inside the volume.
    Anything else (a resampled or moved grid) is refused: labels would land
    on the wrong voxels.
    """
    to_file = np.linalg.inv(ras_affine) @ RAS_FROM_LPS @ volume.affine  # (slice, row, column, 1) -> file voxel
    rotation, offset = to_file[:3, :3], to_file[:3, 3]
    signed = np.round(rotation)
    permutation = np.argmax(np.abs(signed), axis=0)  # the file axis of each volume axis
    signs = signed[permutation, [0, 1, 2]]
    sizes = np.asarray(data.shape)[permutation]
    starts = np.where(signs > 0, -offset[permutation], offset[permutation] - (sizes - 1))
    if sorted(permutation) != [0, 1, 2] or np.count_nonzero(signed) != 3 \
            or not np.allclose(rotation, signed, atol=1e-3) or not np.allclose(starts, np.round(starts), atol=1e-2):
        raise VolumeError(f"{name}: its affine differs from the image's; the label map lies on another grid "
                          "(resample it onto the image first)")
    starts = np.round(starts).astype(int)
    if np.any(starts < 0) or np.any(starts + sizes > np.asarray(volume.shape)):
        raise VolumeError(f"{name}: label map of shape {tuple(data.shape)} reaches outside the volume "
                          f"{volume.shape} (slices, rows, columns); they must share one voxel grid")
    reordered = np.transpose(data, permutation)
    for axis, sign in enumerate(signs):
        if sign < 0:
            reordered = np.flip(reordered, axis)
    placed = np.zeros(volume.shape, reordered.dtype)
    placed[tuple(slice(b, b + n) for b, n in zip(starts, sizes))] = reordered
    return placed


def write_mask_nifti(volume: Volume, mask: np.ndarray, path: str | Path) -> Path:
    """A (N, H, W) voxel-order mask as NIfTI (uint8 0/1) in the input's own geometry, written atomically.

    NIfTI input: the file's voxel order, affine, qform/sform codes and units
    (`imaging.nifti.on_file_grid`, shared with the slice path);
    npz: its (z, y, x) order and its affine (spacing only without one); DICOM:
    (column, row, slice) order with the series' affine in RAS.
    """
    import nibabel as nib

    from ..imaging.nifti import on_file_grid
    from ..outputs import publish

    mask = np.asarray(mask)
    if mask.shape != volume.shape:
        raise VolumeError(f"mask of shape {mask.shape} for a volume of {volume.shape}")
    if not volume.uniform_spacing:
        raise VolumeError(f"{volume.name}: uneven slice spacing: no single affine is true, so no mask.nii.gz")
    data = mask.astype(np.uint8)
    source = volume.source
    if isinstance(source, NiftiSource):
        image = on_file_grid(data.transpose(2, 1, 0), source.image, source.path.name)
    elif isinstance(source, NpzSource):
        affine = source.ras_affine if source.ras_affine is not None else RAS_FROM_LPS @ volume.affine
        image = nib.Nifti1Image(data, affine)
    else:
        ras_xyz = (RAS_FROM_LPS @ volume.affine)[:, [2, 1, 0, 3]]
        image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), ras_xyz)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.nii.gz")
    try:
        nib.save(image, str(temporary))
        publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
