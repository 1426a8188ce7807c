"""The paper's simulated annotator as a policy: it sees the ground truth and clicks the largest error."""

from __future__ import annotations

import numpy as np

from ..clicks import next_click
from ..metrics import iou
from ..protocol import Action, format_response
from .base import Message, Observation, Policy

__all__ = ["OraclePolicy"]


class OraclePolicy(Policy):
    """Clicks until the mask reaches `target_iou` (then Terminate). Needs the target mask."""

    name = "oracle"

    def __init__(self, ground_truth: np.ndarray, target_iou: float = 0.9):
        if not 0.0 < target_iou <= 1.0:
            raise ValueError(f"target_iou must be in (0, 1], got {target_iou}")
        self.ground_truth = np.asarray(ground_truth).astype(bool)
        self.target_iou = target_iou

    def act(self, observation: Observation, messages: list[Message]) -> str:
        if observation.mask.shape != self.ground_truth.shape:
            raise ValueError(f"ground truth {self.ground_truth.shape} does not match image {observation.mask.shape}")
        current = iou(observation.mask, self.ground_truth)
        if observation.turn > 0 and current >= self.target_iou:
            think = f"Oracle: IoU with the reference is {current:.3f}, at or above the target {self.target_iou:.2f}."
            return format_response(Action.terminate(), think)
        click, errors = next_click(observation.mask, self.ground_truth)
        if click is None:
            return format_response(Action.terminate(), "Oracle: the mask equals the reference.")
        action = Action.positive(click.x, click.y) if click.positive else Action.negative(click.x, click.y)
        region = "missed target" if click.positive else "wrongly covered"
        think = (f"Oracle: IoU {current:.3f}; {errors.false_negative} px missed, {errors.false_positive} px "
                 f"wrongly covered. Clicking the centre of the largest {region} region.")
        return format_response(action, think)
