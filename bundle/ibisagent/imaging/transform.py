"""Model input for SAM-family encoders: one place, shared by torch, ONNX and served tools.

The geometry follows upstream LiteMedSAM: resize the longest side to the
encoder size (area interpolation), pad bottom/right, and map logits back by
cropping the padding and resizing to the original size. Intensity is either
min-max to [0, 1] (LiteMedSAM, MedSAM) or SAM's ImageNet mean/std on 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

__all__ = ["Frame", "ImageTransform", "Normalisation"]

Normalisation = Literal["minmax", "sam"]
_SAM_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
_SAM_STD = np.array([58.395, 57.12, 57.375], np.float32)


@dataclass(frozen=True)
class Frame:
    """How an original image maps into the square model input."""

    height: int
    width: int
    input_size: int

    @property
    def scale(self) -> float:
        return self.input_size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        return int(round(self.height * self.scale)), int(round(self.width * self.scale))

    def points_to_input(self, xy_normalised: np.ndarray) -> np.ndarray:
        """Normalised (x, y) to model-input coordinates in SAM's pixel-index convention.

        A normalised coordinate u covers the continuous span [0, W]; SAM's prompt
        encoder adds half a pixel to what it is given, so we subtract it here.
        """
        xy = np.asarray(xy_normalised, np.float64).reshape(-1, 2)
        continuous = xy * np.array([self.width, self.height])
        return (continuous * self.scale - 0.5).astype(np.float32)

    def box_to_input(self, box_xyxy: tuple[int, int, int, int]) -> np.ndarray:
        """A pixel-index box (x0, y0, x1, y1) of the original image to input coordinates."""
        return (np.asarray(box_xyxy, np.float64) * self.scale).astype(np.float32).reshape(2, 2)

    def mask_to_input(self, mask: np.ndarray) -> np.ndarray:
        """A mask at the original size to the padded model-input frame (area resize, >= half covered)."""
        rows, cols = self.resized
        resized = cv2.resize(mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA) >= 0.5
        framed = np.zeros((self.input_size, self.input_size), bool)
        framed[:rows, :cols] = resized
        return framed

    def logits_to_image(self, low_res: np.ndarray) -> np.ndarray:
        """Low-res decoder logits (any square size) to logits at the original image size."""
        side = self.input_size
        upsampled = cv2.resize(low_res.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
        rows, cols = self.resized
        cropped = upsampled[:rows, :cols]
        return cv2.resize(cropped, (self.width, self.height), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class ImageTransform:
    input_size: int = 256
    normalisation: Normalisation = "minmax"

    def __post_init__(self) -> None:
        if self.normalisation not in ("minmax", "sam"):
            raise ValueError(f"normalisation must be 'minmax' or 'sam', got {self.normalisation!r}")

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, Frame]:
        """RGB uint8 (H, W, 3) to a float32 (1, 3, S, S) input and its frame."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
        frame = Frame(image.shape[0], image.shape[1], self.input_size)
        rows, cols = frame.resized
        if min(rows, cols) < 1:
            raise ValueError(f"a {image.shape[1]}x{image.shape[0]} image is too elongated for the encoder: its short "
                             f"side would be {min(image.shape[:2]) * frame.scale:.2f} px of {self.input_size}")
        resized = cv2.resize(image, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
        if self.normalisation == "minmax":
            low, high = float(resized.min()), float(resized.max())
            normalised = (resized - low) / max(high - low, 1e-8)
        else:
            normalised = (resized - _SAM_MEAN) / _SAM_STD
        padded = np.zeros((self.input_size, self.input_size, 3), np.float32)
        padded[:rows, :cols] = normalised
        return padded.transpose(2, 0, 1)[None].copy(), frame
