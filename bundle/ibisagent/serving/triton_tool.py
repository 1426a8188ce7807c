"""The segmentation tool served by Triton (`sam_encoder` + `sam_decoder` of triton_models/), over gRPC.

Only `_encode` and `_decode` are remote; prompt arrays, the best-mask choice
and the mapping back to the image are the shared code in tools/base.py, so a
Triton tool and the in-process ONNX tool on the same graphs give the same mask.

By default the embedding stays on the server (`resident`): encoding sends the
image and a content key and gets back the embedding's 2x2 means (1 MiB, once
per image: what IBIS-lite reads, so the default policy runs through the
server too); each click sends the key, the prompts and the previous logits.
With `resident=False` the 4 MiB embedding comes back to the client and goes
up again with every click (what the bench compares against).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..imaging.transform import ImageTransform
from ..tools.base import PromptArrays, SegmentationTool
from .grpc_client import ServerError, TritonCaller

__all__ = ["TritonSamTool", "ServerEmbedding", "NOT_RESIDENT", "embedding_key"]

NOT_RESIDENT = "embedding not resident"  # the sam_decoder model's error for a key it does not hold


def embedding_key(model_input: np.ndarray) -> str:
    """The key an embedding is kept under on the server: its model input's content (same image, same key)."""
    digest = hashlib.sha256(np.asarray(model_input.shape, np.int64).tobytes() + model_input.tobytes())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class ServerEmbedding:
    """An embedding kept by the server: its shape and key. The model input is kept to encode again if the
    server lost it (evicted from its cache, or restarted)."""

    key: str
    shape: tuple[int, ...]
    model_input: np.ndarray
    pooled: np.ndarray | None = None  # the embedding's 2x2 means, sent back once: what IBIS-lite reads


class TritonSamTool(SegmentationTool):
    def __init__(self, server: str, resident: bool = True, timeout: float = 30.0, retries: int = 2,
                 encoder_model: str = "sam_encoder", decoder_model: str = "sam_decoder"):
        self.caller = TritonCaller(server, timeout, retries)
        self.encoder_model, self.decoder_model = encoder_model, decoder_model
        config = self.caller.model_config(encoder_model)
        self.caller.model_config(decoder_model)  # fail now, naming it, rather than at the first click
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        try:
            transform = ImageTransform(int(parameters["input_size"]), parameters["normalisation"])
            output = next(o for o in config["output"] if o["name"] == "image_embedding")
        except (KeyError, ValueError, StopIteration) as error:
            raise self.caller.error(encoder_model, f"config lacks input_size/normalisation or image_embedding "
                                                   f"({error})") from None
        super().__init__(transform)
        self.embedding_shape = (1, *(int(side) for side in output["dims"]))
        self.resident = resident
        self.name = f"triton:{self.caller.server}"

    def _encode(self, model_input: np.ndarray) -> np.ndarray | ServerEmbedding:
        model_input = np.ascontiguousarray(model_input, np.float32)
        if not self.resident:
            return self.caller.infer(self.encoder_model, {"image": model_input}, ["image_embedding"])["image_embedding"]
        key = embedding_key(model_input)
        out = self.caller.infer(self.encoder_model,
                                {"image": model_input, "image_key": np.array([[key.encode()]], dtype=np.object_)},
                                ["embedding_key", "pooled_embedding"])
        if bytes(out["embedding_key"].reshape(-1)[0]).decode() != key:
            raise self.caller.error(self.encoder_model, "the embedding was not kept under the key sent")
        return ServerEmbedding(key, self.embedding_shape, model_input, out["pooled_embedding"])

    def _decode(self, features: np.ndarray | ServerEmbedding, prompts: PromptArrays) -> tuple[np.ndarray, np.ndarray]:
        inputs = {
            "point_coords": prompts.coords, "point_labels": prompts.labels,
            "mask_input": prompts.mask_input, "has_mask_input": prompts.has_mask_input.reshape(1, 1),
        }
        if not isinstance(features, ServerEmbedding):
            return self._run_decoder({"image_embedding": np.asarray(features, np.float32), **inputs})
        try:
            return self._run_decoder({"image_key": np.array([[features.key.encode()]], dtype=np.object_), **inputs})
        except ServerError as error:
            if NOT_RESIDENT not in str(error):
                raise
        stored = self._encode(features.model_input)  # the server lost it: store it again, once
        return self._run_decoder({"image_key": np.array([[stored.key.encode()]], dtype=np.object_), **inputs})

    def _run_decoder(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self.caller.infer(self.decoder_model, inputs, ["low_res_logits", "iou_predictions"])
        logits, iou = out["low_res_logits"], out["iou_predictions"]
        if logits.ndim != 4 or logits.shape[1] != 4 or iou.shape != (1, 4):
            raise self.caller.error(self.decoder_model, f"unexpected output shapes {logits.shape}, {iou.shape}")
        return logits, iou
