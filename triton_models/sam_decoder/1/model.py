"""Triton python-backend model: SAM-family prompt decoder on onnxruntime, with resident embeddings.

Embeddings are kept in an LRU cache under the client's image key, so a click
carries the prompts and the previous logits, not the 4 MiB embedding. A key
the cache has lost (evicted, server restarted) is answered with an error that
starts with NOT_RESIDENT; the client then encodes the image again.

A `box_decoder.onnx` beside the main graph (exported for tools that keep the
checkpoint's own decoder for boxes) answers requests whose prompt has no
click, as the in-process tools do.
"""

import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

NOT_RESIDENT = "embedding not resident"
MAX_KEY_BYTES = 64  # clients send 32 hex digits; a longer key would be kept (and held in memory) as sent


def _parameter(config, key, default=""):
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def ort_session(config, version_dir, key="onnx_model", required=True):
    """An onnxruntime session from the config's graph parameter `key`, providers (or $IBIS_ORT_PROVIDERS) and
    threads; None when the graph is absent and not `required`."""
    path = Path(_parameter(config, key))
    path = path if path.is_absolute() else version_dir / path
    if not path.is_file():
        if not required:
            return None
        raise pb_utils.TritonModelException(f"{config['name']}: ONNX graph {path} missing; `ibis serve` exports it")
    providers = os.environ.get("IBIS_ORT_PROVIDERS") or _parameter(config, "providers", "CPUExecutionProvider")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "0"))
    return ort.InferenceSession(str(path), options, providers=[p.strip() for p in providers.split(",") if p.strip()])


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.session = ort_session(self.config, version_dir)
        self.box_session = ort_session(self.config, version_dir, "box_onnx_model", required=False)
        self.capacity = int(_parameter(self.config, "resident_embeddings", "64"))
        self.max_points = int(_parameter(self.config, "max_points", "256"))
        self.resident = OrderedDict()

    def _embedding(self, request):
        """(1, C, h, w): the request's own embedding (kept when keyed), else the resident one."""
        keys = _input(request, "image_key")
        key = bytes(keys.reshape(-1)[0]) if keys is not None else b""
        if len(key) > MAX_KEY_BYTES:
            raise ValueError(f"image_key is {len(key)} bytes; at most {MAX_KEY_BYTES} are accepted")
        embedding = _input(request, "image_embedding")
        if embedding is not None:
            embedding = np.ascontiguousarray(embedding, dtype=np.float32)
            if key:
                self.resident[key] = embedding
                self.resident.move_to_end(key)
                while len(self.resident) > self.capacity:
                    self.resident.popitem(last=False)
            return embedding
        if not key:
            raise ValueError("send image_embedding or image_key")
        if key not in self.resident:
            raise KeyError(f"{NOT_RESIDENT}: {key.decode(errors='replace')[:16]}")
        self.resident.move_to_end(key)
        return self.resident[key]

    def _decode(self, request):
        embedding = self._embedding(request)
        coords = _input(request, "point_coords")
        side = 4 * embedding.shape[-1]
        if coords is None:  # a store-only request
            return np.zeros((1, 0, side, side), np.float32), np.zeros((1, 0), np.float32)
        labels = _input(request, "point_labels")
        if coords.shape[-2] > self.max_points or labels is None or labels.shape[-1] != coords.shape[-2]:
            raise ValueError(f"send point_labels for each of at most {self.max_points} points "
                             f"(got {coords.shape[-2]} points, labels {None if labels is None else labels.shape})")
        mask_input = _input(request, "mask_input")
        has_mask = _input(request, "has_mask_input")
        box_only = labels is not None and not np.isin(labels, (0.0, 1.0)).any()  # no negative/positive click
        session = self.box_session if box_only and self.box_session is not None else self.session
        logits, iou = session.run(None, {
            "image_embedding": embedding,
            "point_coords": coords,
            "point_labels": labels,
            "mask_input": mask_input if mask_input is not None else np.zeros((1, 1, side, side), np.float32),
            "has_mask_input": has_mask.reshape(-1) if has_mask is not None else np.zeros((1,), np.float32),
        })
        return logits, iou

    def execute(self, requests):
        responses = []
        for request in requests:  # prompts differ in length per click; each request is decoded on its own
            try:
                logits, iou = self._decode(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("low_res_logits", logits.astype(np.float32)),
                    pb_utils.Tensor("iou_predictions", iou.astype(np.float32))]))
            except KeyError as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error.args[0]))))
            except Exception as error:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"sam_decoder: {error}")))
        return responses
