"""Export a SAM-family tool to ONNX: `encoder.onnx`, `decoder.onnx` and a `tool.json` manifest.

The encoder graph takes one image (batch 1, fixed): TinyViT's patch merging
reads the batch size as a Python int, so a traced graph with a dynamic batch
would accept batch 2 and then fail inside a convolution. A fixed batch makes
onnxruntime refuse other batches up front with a shape error. The decoder is
the same `PromptDecoder` the torch tool runs, with dynamic batch (one prompt
per image embedding) and a dynamic number of points. Parts that keep a
separate decoder for box-only prompts (`SamParts.box_parts`) give a second
graph, `box_decoder.onnx`, named in the manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..imaging.transform import ImageTransform
from .onnx_tool import BOX_DECODER_NAME, MANIFEST_FORMAT, MANIFEST_NAME
from .sam_model import PromptDecoder, SamParts

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT", "BOX_DECODER_NAME", "OPSET", "export_onnx"]

OPSET = 17


def export_onnx(parts: SamParts, transform: ImageTransform, out_dir: str | Path) -> Path:
    """Write the graphs and the manifest into `out_dir`; files appear only when complete, the manifest last."""
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
    box_parts = parts.box_parts()
    graphs = ["encoder.onnx", "decoder.onnx", *([BOX_DECODER_NAME] if box_parts is not None else [])]
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                parts.image_encoder, (image,), staging / "encoder.onnx", dynamo=False, opset_version=OPSET,
                input_names=["image"], output_names=["image_embedding"],
            )
            _export_decoder(parts, decoder_inputs, staging / "decoder.onnx")
            if box_parts is not None:
                _export_decoder(box_parts, decoder_inputs, staging / BOX_DECODER_NAME)
        manifest = {
            "format": MANIFEST_FORMAT,
            "source": parts.source,
            "encoder_source": parts.encoder_source or parts.source,
            "input_size": side,
            "normalisation": transform.normalisation,
            "embedding_shape": list(embedding.shape[1:]),
            "mask_side": mask_side,
            "opset": OPSET,
            "box_decoder": BOX_DECODER_NAME if box_parts is not None else None,
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        (out_dir / BOX_DECODER_NAME).unlink(missing_ok=True)
        for name in (*graphs, MANIFEST_NAME):
            os.replace(staging / name, out_dir / name)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return out_dir


def _export_decoder(parts: SamParts, example_inputs: tuple, path: Path) -> None:
    torch.onnx.export(
        PromptDecoder(parts).eval(), example_inputs, path, dynamo=False, opset_version=OPSET,
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
