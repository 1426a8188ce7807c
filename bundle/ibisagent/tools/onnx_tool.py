"""A SAM-family tool running an `ibis export-onnx` directory with onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..imaging.transform import ImageTransform
from .base import PromptArrays, SegmentationTool

__all__ = ["OnnxSamTool", "MANIFEST_NAME", "MANIFEST_FORMAT", "BOX_DECODER_NAME"]

# What `ibis export-onnx` writes (tools/onnx_export.py) and this reader checks; here, so reading needs no torch.
MANIFEST_NAME = "tool.json"
BOX_DECODER_NAME = "box_decoder.onnx"
MANIFEST_FORMAT = "ibisagent-sam-onnx/1"


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
        self._session = lambda name: ort.InferenceSession(str(directory / name), options, providers=list(providers))
        self.encoder = self._session("encoder.onnx")
        self.decoder = self._session("decoder.onnx")
        self._box_decoder = None  # answers box-only prompts when the export has one (SamParts.box_parts)
        self.has_box_decoder = bool(manifest.get("box_decoder"))
        if self.has_box_decoder and not (directory / BOX_DECODER_NAME).is_file():
            raise ValueError(f"{directory}: the manifest names {BOX_DECODER_NAME}, which is missing; export again")

    @property
    def box_decoder(self):
        """The box-only decoder's session, made on the first box-only prompt (clicks never need it)."""
        if self.has_box_decoder and self._box_decoder is None:
            self._box_decoder = self._session(BOX_DECODER_NAME)
        return self._box_decoder

    def _encode(self, model_input: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"image": model_input})[0]

    def _decode(self, features: np.ndarray, prompts: PromptArrays) -> tuple[np.ndarray, np.ndarray]:
        decoder = self.box_decoder if self.has_box_decoder and prompts.box_only else self.decoder
        logits, iou = decoder.run(None, {
            "image_embedding": features,
            "point_coords": prompts.coords,
            "point_labels": prompts.labels,
            "mask_input": prompts.mask_input,
            "has_mask_input": prompts.has_mask_input,
        })
        return logits, iou
