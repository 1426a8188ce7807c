"""Triton python-backend model: a Qwen2.5-VL checkpoint with transformers, behind the vLLM backend's interface.

The prompt arrives rendered (as vLLM's Triton backend expects it); images
arrive base64-encoded. Request text and images are never logged: they may
carry patient information.
"""

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

# Request bounds: the agent sends a few thousand characters and one image a turn (20 with --history).
MAX_PROMPT_CHARS = 200_000
MAX_IMAGES = 32
MAX_IMAGE_BYTES = 32 << 20
MAX_NEW_TOKENS = 4096

def _setting(config, key, variable, default=""):
    """An environment variable, else the config parameter, else the default."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "")
    return os.environ.get(variable) or value or default


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = _setting(config, "model_path", "IBIS_MLLM_PATH")
        if not path:
            raise pb_utils.TritonModelException("ibis_mllm: no checkpoint; set parameter model_path or IBIS_MLLM_PATH")
        path = Path(path) if Path(path).is_absolute() else Path(args["model_repository"]) / args["model_version"] / path
        if not path.is_dir():
            raise pb_utils.TritonModelException(f"ibis_mllm: checkpoint folder {path} does not exist")
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, dtype=_setting(config, "dtype", "IBIS_MLLM_DTYPE", "auto"))
        self.model.to(_setting(config, "device", "IBIS_MLLM_DEVICE", "cpu")).eval()

    def _generation(self, request):
        raw = _input(request, "sampling_parameters")
        parameters = json.loads(raw.reshape(-1)[0]) if raw is not None else {}
        temperature = float(parameters.get("temperature", 1.0))
        max_tokens = int(parameters.get("max_tokens", 16))
        if not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_tokens must be in 1..{MAX_NEW_TOKENS}, got {max_tokens}")
        options = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            options["temperature"] = temperature
            for key in ("top_p", "top_k"):
                if key in parameters:
                    options[key] = parameters[key]
        if "seed" in parameters:
            torch.manual_seed(int(parameters["seed"]))
        return options

    def _answer(self, request):
        prompt = _input(request, "text_input").reshape(-1)[0].decode("utf-8")
        encoded = _input(request, "image")
        encoded = encoded.reshape(-1) if encoded is not None else []
        if len(prompt) > MAX_PROMPT_CHARS or len(encoded) > MAX_IMAGES:
            raise ValueError(f"at most {MAX_PROMPT_CHARS} prompt characters and {MAX_IMAGES} images per request "
                             f"(got {len(prompt)} and {len(encoded)})")
        if any(len(item) > MAX_IMAGE_BYTES for item in encoded):
            raise ValueError(f"an image of more than {MAX_IMAGE_BYTES} bytes (base64)")
        images = [Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB") for item in encoded]
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self._generation(request))
        text = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        exclude = _input(request, "exclude_input_in_output")
        return text if exclude is not None and bool(exclude.reshape(-1)[0]) else prompt + text

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                text = self._answer(request)
                response = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))])
            except Exception as error:  # the client gets the reason; the server keeps serving
                response = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ibis_mllm: {type(error).__name__}: {error}"))
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
