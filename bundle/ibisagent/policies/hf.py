"""A Qwen2.5-VL / Qwen2-VL checkpoint from a local folder, run with transformers."""

from __future__ import annotations

from pathlib import Path

from .base import Message, Observation, Policy, PolicyError
from .chat import split_images

__all__ = ["HFPolicy"]


class HFPolicy(Policy):
    name = "hf"

    def __init__(self, model_path: str | Path, max_new_tokens: int = 256, device: str = "cpu",
                 dtype: str = "auto", do_sample: bool = False, temperature: float = 1.0):
        try:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as error:
            raise PolicyError(f"the hf policy needs the 'hf' extra (pip install 'ibisagent[hf]'): {error}") from None
        path = Path(model_path)
        if not path.is_dir():
            raise PolicyError(f"hf policy: model folder {path} does not exist")
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as error:
            raise PolicyError(f"hf policy: cannot load {path}: {error}") from None
        self.model.to(device).eval()
        self._torch = torch
        self.generation = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            self.generation["temperature"] = temperature

    def act(self, observation: Observation, messages: list[Message]) -> str:
        chat, images = split_images(messages)
        prompt = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt").to(self.model.device)
        with self._torch.inference_mode():
            output = self.model.generate(**inputs, **self.generation)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0]
