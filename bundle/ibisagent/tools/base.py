"""The segmentation-tool interface and the prompt handling every SAM-family backend shares.

A backend only implements `_encode` (model input -> embedding) and `_decode`
(embedding + prompt arrays -> multimask low-res logits and predicted IoU).
Prompt encoding, best-mask selection and mapping back to the image live here,
so torch, ONNX and served backends give the same answer for the same model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..imaging.transform import Frame, ImageTransform

__all__ = ["Click", "ImageEmbedding", "SegmentationTool", "ToolOutput", "PromptArrays", "build_prompt_arrays"]

LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_START, LABEL_BOX_END = -1, 0, 1, 2, 3


@dataclass(frozen=True)
class Click:
    """A click at normalised coordinates (x right, y down, in [0, 1])."""

    x: float
    y: float
    positive: bool


@dataclass(frozen=True)
class ImageEmbedding:
    features: np.ndarray  # (1, C, h, w) float32
    frame: Frame

    @property
    def mask_side(self) -> int:
        """Side of the low-res logits: SAM decoders upscale the embedding grid four times."""
        return 4 * int(self.features.shape[-1])


@dataclass(frozen=True)
class ToolOutput:
    mask: np.ndarray  # (H, W) bool at the original image size
    low_res_logits: np.ndarray  # (1, 1, m, m) float32, m = 4 x embedding side: the next step's mask_input
    iou: float  # the decoder's predicted IoU of the chosen mask


@dataclass(frozen=True)
class PromptArrays:
    coords: np.ndarray  # (1, N, 2) float32, model-input pixels
    labels: np.ndarray  # (1, N) float32
    mask_input: np.ndarray  # (1, 1, m, m) float32
    has_mask_input: np.ndarray  # (1,) float32

    @property
    def box_only(self) -> bool:
        """No click, only a box: tools with a separate box decoder answer it with that one."""
        return not np.isin(self.labels, (LABEL_NEGATIVE, LABEL_POSITIVE)).any()


def build_prompt_arrays(frame: Frame, mask_side: int, clicks: Sequence[Click],
                        box: tuple[int, int, int, int] | None, mask_input: np.ndarray | None) -> PromptArrays:
    """Clicks, an optional box (as two labelled corner points, as SAM embeds boxes) and the previous logits.

    Without a box a padding point is appended, exactly as SAM's prompt encoder
    does, so every backend sees the same token sequence.
    """
    if not clicks and box is None:
        raise ValueError("a prediction needs at least one click or a box")
    coords, labels = [], []
    if clicks:
        coords.append(frame.points_to_input(np.array([[c.x, c.y] for c in clicks])))
        labels += [LABEL_POSITIVE if c.positive else LABEL_NEGATIVE for c in clicks]
    if box is not None:
        coords.append(frame.box_to_input(box))
        labels += [LABEL_BOX_START, LABEL_BOX_END]
    else:
        coords.append(np.zeros((1, 2), np.float32))
        labels.append(LABEL_PAD)
    if mask_input is None:
        mask = np.zeros((1, 1, mask_side, mask_side), np.float32)
        has_mask = np.zeros((1,), np.float32)
    else:
        mask = np.asarray(mask_input, np.float32).reshape(1, 1, mask_side, mask_side)
        has_mask = np.ones((1,), np.float32)
    return PromptArrays(
        np.concatenate(coords)[None].astype(np.float32), np.asarray(labels, np.float32)[None], mask, has_mask
    )


class SegmentationTool(ABC):
    """Encode once per image, predict per step. Subclasses provide the two model calls."""

    name: str = "tool"
    encoder_source: str = ""  # where the image encoder comes from; "" when unknown

    def __init__(self, transform: ImageTransform):
        self.transform = transform

    @property
    def encoder_key(self) -> str:
        """Identifies the embeddings this tool computes: encoder and preprocessing, not backend or decoder.

        Tools with equal keys give interchangeable embeddings (torch and ONNX
        agree to ~1e-5), so caches and policies trained on embeddings can be
        shared between them; an unknown encoder falls back to the tool's name.
        """
        origin = self.encoder_source or self.name
        return f"{origin}|{self.transform.input_size}|{self.transform.normalisation}"

    @abstractmethod
    def _encode(self, model_input: np.ndarray) -> np.ndarray:
        """(1, 3, S, S) float32 -> (1, C, h, w) float32 embedding."""

    @abstractmethod
    def _decode(self, features: np.ndarray, prompts: PromptArrays) -> tuple[np.ndarray, np.ndarray]:
        """-> low-res logits (1, 4, m, m) and predicted IoU (1, 4): SAM's single mask, then its three multimasks."""

    def encode(self, image: np.ndarray) -> ImageEmbedding:
        model_input, frame = self.transform(image)
        return ImageEmbedding(self._encode(model_input), frame)

    def predict(self, embedding: ImageEmbedding, clicks: Sequence[Click] = (), mask_input: np.ndarray | None = None,
                box: tuple[int, int, int, int] | None = None, multimask: bool = True) -> ToolOutput:
        """All clicks so far (+ optional box) and the previous low-res logits -> one mask.

        With `multimask` (the IBISAgent protocol) the best of SAM's three
        candidates by predicted IoU is returned; without it, the single-mask
        output (how LiteMedSAM was trained for boxes).
        """
        prompts = build_prompt_arrays(embedding.frame, embedding.mask_side, clicks, box, mask_input)
        logits, iou = self._decode(embedding.features, prompts)
        best = 1 + int(np.argmax(iou[0, 1:])) if multimask else 0
        low_res = logits[:, best:best + 1].astype(np.float32)
        mask = embedding.frame.logits_to_image(low_res[0, 0]) > 0.0
        return ToolOutput(mask, low_res, float(iou[0, best]))
