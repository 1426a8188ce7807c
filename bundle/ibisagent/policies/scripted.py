"""Replay given answer texts, one per turn: for tests and for reproducing a logged session."""

from __future__ import annotations

from typing import Sequence

from .base import Message, Observation, Policy

__all__ = ["ScriptedPolicy"]


class ScriptedPolicy(Policy):
    name = "scripted"

    def __init__(self, responses: Sequence[str], when_exhausted: str = "<think>Script finished.</think><action>Terminate</action>"):
        self.responses = list(responses)
        self.when_exhausted = when_exhausted
        self._next = 0

    def reset(self, image, query) -> None:
        self._next = 0

    def act(self, observation: Observation, messages: list[Message]) -> str:
        if self._next >= len(self.responses):
            return self.when_exhausted
        text = self.responses[self._next]
        self._next += 1
        return text
