"""A MONAI Label datastore image as the label task sees it: slices to show the agent, client points, label files.

MONAI Label clients send points as voxel indices of the image as MONAI loads
it: `[x, y]` (column, row) for a PNG/JPEG, `[i, j, k]` array indices of the
file for NIfTI, `[column, row, slice]` for a DICOM series (slices sorted
lowest first along the slice normal, as Slicer and `dicom.series` sort them).
Each image is a stack of stored 2D slices; the agent sees one slice in the
standard display (`DisplayTransform`), and its masks go back into a label
file on the image's own voxel grid and geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..clicks import normalised_to_pixel
from ..imaging.orientation import IDENTITY, DisplayTransform
from ..tools.base import Click

__all__ = ["LabelImage", "LabelImageError", "SliceView", "open_label_image", "write_series_image_nrrd",
           "write_series_nrrd"]

_RASTER = (".png", ".jpg", ".jpeg")
_NIFTI = (".nii", ".nii.gz")
# The NIfTI reader shows RAS+ slice V[:, :, k] as V[::-1, ::-1, k].T (imaging/io.py, radiological_slice).
_NIFTI_DISPLAY = DisplayTransform(transpose=True, flip_rows=True, flip_columns=True)


class LabelImageError(ValueError):
    """An image the task cannot read, or a point that does not lie in it."""


@dataclass(frozen=True)
class SliceView:
    """One slice as the agent sees it, and how its stored pixels map to that view."""

    index: int
    rgb: np.ndarray  # (H, W, 3) uint8, standard display
    display: DisplayTransform  # stored slice -> rgb
    source: object | None = None  # DICOM: the dataset of the slice (a SEG references it)
    frame_index: int | None = None


def _point_to_display(display: DisplayTransform, stored_shape: tuple[int, int], row: int, col: int) -> tuple[int, int]:
    """A stored pixel (row, col) -> its (row, col) in the display, by the same steps as `to_display`."""
    rows, cols = stored_shape
    if display.transpose:
        row, col, rows, cols = col, row, cols, rows
    if display.flip_rows:
        row = rows - 1 - row
    if display.flip_columns:
        col = cols - 1 - col
    return row, col


class LabelImage:
    """Base: a stack of `slice_count` stored slices of `stored_shape` (rows, columns)."""

    kind = "image"
    label_suffix = ".nii.gz"

    def __init__(self, path: Path, slice_count: int, stored_shape: tuple[int, int]):
        self.path = path
        self.slice_count = slice_count
        self.stored_shape = stored_shape
        self._views: dict[int, SliceView] = {}

    @property
    def grid(self) -> tuple[int, ...]:
        """The voxel grid a client's points index."""
        raise NotImplementedError

    def _stored_index(self, point: Sequence[float]) -> tuple[int, int, int]:
        """(slice, row, column) of the stored slice a client point falls on."""
        raise NotImplementedError

    def _read_view(self, index: int) -> SliceView:
        raise NotImplementedError

    def view(self, index: int) -> SliceView:
        if not 0 <= index < self.slice_count:
            raise LabelImageError(f"slice {index} is outside the image (0..{self.slice_count - 1})")
        if index not in self._views:
            self._views[index] = self._read_view(index)
        return self._views[index]

    def point_to_click(self, point: Sequence[float], positive: bool) -> tuple[int, Click]:
        """A client point -> (slice, the click at the pixel's centre in that slice's display)."""
        if not isinstance(point, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point):
            raise LabelImageError(f"a point is a list of numbers, got {point!r}"[:200])
        grid = self.grid
        values = [int(round(v)) for v in point]
        if len(grid) == 2 and len(values) == 3:  # a 2D image loaded as a one-slice volume
            if values[2] != 0:
                raise LabelImageError(f"point {list(point)} is outside the image of size {list(grid)} "
                                      "(a 2D image: slice 0 only)")
            values = values[:2]
        if len(values) != len(grid):
            raise LabelImageError(f"a point on this image has {len(grid)} coordinates, got {list(point)}")
        if not all(0 <= v < n for v, n in zip(values, grid)):
            raise LabelImageError(f"point {list(point)} is outside the image of size {list(grid)}")
        index, row, col = self._stored_index(values)
        view = self.view(index)
        drow, dcol = _point_to_display(view.display, self.stored_shape, row, col)
        height, width = view.rgb.shape[:2]
        return index, Click((dcol + 0.5) / width, (drow + 0.5) / height, positive)

    def click_to_point(self, index: int, click: Click) -> list[int]:
        """The voxel a click (in slice `index`'s display) falls on, as the client indexes voxels."""
        view = self.view(index)
        height, width = view.rgb.shape[:2]
        marker = np.zeros((height, width), bool)
        marker[normalised_to_pixel(click.x, click.y, (height, width))] = True
        row, col = (int(v[0]) for v in np.nonzero(view.display.to_stored(marker)))
        return self._client_point(index, row, col)

    def _client_point(self, index: int, row: int, col: int) -> list[int]:
        raise NotImplementedError

    def write_label(self, masks: dict[int, np.ndarray], out_path: Path) -> Path:
        """The display masks of the slices worked on, as one label file (0/1) on the image's grid."""
        raise NotImplementedError


