"""Any OpenAI-compatible chat-completions endpoint (vLLM serving the IBIS checkpoint, transformers serve, ...)."""

from __future__ import annotations

from .base import Message, Observation, Policy, PolicyError
from .chat import with_data_urls

__all__ = ["OpenAIPolicy"]


class OpenAIPolicy(Policy):
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", timeout: float = 60.0,
                 max_retries: int = 2, max_tokens: int = 512, temperature: float = 0.0):
        try:
            import openai
        except ImportError as error:
            raise PolicyError(f"the openai policy needs the 'openai' extra (pip install 'ibisagent[openai]'): {error}") from None
        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.options = {"max_tokens": max_tokens, "temperature": temperature}

    def act(self, observation: Observation, messages: list[Message]) -> str:
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=with_data_urls(messages), **self.options
            )
        except self._openai.APIError as error:
            raise PolicyError(f"chat endpoint {self.base_url} (model {self.model}): {error}") from None
        if not response.choices:
            raise PolicyError(f"chat endpoint {self.base_url} returned no choices")
        return response.choices[0].message.content or ""
