"""Segmentation metrics, all in [0, 1]: IoU, Dice (DSC), boundary F1, clicks to a target IoU."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["iou", "dice", "boundary_f1", "noc", "bounding_box", "auroc"]


def _pair(prediction: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    return prediction.astype(bool), target.astype(bool)


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union; two empty masks agree perfectly (1.0)."""
    p, t = _pair(prediction, target)
    union = np.logical_or(p, t).sum()
    return 1.0 if union == 0 else float(np.logical_and(p, t).sum() / union)


def dice(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice similarity coefficient (DSC); equals pixel-wise F1."""
    p, t = _pair(prediction, target)
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(p, t).sum() / total)


def _boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # here, not at import: scipy costs a second of every command's start

    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def boundary_f1(prediction: np.ndarray, target: np.ndarray, tolerance: float = 0.008) -> float:
    """Boundary F-measure: contour precision/recall within `tolerance` x image diagonal pixels.

    Pixel F1 equals Dice, so the F1 we report is the contour accuracy, which
    tells a tight outline from a blobby one of the same overlap.
    """
    p, t = _pair(prediction, target)
    if not p.any() and not t.any():
        return 1.0
    if not p.any() or not t.any():
        return 0.0
    from scipy import ndimage

    radius = max(1.0, tolerance * float(np.hypot(*p.shape)))
    pb, tb = _boundary(p), _boundary(t)
    distance_to_t = ndimage.distance_transform_edt(~tb)
    distance_to_p = ndimage.distance_transform_edt(~pb)
    precision = float((distance_to_t[pb] <= radius).mean())
    recall = float((distance_to_p[tb] <= radius).mean())
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


def noc(ious_per_click: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks until IoU reaches `threshold`; `max_clicks` when it never does."""
    for index, value in enumerate(ious_per_click[:max_clicks], start=1):
        if value >= threshold:
            return index
    return max_clicks


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-index box (x0, y0, x1, y1) of a mask, None when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties count
    half); NaN unless both classes occur."""
    from scipy.stats import rankdata

    scores, positives = np.asarray(scores, float), np.asarray(positives, bool)
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))