class RasterImage(LabelImage):
    kind = "raster"
    label_suffix = ".png"

    def __init__(self, path: Path):
        from ..imaging.io import ImageReadError, read_image

        try:
            self._loaded = read_image(path)
        except ImageReadError as error:
            raise LabelImageError(str(error)) from None
        super().__init__(path, 1, self._loaded.rgb.shape[:2])

    @property
    def grid(self) -> tuple[int, ...]:
        rows, cols = self.stored_shape
        return (cols, rows)

    def _stored_index(self, point):
        return 0, point[1], point[0]

    def _client_point(self, index, row, col):
        return [col, row]

    def _read_view(self, index):
        return SliceView(0, self._loaded.rgb, IDENTITY)

    def write_label(self, masks, out_path):
        from PIL import Image

        label = np.zeros(self.stored_shape, np.uint8)
        if 0 in masks:
            label[masks[0]] = 1
        Image.fromarray(label).save(out_path, format="PNG")
        return out_path


class NiftiImage(LabelImage):
    kind = "nifti"

    def __init__(self, path: Path):
        import nibabel as nib

        try:
            self._image = nib.load(str(path))
            canonical = nib.as_closest_canonical(self._image)
            self._volume = np.asarray(canonical.dataobj, dtype=np.float32)
        except Exception as error:  # nibabel raises many types for corrupt files
            raise LabelImageError(f"{path.name}: not a readable NIfTI file ({type(error).__name__})") from None
        if self._volume.ndim == 2:
            self._volume = self._volume[..., None]
        if self._volume.ndim != 3:
            raise LabelImageError(f"{path.name}: expected a 2D or 3D NIfTI image, got {self._volume.ndim} dimensions")
        self._file_to_canonical = np.linalg.inv(canonical.affine) @ self._image.affine
        self._shape = tuple(int(v) for v in self._image.shape[:3]) + (1,) * (3 - len(self._image.shape[:3]))
        super().__init__(path, self._volume.shape[2], self._volume.shape[:2])

    @property
    def grid(self) -> tuple[int, ...]:
        return self._shape

    def _stored_index(self, point):
        i, j, k = (int(round(v)) for v in (self._file_to_canonical @ [*point, 1.0])[:3])
        return k, i, j  # stored slice k is the canonical V[:, :, k]: rows i, columns j

    def _client_point(self, index, row, col):
        back = np.linalg.inv(self._file_to_canonical) @ [row, col, index, 1.0]
        return [int(round(v)) for v in back[:3]]

    def _read_view(self, index):
        from ..imaging.windowing import default_window, to_display

        volume = self._volume
        window = default_window("CT" if float(volume.min()) <= -500 else None)
        grey = to_display(_NIFTI_DISPLAY.to_display(volume[:, :, index]), window=window)
        return SliceView(index, np.repeat(grey[..., None], 3, axis=2), _NIFTI_DISPLAY)

    def write_label(self, masks, out_path):
        import nibabel as nib

        canonical = np.zeros(self._volume.shape, np.uint8)
        for index, mask in masks.items():
            canonical[:, :, index] = _NIFTI_DISPLAY.to_stored(mask)
        # canonical voxel -> file voxel, axis by axis (as_closest_canonical only permutes and flips)
        label = np.zeros(self._shape, np.uint8)
        file_index = np.indices(self._shape).reshape(3, -1)
        target = np.rint(self._file_to_canonical[:3, :3] @ file_index + self._file_to_canonical[:3, 3:]).astype(int)
        label.reshape(-1)[:] = canonical[target[0], target[1], target[2]]
        header = self._image.header.copy()
        header.set_data_dtype(np.uint8)
        image = nib.Nifti1Image(label.reshape(self._image.shape[:3]) if len(self._image.shape) >= 3
                                else label[..., 0], self._image.affine, header)
        nib.save(image, str(out_path))
        return out_path


