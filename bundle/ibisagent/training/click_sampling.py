"""Clicks for training, in the model-input frame: from the error regions, not only their centres.

A trained policy will not click the exact distance-transform maximum, so the
decoder learns from clicks spread over the inner part of the error region
too (any pixel at least half as deep as the deepest one).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from ..tools.base import LABEL_PAD

__all__ = ["sample_click", "jittered_box", "prompt_tensors"]


def sample_click(prediction: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                 exact_probability: float = 0.5) -> tuple[int, int, bool] | None:
    """(row, col, positive) in the error region chosen like the simulator, or None without errors."""
    false_negative = target & ~prediction
    false_positive = prediction & ~target
    fn_area, fp_area = int(false_negative.sum()), int(false_positive.sum())
    if fn_area == 0 and fp_area == 0:
        return None
    positive = fn_area >= fp_area
    region = false_negative if positive else false_positive
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    deepest = depth.max()
    if rng.random() < exact_probability:
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    else:
        rows, cols = np.nonzero(depth >= 0.5 * deepest)
        pick = rng.integers(len(rows))
        row, col = rows[pick], cols[pick]
    return int(row), int(col), positive


def jittered_box(target: np.ndarray, rng: np.random.Generator, max_shift: float = 0.1) -> np.ndarray:
    """The target's box (x0, y0, x1, y1) with each side moved by up to `max_shift` of its size."""
    rows, cols = np.nonzero(target)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], np.float32)
    size = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2, np.float32)
    box += rng.uniform(-max_shift, max_shift, 4).astype(np.float32) * size
    limit = np.array([target.shape[1] - 1, target.shape[0] - 1] * 2, np.float32)
    return np.clip(box, 0, limit)


def prompt_tensors(points: list[list[tuple[float, float, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (x, y, label) lists, padded with not-a-point entries to one length (+1 pad, as at inference)."""
    length = max(len(p) for p in points) + 1
    coords = np.zeros((len(points), length, 2), np.float32)
    labels = np.full((len(points), length), LABEL_PAD, np.float32)
    for index, sample_points in enumerate(points):
        for slot, (x, y, label) in enumerate(sample_points):
            coords[index, slot] = (x, y)
            labels[index, slot] = label
    return torch.from_numpy(coords), torch.from_numpy(labels)
