"""A SAM-family tool running in-process with torch."""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.transform import ImageTransform
from .base import PromptArrays, SegmentationTool
from .sam_model import PromptDecoder, SamParts

__all__ = ["TorchSamTool"]


class TorchSamTool(SegmentationTool):
    def __init__(self, parts: SamParts, transform: ImageTransform, device: str = "cpu"):
        if transform.input_size != parts.input_size:
            raise ValueError(f"transform size {transform.input_size} != model input size {parts.input_size}")
        super().__init__(transform)
        self.parts = parts
        self.name = f"torch:{parts.source}"
        self.encoder_source = parts.encoder_source or parts.source
        self.device = torch.device(device)
        self.image_encoder = parts.image_encoder.to(self.device)
        self.decoder = PromptDecoder(parts).to(self.device).eval()
        box_parts = parts.box_parts()
        self.box_decoder = None if box_parts is None else PromptDecoder(box_parts).to(self.device).eval()

    @torch.inference_mode()
    def _encode(self, model_input: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(model_input).to(self.device)
        return self.image_encoder(tensor).float().cpu().numpy()

    @torch.inference_mode()
    def _decode(self, features: np.ndarray, prompts: PromptArrays) -> tuple[np.ndarray, np.ndarray]:
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

        decoder = self.box_decoder if self.box_decoder is not None and prompts.box_only else self.decoder
        logits, iou = decoder(
            tensor(features), tensor(prompts.coords), tensor(prompts.labels),
            tensor(prompts.mask_input), tensor(prompts.has_mask_input),
        )
        return logits.float().cpu().numpy(), iou.float().cpu().numpy()
