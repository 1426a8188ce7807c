"""The observation the policy sees: the current mask blended over the image."""

from __future__ import annotations

import numpy as np

__all__ = ["MASK_COLOR", "MASK_ALPHA", "overlay_mask"]

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
