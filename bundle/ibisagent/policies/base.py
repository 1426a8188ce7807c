"""The policy interface: given the conversation so far, answer with protocol text."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..confidence import MaskConfidence
    from ..tools.base import Click, ImageEmbedding

__all__ = ["Message", "Observation", "Policy", "PolicyError"]

# A chat message in the OpenAI layout; image parts carry an RGB uint8 array:
# {"role": "user", "content": [{"type": "image", "image": array}, {"type": "text", "text": "..."}]}
Message = dict[str, Any]


class PolicyError(RuntimeError):
    """A policy could not produce an answer (server unreachable, model failure)."""


@dataclass(frozen=True)
class Observation:
    image: np.ndarray  # the original RGB uint8 image
    view: np.ndarray  # what the policy is shown: the image, or the mask overlaid on it
    mask: np.ndarray  # current mask (H, W) bool
    query: str
    turn: int  # 0-based
    clicks: tuple[Click, ...] = ()  # the clicks so far, in order
    embedding: ImageEmbedding | None = None  # the tool's embedding of `image`, for policies that reuse it
    predicted_ious: tuple[float, ...] = ()  # the tool's own IoU estimate of its mask after each click, in order


class Policy(ABC):
    name: str = "policy"

    def reset(self, image: np.ndarray, query: str) -> None:
        """Called once per image before the first turn."""

    @abstractmethod
    def act(self, observation: Observation, messages: list[Message]) -> str:
        """The raw answer text for this turn. Raise PolicyError when no answer can be had."""

    def confidence(self, observation: Observation) -> MaskConfidence | None:
        """The policy's own confidence in the final mask (`observation` after the last turn); None when it has
        none, and the agent uses the tool's estimate."""
        return None
