"""Triton python-backend model: SAM-family image encoder on onnxruntime.

Self-contained (numpy, onnxruntime, Triton's utilities) so the same folder runs
in NVIDIA's Triton container. A request that names an `image_key` also hands
the embedding to the decoder model (BLS, inside the server), so the client
need not download the 4 MiB embedding nor upload it with every click. The
optional `pooled_embedding` output is what a policy reading the embedding
(IBIS-lite) needs, once per image: the embedding's 2x2 means (1 MiB).
"""

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config, key, default=""):
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def ort_session(config, version_dir):
    """An onnxruntime session from the config's onnx_model, providers (or $IBIS_ORT_PROVIDERS) and threads."""
    path = Path(_parameter(config, "onnx_model"))
    path = path if path.is_absolute() else version_dir / path
    if not path.is_file():
        raise pb_utils.TritonModelException(f"{config['name']}: ONNX graph {path} missing; `ibis serve` exports it")
    providers = os.environ.get("IBIS_ORT_PROVIDERS") or _parameter(config, "providers", "CPUExecutionProvider")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "0"))
    return ort.InferenceSession(str(path), options, providers=[p.strip() for p in providers.split(",") if p.strip()])


def pooled(embeddings):
    """(B, C, G, G) -> (B, C, G/2, G/2) float32 2x2 means, summed in the order torch's avg_pool2d and the
    client's `lite_state.pool_embedding_array` use, so all three give the same numbers."""
    return ((embeddings[..., 0::2, 0::2] + embeddings[..., 0::2, 1::2] + embeddings[..., 1::2, 0::2]
             + embeddings[..., 1::2, 1::2]) / np.float32(4.0)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.session = ort_session(self.config, version_dir)
        manifest_path = version_dir / "tool.json"
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            declared = (_parameter(self.config, "input_size"), _parameter(self.config, "normalisation"))
            exported = (str(manifest["input_size"]), manifest["normalisation"])
            if declared != exported:
                raise pb_utils.TritonModelException(
                    f"sam_encoder: config declares input_size/normalisation {declared}, the export {exported}")
        self.decoder_model = _parameter(self.config, "decoder_model", "sam_decoder")

    def _store(self, key, embedding):
        """Hand one embedding to the decoder model's resident cache."""
        request = pb_utils.InferenceRequest(
            model_name=self.decoder_model, requested_output_names=["iou_predictions"],
            inputs=[pb_utils.Tensor("image_key", np.array([[key]], dtype=np.object_)),
                    pb_utils.Tensor("image_embedding", embedding[None])])
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"storing the embedding in {self.decoder_model}: "
                                                f"{response.error().message()}")

    def execute(self, requests):
        responses = []
        for request in requests:  # the graph takes batch 1; each request holds one or more images
            try:
                images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                embeddings = np.concatenate([self.session.run(None, {"image": image[None]})[0] for image in images])
                key_tensor = pb_utils.get_input_tensor_by_name(request, "image_key")
                keys = key_tensor.as_numpy().reshape(-1) if key_tensor is not None else [b""] * len(images)
                if any(len(key) > 64 for key in keys):
                    raise ValueError("image_key: at most 64 bytes are accepted")
                for key, embedding in zip(keys, embeddings):
                    if key:
                        self._store(key, embedding)
                wanted = request.requested_output_names()
                outputs = []
                if "image_embedding" in wanted:
                    outputs.append(pb_utils.Tensor("image_embedding", embeddings.astype(np.float32)))
                if "embedding_key" in wanted:
                    outputs.append(pb_utils.Tensor("embedding_key", np.array(keys, dtype=np.object_).reshape(-1, 1)))
                if "pooled_embedding" in wanted:
                    outputs.append(pb_utils.Tensor("pooled_embedding", pooled(embeddings.astype(np.float32))))
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as error:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"sam_encoder: {error}")))
        return responses
