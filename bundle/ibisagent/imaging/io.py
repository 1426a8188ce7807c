"""Read a 2D image for the agent from PNG/JPEG, a single DICOM file or a NIfTI slice.

Every reader returns display RGB uint8 (what the policy and the tool see) and
says where the pixels came from; errors name the file and the reason in one line.
DICOM and NIfTI slices are shown in the standard (radiological) display; for
DICOM, `LoadedImage.display` maps a mask back to the file's pixel order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .nifti import NiftiSlice
from .orientation import IDENTITY, DisplayTransform, orientation_note, standard_display
from .windowing import default_window, to_display

__all__ = ["ImageReadError", "LoadedImage", "radiological_slice", "read_image", "read_mask", "read_nifti_volume"]

_RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class ImageReadError(ValueError):
    """An input image that cannot be read or is not a usable 2D image."""


@dataclass(frozen=True)
class LoadedImage:
    rgb: np.ndarray
    kind: str  # "raster" | "dicom" | "nifti"
    modality: str | None = None
    slice_index: int | None = None
    window: str | None = None  # the display window applied (a CT preset, "percentile", "file", "colour"); None: raster
    display: DisplayTransform = IDENTITY  # stored pixels -> `rgb` (DICOM slices stored off the standard display)
    display_note: str | None = None  # why and how, when the agent's view is not the stored pixels as they are
    nifti: NiftiSlice | None = None  # a NIfTI slice: where it lies in its file, to write the mask on its grid


def _as_rgb(values: np.ndarray, path: Path) -> np.ndarray:
    if values.ndim == 2:
        return np.repeat(values[..., None], 3, axis=2)
    if values.ndim == 3 and values.shape[2] in (3, 4):
        return np.ascontiguousarray(values[..., :3])
    raise ImageReadError(f"{path.name}: expected a 2D grey or RGB image, got shape {values.shape}")


def _read_raster(path: Path) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I", "F"):
                values = to_display(np.asarray(image).astype(np.float32))
            else:
                values = np.asarray(image.convert("RGB" if image.mode not in ("L", "1") else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageReadError(f"{path.name}: not a readable image ({error.__class__.__name__})") from None
    values = values.astype(np.uint8) if values.dtype == bool else values
    return LoadedImage(_as_rgb(values, path), "raster")


def _read_dicom(path: Path, slice_index: int | None, window: str | None) -> LoadedImage:
    """One DICOM file; its pixels go through the series reader's steps (`dicom.pixels`)."""
    from ..dicom.withheld import values_withheld

    with values_withheld():  # pydicom warns while reading and converting values, quoting them
        try:
            return _dicom_slice(path, slice_index, window)
        except NotImplementedError as error:  # pydicom meets a VR it does not know when it reads the value
            raise ImageReadError(f"{path.name}: damaged DICOM header: {error}") from None


def _dicom_slice(path: Path, slice_index: int | None, window: str | None) -> LoadedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from ..dicom.pixels import (DicomPixelError, check_window, decoded_pixels, display_rgb, frame_count, is_colour,
                                modality_values)
    from ..dicom.series import non_image_reason

    check_window(window)
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        known = ", ".join([*sorted(_RASTER_SUFFIXES), ".nii", ".nii.gz"])
        raise ImageReadError(f"{path.name}: not a DICOM file (other images are recognised by their name: {known})") \
            from None
    except Exception as error:  # pydicom raises many types for broken bytes
        raise ImageReadError(f"{path.name}: damaged DICOM file ({type(error).__name__})") from None
    refused = non_image_reason(dataset)  # a SEG, an RT Dose, a report: nothing to segment
    if refused:
        raise ImageReadError(f"{path.name}: {refused}")
    try:
        frames = frame_count(dataset, path.name)
        index = _choose_slice(frames, slice_index, path)
        pixels = decoded_pixels(dataset, path.name)
    except DicomPixelError as error:
        raise ImageReadError(str(error)) from None
    frame = index if frames > 1 else None
    plane = pixels[index] if frame is not None else pixels
    if not is_colour(dataset):
        plane = modality_values(plane, dataset, frame)
    modality = str(dataset.get("Modality", "")) or None
    try:
        rgb, used = display_rgb(plane, dataset, modality, window, frame, path.name)
    except DicomPixelError as error:
        raise ImageReadError(str(error)) from None
    return _shown_as_standard(_as_rgb(rgb, path), dataset, frame, modality, index, used)


