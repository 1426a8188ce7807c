"""A SAM-family tool running an `ibis export-onnx` directory with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..imaging.transform import ImageTransform
from .base import PromptArrays, SegmentationTool
from .onnx_export import BOX_DECODER_NAME, MANIFEST_FORMAT, MANIFEST_NAME

__all__ = ["OnnxSamTool"]


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{directory} is not an ONNX tool directory (no {MANIFEST_NAME}); make one with `ibis export-onnx`") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


class OnnxSamTool(SegmentationTool):
    def __init__(self, directory: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None):
        import onnxruntime as ort

        directory = Path(directory)
        manifest = _read_manifest(directory)
        super().__init__(ImageTransform(manifest["input_size"], manifest["normalisation"]))
        self.name = f"onnx:{manifest['source']}"
        self.encoder_source = manifest.get("encoder_source", manifest["source"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.encoder = ort.InferenceSession(str(directory / "encoder.onnx"), options, providers=list(providers))
        self.decoder = ort.InferenceSession(str(directory / "decoder.onnx"), options, providers=list(providers))
        self.box_decoder = None  # answers box-only prompts when the export has one (SamParts.box_parts)
        if manifest.get("box_decoder"):
            if not (directory / BOX_DECODER_NAME).is_file():
                raise ValueError(f"{directory}: the manifest names {BOX_DECODER_NAME}, which is missing; export again")
            self.box_decoder = ort.InferenceSession(str(directory / BOX_DECODER_NAME), options,
                                                    providers=list(providers))

    def _encode(self, model_input: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"image": model_input})[0]

    def _decode(self, features: np.ndarray, prompts: PromptArrays) -> tuple[np.ndarray, np.ndarray]:
        decoder = self.box_decoder if self.box_decoder is not None and prompts.box_only else self.decoder
        logits, iou = decoder.run(None, {
            "image_embedding": features,
            "point_coords": prompts.coords,
            "point_labels": prompts.labels,
            "mask_input": prompts.mask_input,
            "has_mask_input": prompts.has_mask_input,
        })
        return logits, iou
