"""The observation the policy sees (the current mask blended over the image), and the pictures a person reads.

The policy's observation is only the mask overlay, as in the IBISAgent
protocol. The overlays written for people (`outputs.py`) also mark each
click: a green disc with a plus for a positive click, a red disc with a
minus for a negative one (shape as well as colour, for colour-blind readers),
ringed in black and white so they stand out on any image and mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..clicks import normalised_to_pixel

__all__ = ["MASK_COLOR", "MASK_ALPHA", "POSITIVE_COLOR", "NEGATIVE_COLOR", "overlay_mask", "mark_clicks",
           "click_radius"]

POSITIVE_COLOR = (0, 230, 0)
NEGATIVE_COLOR = (230, 0, 0)

MASK_COLOR = (34, 139, 34)  # forest green, as in the IBISAgent protocol
MASK_ALPHA = 0.4


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = MASK_COLOR,
                 alpha: float = MASK_ALPHA) -> np.ndarray:
    """Blend `color` at `alpha` over the mask pixels of an RGB uint8 image; other pixels unchanged."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    out = image.copy()
    selected = mask.astype(bool)
    blended = (1.0 - alpha) * image[selected].astype(np.float32) + alpha * np.asarray(color, np.float32)
    out[selected] = np.round(blended).astype(np.uint8)
    return out


def click_radius(shape: tuple[int, ...]) -> int:
    """The marks' radius in pixels: 1.5 % of the longer side, at least 4."""
    return max(4, round(0.015 * max(shape[:2])))


def mark_clicks(image: np.ndarray, clicks: Sequence) -> np.ndarray:
    """A copy of an RGB uint8 image with each click (`x`, `y` in [0, 1], `positive`) marked where it was made."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    height, width = out.shape[:2]
    radius = click_radius(out.shape)
    arm = max(2, radius // 2)
    for click in clicks:
        row, col = normalised_to_pixel(click.x, click.y, (height, width))
        centre = (col, row)
        color = POSITIVE_COLOR if click.positive else NEGATIVE_COLOR
        cv2.circle(out, centre, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, centre, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(out, centre, radius, color, -1, cv2.LINE_AA)
        x, y = centre
        cv2.line(out, (x - arm, y), (x + arm, y), (255, 255, 255), 1 + radius // 6)
        if click.positive:
            cv2.line(out, (x, y - arm), (x, y + arm), (255, 255, 255), 1 + radius // 6)
    return out
