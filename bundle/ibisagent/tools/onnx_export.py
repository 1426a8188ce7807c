"""Export a SAM-family tool to ONNX: `encoder.onnx`, `decoder.onnx` and a `tool.json` manifest.

The encoder graph takes one image (batch 1, fixed): TinyViT's patch merging
reads the batch size as a Python int, so a traced graph with a dynamic batch
would accept batch 2 and then fail inside a convolution. A fixed batch makes
onnxruntime refuse other batches up front with a shape error. The decoder is
the same prompt decoder the torch tool runs (both halves of a `BoxRoutedDecoder`),
with dynamic batch (one prompt per image embedding) and a dynamic number of points.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..imaging.transform import ImageTransform
from .sam_model import SamParts, build_prompt_decoder

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "export_onnx"]

MANIFEST_NAME = "tool.json"
MANIFEST_FORMAT = "ibisagent-sam-onnx/1"
OPSET = 17


def export_onnx(parts: SamParts, transform: ImageTransform, out_dir: str | Path) -> Path:
    """Write the two graphs and the manifest into `out_dir`; files appear only when complete."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    side = parts.input_size
    image = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        embedding = parts.image_encoder(image)
    mask_side = 4 * embedding.shape[-1]
    decoder_inputs = (
        embedding,
        torch.tensor([[[side / 2, side / 2], [0.0, 0.0]]], dtype=torch.float32),
        torch.tensor([[1.0, -1.0]]),
        torch.zeros(1, 1, mask_side, mask_side),
        torch.zeros(1),
    )
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                parts.image_encoder, (image,), staging / "encoder.onnx", dynamo=False, opset_version=OPSET,
                input_names=["image"], output_names=["image_embedding"],
            )
            torch.onnx.export(
                build_prompt_decoder(parts).eval(), decoder_inputs, staging / "decoder.onnx", dynamo=False,
                opset_version=OPSET,
                input_names=["image_embedding", "point_coords", "point_labels", "mask_input", "has_mask_input"],
                output_names=["low_res_logits", "iou_predictions"],
                dynamic_axes={
                    "image_embedding": {0: "batch"},
                    "point_coords": {0: "batch", 1: "points"},
                    "point_labels": {0: "batch", 1: "points"},
                    "mask_input": {0: "batch"},
                    "has_mask_input": {0: "batch"},
                    "low_res_logits": {0: "batch"},
                    "iou_predictions": {0: "batch"},
                },
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": parts.source,
            "encoder_source": parts.encoder_source or parts.source,
            "input_size": side,
            "normalisation": transform.normalisation,
            "embedding_shape": list(embedding.shape[1:]),
            "mask_side": mask_side,
            "opset": OPSET,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        for name in ("encoder.onnx", "decoder.onnx", MANIFEST_NAME):
            os.replace(staging / name, out_dir / name)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return out_dir
