"""A volume: voxels in (slice, row, column) order and where they lie in the patient (LPS mm, as DICOM).

Every reader converts its input's convention once (NIfTI's RAS, an npz's
(z, y, x) affine, a DICOM series' positions) into one affine from voxel
indices to LPS, and every writer converts back once; nothing in between
knows where a volume came from. Voxels are never resampled: slices reach the
tool in the standard display through flips and a transpose (as 2D DICOM
does, `imaging.orientation`), and masks go back to voxel order exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from ..imaging.orientation import IDENTITY, DisplayTransform, standard_display
from ..imaging.windowing import CT_WINDOWS, apply_window

__all__ = ["Volume", "VolumeError", "VolumeWindow", "RAS_FROM_LPS"]

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse: LPS <-> RAS flips x and y


class VolumeError(ValueError):
    """An input that cannot be segmented as a volume; the message says why and what to do."""


@dataclass(frozen=True)
class VolumeWindow:
    """One intensity window for every slice of a volume, so a structure looks the same from slice to slice.

    CT presets are fixed in Hounsfield units; "percentile" is computed once
    over the whole volume (per-slice percentiles would brighten a slice that
    holds little tissue). Only a uint8 CT is shown "as stored" (it was windowed
    already; HU presets cannot apply). uint8 MR or unknown voxels are a
    normalisation, not a display: they get the percentile window like any MR,
    which is how the policy's training slices were made (med2d's brats2015 PNGs
    are the 0.5-99.5 percentile window of the same volume; shown as stored,
    the policy saw them 20-25 % darker with the tumour unsaturated:
    docs/volumes.md, "The display window").
    """

    name: str  # a CT preset, "percentile" or "as stored"
    center: float
    width: float

    @classmethod
    def for_volume(cls, voxels: np.ndarray, modality: str | None, window: str | None = None) -> VolumeWindow:
        if window is None:
            if voxels.dtype == np.uint8 and modality == "CT":
                return cls("as stored", 127.5, 255.0)
            in_hounsfield = voxels.dtype != np.uint8 and (
                modality == "CT" or (modality is None and float(voxels.min()) <= -500))
            window = "abdomen" if in_hounsfield else "percentile"
        if window in CT_WINDOWS:
            return cls(window, *CT_WINDOWS[window])
        if window != "percentile":
            raise VolumeError(f"unknown window {window!r}; choose one of {', '.join([*CT_WINDOWS, 'percentile'])}")
        sample = voxels[:, ::2, ::2] if voxels.size > 4_000_000 else voxels
        finite = sample[np.isfinite(sample)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        high = high if high > low else low + 1.0
        return cls("percentile", float((low + high) / 2.0), float(high - low))

    def apply(self, values: np.ndarray) -> np.ndarray:
        if self.name == "as stored" and values.dtype == np.uint8:
            return values
        return apply_window(np.nan_to_num(values, nan=self.center - self.width / 2.0), self.center, self.width)


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels (slice, row, column) and an affine from (slice, row, column, 1) to patient LPS millimetres.

    Slice indices grow along the affine's slice direction; rows and columns
    are the stored in-plane order. `orientation_known` is False when the input
    said only how far apart voxels are (an npz without affine): then the
    affine scales by the spacing along nominal axes and slices are shown as
    stored. `source` is what the writers need to put results back in the
    input's own geometry (`readers.py`); `notes` are what the reader wants the
    user to know (uneven spacing, tilt, reorientation).
    """

    voxels: np.ndarray  # (N, H, W) modality values (CT: Hounsfield units) or uint8 display values
    affine: np.ndarray  # (4, 4) float64
    modality: str | None = None
    orientation_known: bool = True
    source: object | None = None
    name: str = "volume"
    notes: tuple[str, ...] = ()
    uniform_spacing: bool = True
    window: VolumeWindow = field(default=None)  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        voxels = np.asarray(self.voxels)
        if voxels.ndim != 3:
            raise VolumeError(f"{self.name}: a volume needs 3 axes (slice, row, column), got shape {voxels.shape}")
        if voxels.shape[0] < 2:
            raise VolumeError(f"{self.name}: a single slice ({voxels.shape[1]}x{voxels.shape[2]}) is a 2D image, not a "
                              "volume; segment it with `ibis segment` (or segment-dicom --slice)")
        if min(voxels.shape[1:]) < 2:
            raise VolumeError(f"{self.name}: slices of {voxels.shape[1]}x{voxels.shape[2]} voxels cannot be segmented")
        affine = np.asarray(self.affine, np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise VolumeError(f"{self.name}: the voxel-to-patient affine is not an invertible 4x4 matrix")
        object.__setattr__(self, "voxels", voxels)
        object.__setattr__(self, "affine", affine)
        if self.window is None:
            object.__setattr__(self, "window", VolumeWindow.for_volume(voxels, self.modality))

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.voxels.shape)  # type: ignore[return-value]

    @property
    def slice_count(self) -> int:
        return self.shape[0]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Millimetres between neighbouring voxels along (slice, row, column)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """(3, 3): column j is the LPS unit vector voxel axis j (slice, row, column) grows along."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def display(self) -> DisplayTransform:
        """Stored slice -> the standard display (the same for every slice: one orientation per volume)."""
        if not self.orientation_known:
            return IDENTITY
        direction = self.direction
        return standard_display((*direction[:, 2], *direction[:, 1]))  # image right = columns, bottom = rows

    def with_window(self, window: str | None) -> Volume:
        """The same volume shown through another window (None: the default for its modality)."""
        from dataclasses import replace

        return replace(self, window=VolumeWindow.for_volume(self.voxels, self.modality, window))

    # ------------------------------------------------------------------ slices
    def check_slice(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) < self.slice_count:
            raise VolumeError(f"slice {index} is outside the volume: it has {self.slice_count} slices "
                              f"(0..{self.slice_count - 1})")
        return int(index)

    def slice_rgb(self, index: int) -> np.ndarray:
        """Slice `index` as the tool and the policy see it: windowed RGB uint8 in the standard display."""
        grey = self.window.apply(self.voxels[self.check_slice(index)])
        return np.repeat(self.display.to_display(grey)[..., None], 3, axis=2)

    @property
    def display_shape(self) -> tuple[int, int]:
        rows, columns = self.shape[1:]
        return (columns, rows) if self.display.transpose else (rows, columns)

    def to_stored(self, masks: np.ndarray) -> np.ndarray:
        """Display-frame masks, (H', W') or (N, H', W'), back to voxel order."""
        masks = np.asarray(masks)
        if masks.ndim == 2:
            return self.display.to_stored(masks)
        return np.stack([self.display.to_stored(m) for m in masks])

    def to_display(self, masks: np.ndarray) -> np.ndarray:
        """Voxel-order masks, (H, W) or (N, H, W), as the agent sees them."""
        masks = np.asarray(masks)
        if masks.ndim == 2:
            return self.display.to_display(masks)
        return np.stack([self.display.to_display(m) for m in masks])

    def describe(self) -> str:
        spacing = " x ".join(f"{v:.3g}" for v in self.spacing)
        oriented = "" if self.orientation_known else ", orientation unknown (shown as stored)"
        return (f"{self.name}: {self.slice_count} slices of {self.shape[1]}x{self.shape[2]}, spacing {spacing} mm "
                f"(slice, row, column), {self.modality or 'unknown modality'}, window {self.window.name}{oriented}")