class DicomSeriesImage(LabelImage):
    """A folder holding one DICOM series (what MONAI Label's DICOMweb datastore downloads)."""

    kind = "dicom"
    label_suffix = ".nrrd"

    def __init__(self, path: Path):
        from ..dicom.series import DicomSeriesError, read_series

        try:
            first = read_series(path, slice_index=0)
        except DicomSeriesError as error:
            raise LabelImageError(str(error)) from None
        self.series_instance_uid = first.series_instance_uid
        self.geometry = first.geometry
        super().__init__(path, first.slice_count, tuple(int(v) for v in first.volume.shape[1:3]))
        self._views[0] = SliceView(0, first.rgb, first.display, first.source, first.frame_index)

    @property
    def grid(self) -> tuple[int, ...]:
        rows, cols = self.stored_shape
        return (cols, rows, self.slice_count)

    def _stored_index(self, point):
        return point[2], point[1], point[0]

    def _client_point(self, index, row, col):
        return [col, row, index]

    def _read_view(self, index):
        from ..dicom.series import read_series

        series = read_series(self.path, slice_index=index)
        return SliceView(index, series.rgb, series.display, series.source, series.frame_index)

    def write_label(self, masks, out_path):
        rows, cols = self.stored_shape
        label = np.zeros((cols, rows, self.slice_count), np.uint8)
        for index, mask in masks.items():
            label[:, :, index] = self.view(index).display.to_stored(mask).T
        return write_series_nrrd(self.geometry, label, out_path)


def write_series_nrrd(geometry, label: np.ndarray, out_path: Path, dtype=np.uint8) -> Path:
    """A (column, row, slice) array on a sorted DICOM series' grid as NRRD in LPS (a 0/1 label: what OHIF's
    MONAI Label panel reads; or the series' own values, `dtype` given).

    x runs along a slice's rows (the column index), y down its columns, z
    through the slices sorted lowest first along the normal: the index order
    Slicer, OHIF (cornerstone) and MONAI Label's own DICOM-to-NIfTI
    conversion give a series, so the label lies on the image they show.
    """
    import nrrd

    header = {"encoding": "gzip", "space": "left-posterior-superior"}
    if geometry.orientation is not None and geometry.positions is not None and geometry.pixel_spacing:
        row_dir, col_dir = np.asarray(geometry.orientation[:3]), np.asarray(geometry.orientation[3:])
        between_rows, between_cols = geometry.pixel_spacing
        step = geometry.slice_spacing or 1.0
        header["space directions"] = np.stack([row_dir * between_cols, col_dir * between_rows,
                                               np.asarray(geometry.normal) * step])
        header["space origin"] = np.asarray(geometry.positions[0], float)
    nrrd.write(str(out_path), np.ascontiguousarray(label, dtype), header)
    return out_path


def write_series_image_nrrd(folder: Path, out_path: Path) -> Path:
    """A DICOM series folder as one NRRD image (modality values) on the grid of its NRRD labels.

    What a client that loads files, not DICOM, downloads: Slicer's *Next
    Sample* fetches `GET /datastore/image` and loads the file by its
    extension; the labels the task returns for the series then lie on it.
    Integral values (CT, most MR) are stored as int16 when they fit, others
    as float32. Written to a temporary name and renamed (atomic).
    """
    from ..dicom.series import read_series

    series = read_series(folder, slice_index=0)
    if series.volume.ndim != 3:
        raise LabelImageError(f"{folder.name}: a colour series has no single-channel volume to download")
    values = series.volume
    integral = np.array_equal(values, np.round(values))
    fits = values.size and values.min() >= np.iinfo(np.int16).min and values.max() <= np.iinfo(np.int16).max
    temporary = out_path.with_name(f".{out_path.name}.partial")
    write_series_nrrd(series.geometry, values.transpose(2, 1, 0), temporary,
                      np.int16 if integral and fits else np.float32)
    temporary.replace(out_path)
    return out_path


def open_label_image(path: str | Path) -> LabelImage:
    """The reader for what MONAI Label's datastore hands the task: a PNG/JPEG, a NIfTI file or a DICOM folder."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return DicomSeriesImage(path)
    if not path.is_file():
        raise LabelImageError(f"{path.name}: no such image")
    if name.endswith(_NIFTI):
        return NiftiImage(path)
    if name.endswith(_RASTER):
        return RasterImage(path)
    raise LabelImageError(f"{path.name}: the label task reads PNG/JPEG, NIfTI or a DICOM series folder")
