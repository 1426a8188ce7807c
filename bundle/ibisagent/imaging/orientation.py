"""Bring a DICOM slice into the standard display before the agent sees it, and its mask back.

Cross-sections say where they lie with ImageOrientationPatient, projection
radiographs with PatientOrientation letters; both lead to the same standard.

Policies learn where anatomy lies on the screen: the embedded one was trained
on axial CT in the radiological display (the patient's right on the image's
left, anterior at the top). A slice stored otherwise (a prone scan, a mirrored
or rotated export) would put organs where the policy never saw them, so the
agent is shown the slice as a viewer's standard hanging shows it, and the mask
is mapped back to the stored pixels the DICOM-SEG references. Only flips and a
transpose are used: pixels move, none is resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DisplayTransform", "IDENTITY", "orientation_note", "patient_orientation_cosines", "standard_display"]

# The standard display per plane (index of the LPS axis the slice normal is closest to):
# (axis, sign) the image's right points toward, then the image's bottom.
_STANDARD = {
    2: ("axial", (0, 1), (1, 1)),  # patient's left, posterior
    1: ("coronal", (0, 1), (2, -1)),  # patient's left, inferior
    0: ("sagittal", (1, 1), (2, -1)),  # posterior, inferior
}
# PatientOrientation's principal letters as LPS unit vectors.
_LETTER_DIRECTIONS = {"L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
                      "H": (0.0, 0.0, 1.0), "F": (0.0, 0.0, -1.0)}
_PROJECTION_VIEW = {"axial": "axial", "coronal": "frontal", "sagittal": "lateral"}
_TOWARD = {(0, 1): "left", (0, -1): "right", (1, 1): "posterior", (1, -1): "anterior", (2, 1): "superior",
           (2, -1): "inferior"}


@dataclass(frozen=True)
class DisplayTransform:
    """Stored pixels -> display: transpose first (rows become columns), then the flips."""

    transpose: bool = False
    flip_rows: bool = False  # top-to-bottom
    flip_columns: bool = False  # left-to-right

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_columns)

    def to_display(self, image: np.ndarray) -> np.ndarray:
        """A stored (H, W) or (H, W, C) array as the agent sees it."""
        out = np.swapaxes(image, 0, 1) if self.transpose else image
        out = out[::-1] if self.flip_rows else out
        out = out[:, ::-1] if self.flip_columns else out
        return np.ascontiguousarray(out)

    def to_stored(self, image: np.ndarray) -> np.ndarray:
        """A display array (a mask the agent made) in the stored pixel order."""
        out = image[::-1] if self.flip_rows else image
        out = out[:, ::-1] if self.flip_columns else out
        out = np.swapaxes(out, 0, 1) if self.transpose else out
        return np.ascontiguousarray(out)

    def stored_shape(self, display_shape: Sequence[int]) -> tuple[int, int]:
        rows, columns = int(display_shape[0]), int(display_shape[1])
        return (columns, rows) if self.transpose else (rows, columns)

    def describe(self) -> str:
        steps = [name for name, done in (("transposed", self.transpose), ("flipped top-to-bottom", self.flip_rows),
                                          ("flipped left-to-right", self.flip_columns)) if done]
        return ", then ".join(steps) if steps else "as stored"


IDENTITY = DisplayTransform()


def _closest_axis(direction: np.ndarray) -> tuple[int, int]:
    axis = int(np.argmax(np.abs(direction)))
    return axis, 1 if direction[axis] > 0 else -1


def standard_display(orientation: Sequence[float] | None) -> DisplayTransform:
    """The transform that shows a slice with this ImageOrientationPatient in the standard display.

    Axial: the patient's left at the image's right, posterior at the bottom;
    coronal: left at the right, inferior at the bottom; sagittal: posterior at
    the right, inferior at the bottom. Oblique slices go to the closest plane.
    Without a usable orientation the slice stays as stored.
    """
    if orientation is None or len(orientation) != 6:
        return IDENTITY
    cosines = np.asarray(orientation, float)
    if not np.all(np.isfinite(cosines)):
        return IDENTITY
    row, column = cosines[:3], cosines[3:]  # the directions of the image's right and of its bottom
    normal = np.cross(row, column)
    if np.linalg.norm(normal) < 0.5:  # not two roughly orthogonal directions: nothing to trust
        return IDENTITY
    _, want_right, want_bottom = _STANDARD[_closest_axis(normal)[0]]
    right, bottom = _closest_axis(row), _closest_axis(column)
    if {right[0], bottom[0]} != {want_right[0], want_bottom[0]}:  # too oblique to name a plane
        return IDENTITY
    transpose = right[0] != want_right[0]
    if transpose:
        right, bottom = bottom, right
    return DisplayTransform(transpose, flip_rows=bottom[1] != want_bottom[1], flip_columns=right[1] != want_right[1])


def patient_orientation_cosines(values: Sequence[str] | None) -> tuple[float, ...] | None:
    """The row and column directions PatientOrientation names, as ImageOrientationPatient-style cosines.

    Projection radiographs (CR, DX, MG) carry PatientOrientation (e.g. L\\F:
    the image's right toward the patient's left, its bottom toward the feet)
    instead of ImageOrientationPatient. Each value's first letter is its
    principal direction; anything else (one value, unknown letters, two
    values along one axis) gives None: nothing to trust.
    """
    if values is None or isinstance(values, str) or len(values) != 2:
        return None
    letters = [str(value).strip()[:1].upper() for value in values]
    if not all(letter in _LETTER_DIRECTIONS for letter in letters):
        return None
    row, column = (_LETTER_DIRECTIONS[letter] for letter in letters)
    if np.count_nonzero(np.cross(row, column)) == 0:
        return None
    return (*row, *column)


def orientation_note(orientation: Sequence[float] | None, transform: DisplayTransform,
                     patient_orientation: Sequence[str] | None = None) -> str | None:
    """One line for the user and the provenance record when the agent saw the slice reoriented.

    `patient_orientation`: the PatientOrientation values `orientation` was derived from (projection images).
    """
    if transform.is_identity or orientation is None:
        return None
    cosines = np.asarray(orientation, float)
    plane = _STANDARD[_closest_axis(np.cross(cosines[:3], cosines[3:]))[0]][0]
    right, bottom = _TOWARD[_closest_axis(cosines[:3])], _TOWARD[_closest_axis(cosines[3:])]
    if patient_orientation is not None:
        what, source = f"{_PROJECTION_VIEW[plane]} image", "PatientOrientation " + "\\".join(patient_orientation)
    else:
        listed = ", ".join(f"{v:g}" for v in np.round(cosines, 3) + 0.0)  # + 0.0: no "-0"
        what, source = f"{plane} slice", f"ImageOrientationPatient {listed}"
    return (f"{what} stored with the image's right toward the patient's {right} and its bottom toward the "
            f"patient's {bottom} ({source}): the agent saw it in the standard display "
            f"({transform.describe()}); masks are mapped back to the stored pixels")