def _shown_as_standard(rgb: np.ndarray, dataset, frame: int | None, modality: str | None, index: int,
                       window: str) -> LoadedImage:
    """The slice in the standard display its ImageOrientationPatient (or PatientOrientation) calls for."""
    from ..dicom.series import display_orientation

    orientation, patient_orientation = display_orientation(dataset, frame)
    transform = standard_display(orientation)
    return LoadedImage(transform.to_display(rgb), "dicom", modality, index, window, transform,
                       orientation_note(orientation, transform, patient_orientation))


def read_nifti_volume(path: str | Path) -> np.ndarray:
    """A NIfTI image as a float32 (x, y, z) volume in RAS+ orientation (2D images get z = 1)."""
    return _nifti_volume(Path(path))[0]


def _nifti_volume(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """The RAS+ volume and the file's own axis codes (toward where each voxel index grows)."""
    import nibabel as nib

    try:
        stored = nib.load(str(path))
        codes = tuple(nib.aff2axcodes(stored.affine))
        volume = np.asarray(nib.as_closest_canonical(stored).dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise ImageReadError(f"{path.name}: not a readable NIfTI file ({error.__class__.__name__})") from None
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise ImageReadError(f"{path.name}: expected a 2D or 3D NIfTI image, got {volume.ndim} dimensions")
    return volume, codes


def radiological_slice(volume: np.ndarray, index: int) -> np.ndarray:
    """Axial slice `index` of a RAS+ volume as shown radiologically: the patient's right on the left, anterior up."""
    return volume[::-1, ::-1, index].T


def _read_nifti(path: Path, slice_index: int | None, window: str | None) -> LoadedImage:
    if window == "file":
        raise ImageReadError(f"{path.name}: NIfTI carries no display window of its own; choose a CT preset or "
                             "percentile")
    volume, codes = _nifti_volume(path)
    index = _choose_slice(volume.shape[2], slice_index, path)
    values = radiological_slice(volume, index)
    # NIfTI has no modality: values in Hounsfield units (air near -1000) mark CT; MR, PET and z-scores stay far above
    used = window or default_window("CT" if float(volume.min()) <= -500 else None)
    where = NiftiSlice(path, index, volume.shape[2], codes)
    return LoadedImage(_as_rgb(to_display(values, window=used), path), "nifti", None, index, used,
                       display_note=where.note(), nifti=where)


def _choose_slice(count: int, slice_index: int | None, path: Path) -> int:
    if slice_index is None:
        if count == 1:
            return 0
        raise ImageReadError(f"{path.name}: has {count} slices; choose one with --slice (0..{count - 1})")
    if not 0 <= slice_index < count:
        raise ImageReadError(f"{path.name}: slice {slice_index} out of range 0..{count - 1}")
    return slice_index


def read_image(path: str | Path, slice_index: int | None = None, window: str | None = None) -> LoadedImage:
    """Read PNG/JPEG (and other rasters), a DICOM file or a NIfTI volume slice as display RGB."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(path, slice_index, window)
    if path.suffix.lower() in _RASTER_SUFFIXES:
        _choose_slice(1, slice_index, path)  # one slice: only 0 (or none) is a valid choice
        if window is not None:
            raise ImageReadError(f"{path.name}: a display window applies to DICOM and NIfTI values; the pixels of "
                                 f"a {path.suffix.lower()} image are already display values")
        return _read_raster(path)
    return _read_dicom(path, slice_index, window)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None,
              display: DisplayTransform = IDENTITY) -> np.ndarray:
    """A binary mask image (grey > 127 is inside), drawn on the stored pixels of its image, as the agent sees it.

    `display` is the image reader's (`LoadedImage.display`, `DicomSeries.display`);
    `shape`, checked when given, is the image's (rows, cols) as the agent sees it.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 127
    except (UnidentifiedImageError, OSError) as error:
        raise ImageReadError(f"cannot read mask {path}: {error}") from None
    expected = display.stored_shape(shape) if shape is not None else None
    if expected is not None and mask.shape != expected:
        raise ImageReadError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, the image {expected[1]}x{expected[0]}")
    return display.to_display(mask)
