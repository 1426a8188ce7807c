"""The MLLM policy served by Triton: `ibis_mllm` (transformers on CPU) or its vLLM-backend variant, over gRPC.

Both take the interface of Triton's vLLM backend: a rendered prompt, base64
images, JSON sampling parameters, and answer `text_output` from a decoupled
model. vLLM's Triton backend applies no chat template, so the prompt is
rendered here in the Qwen2-VL / Qwen2.5-VL chat format (the format of the
IBIS checkpoint and of the `hf` policy's template), one image placeholder per
image, which each server expands to the image's tokens.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from ..policies.base import Message, Observation, Policy, PolicyError
from .grpc_client import ServerError, TritonCaller

__all__ = ["TritonMLLMPolicy", "render_qwen_chat"]

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def render_qwen_chat(messages: list[Message]) -> tuple[str, list[np.ndarray]]:
    """The Qwen2-VL chat prompt (with the assistant's turn opened) and the images in prompt order."""
    parts, images = [], []
    for message in messages:
        parts.append(f"<|im_start|>{message['role']}\n")
        for part in message["content"]:
            if part["type"] == "image":
                parts.append(IMAGE_PLACEHOLDER)
                images.append(np.asarray(part["image"], np.uint8))
            else:
                parts.append(part["text"])
        parts.append("<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts), images


def _png_base64(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless: the server sees the exact pixels
    return base64.b64encode(buffer.getvalue())


class TritonMLLMPolicy(Policy):
    name = "triton"

    def __init__(self, server: str, model: str = "ibis_mllm", timeout: float = 120.0, retries: int = 2,
                 max_tokens: int = 512, temperature: float = 0.0):
        try:
            self.caller = TritonCaller(server, timeout, retries)
            self.caller.model_config(model)  # unknown or not-ready models fail here, named
        except ImportError as error:
            raise PolicyError(f"the triton policy needs the 'serve' extra (pip install 'ibisagent[serve]'): "
                              f"{error}") from None
        except ServerError as error:
            raise PolicyError(str(error)) from None
        self.model = model
        self.sampling = json.dumps({"max_tokens": max_tokens, "temperature": temperature})

    def act(self, observation: Observation, messages: list[Message]) -> str:
        prompt, images = render_qwen_chat(messages)
        inputs = {
            "text_input": np.array([prompt.encode("utf-8")], dtype=np.object_),
            "sampling_parameters": np.array([self.sampling.encode()], dtype=np.object_),
            "exclude_input_in_output": np.array([True]),
            "stream": np.array([False]),
        }
        if images:
            inputs["image"] = np.array([_png_base64(image) for image in images], dtype=np.object_)
        try:
            responses = self.caller.infer_decoupled(self.model, inputs, ["text_output"])
        except ServerError as error:
            raise PolicyError(str(error)) from None
        return "".join(bytes(item).decode("utf-8") for response in responses
                       for item in response["text_output"].reshape(-1))
