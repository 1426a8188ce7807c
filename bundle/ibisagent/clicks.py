"""The click simulator of interactive segmentation, used by the oracle and by trajectory building.

It clicks the pixel farthest from the border of the larger error region:
false negatives give a positive click, false positives a negative one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .tools.base import Click

__all__ = ["ErrorSummary", "next_click", "normalised_to_pixel", "pixel_to_normalised"]


@dataclass(frozen=True)
class ErrorSummary:
    false_negative: int
    false_positive: int


def pixel_to_normalised(row: int, col: int, shape: tuple[int, int]) -> tuple[float, float]:
    """The centre of pixel (row, col) as normalised (x, y)."""
    return (col + 0.5) / shape[1], (row + 0.5) / shape[0]


def normalised_to_pixel(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the pixel holding normalised (x, y); 1.0 falls in the last pixel."""
    return min(int(y * shape[0]), shape[0] - 1), min(int(x * shape[1]), shape[1] - 1)


def next_click(prediction: np.ndarray, target: np.ndarray) -> tuple[Click | None, ErrorSummary]:
    """The simulated user's next click, or None when prediction equals target."""
    prediction, target = prediction.astype(bool), target.astype(bool)
    false_negative = target & ~prediction
    false_positive = prediction & ~target
    summary = ErrorSummary(int(false_negative.sum()), int(false_positive.sum()))
    if summary.false_negative == 0 and summary.false_positive == 0:
        return None, summary
    positive = summary.false_negative >= summary.false_positive
    region = false_negative if positive else false_positive
    # Pad so the image border counts as region boundary.
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    x, y = pixel_to_normalised(int(row), int(col), region.shape)
    return Click(x, y, positive), summary
