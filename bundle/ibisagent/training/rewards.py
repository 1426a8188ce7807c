"""The fine-grained GRPO rewards of IBISAgent, one function per term.

Five terms score one agent step (the reference combines them as a plain
mean): the answer's format, the IoU level reached, whether the IoU went up,
whether a click landed in the region it should correct, and the trajectory
length so far. Both `Terminate` and the reference's `Termination` spelling
count as a valid stop.

The reference does not say how Terminate scores on click placement; here it
counts as well placed when the mask it keeps is already at the top IoU level
(`terminate_good_iou`), and as misplaced otherwise: stopping early costs the
same as a click in the wrong place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..clicks import normalised_to_pixel
from ..metrics import iou
from ..protocol import ActionKind, check_strict, parse_response

__all__ = ["REWARD_TERMS", "RewardConfig", "StepOutcome", "step_rewards", "combine",
           "format_reward", "iou_level_reward", "iou_increase_reward", "click_placement_reward", "length_reward"]

REWARD_TERMS = ("format", "iou_level", "iou_increase", "click_placement", "length")


@dataclass(frozen=True)
class RewardConfig:
    iou_levels: tuple[tuple[float, float], ...] = ((0.8, 3.0), (0.7, 2.0), (0.5, 1.0))  # (IoU above, reward)
    optimal_steps: int = 5
    extra_step_penalty: float = 0.2
    terminate_good_iou: float = 0.8
    weights: dict[str, float] = field(default_factory=lambda: {term: 1.0 for term in REWARD_TERMS})

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(REWARD_TERMS)
        if unknown:
            raise ValueError(f"unknown reward terms {sorted(unknown)}; known: {', '.join(REWARD_TERMS)}")
        if sum(self.weights.values()) <= 0:
            raise ValueError("reward weights must sum to a positive number")
        if self.optimal_steps < 1:
            raise ValueError("optimal_steps must be at least 1")


@dataclass(frozen=True)
class StepOutcome:
    """One step of a trajectory as the rewards see it (masks in one frame, bool)."""

    response: str  # the policy's raw text for this step
    previous_mask: np.ndarray
    mask: np.ndarray  # after the action (unchanged for Terminate or an unusable answer)
    target: np.ndarray
    step: int  # 1-based index of this action in its trajectory


def format_reward(response: str) -> float:
    """1 when think, action and answer are all in the exact protocol format, else 0."""
    return 0.0 if check_strict(response) else 1.0


def iou_level_reward(mask: np.ndarray, target: np.ndarray, config: RewardConfig = RewardConfig()) -> float:
    value = iou(mask, target)
    for threshold, reward in config.iou_levels:
        if value > threshold:
            return reward
    return 0.0


def iou_increase_reward(previous_mask: np.ndarray, mask: np.ndarray, target: np.ndarray) -> float:
    return 1.0 if iou(mask, target) > iou(previous_mask, target) else 0.0


def click_placement_reward(response: str, previous_mask: np.ndarray, target: np.ndarray,
                           config: RewardConfig = RewardConfig()) -> float:
    """+1 for a positive click on missed target or a negative click on a false positive, else -1."""
    action = parse_response(response).action
    if action is None:
        return -1.0
    if action.kind is ActionKind.TERMINATE:
        return 1.0 if iou(previous_mask, target) >= config.terminate_good_iou else -1.0
    row, col = normalised_to_pixel(action.x, action.y, target.shape)
    previous, wanted = bool(previous_mask[row, col]), bool(target[row, col])
    corrects = (wanted and not previous) if action.kind is ActionKind.POSITIVE else (previous and not wanted)
    return 1.0 if corrects else -1.0


def length_reward(step: int, config: RewardConfig = RewardConfig()) -> float:
    """1 up to the optimal number of steps, then `extra_step_penalty` less per step beyond it."""
    return 1.0 if step <= config.optimal_steps else -config.extra_step_penalty * (step - config.optimal_steps)


def step_rewards(outcome: StepOutcome, config: RewardConfig = RewardConfig()) -> dict[str, float]:
    """Every term for one step, by name (log them all; combine with `combine`)."""
    if outcome.mask.shape != outcome.target.shape or outcome.previous_mask.shape != outcome.target.shape:
        raise ValueError(f"mask shapes differ: {outcome.previous_mask.shape}, {outcome.mask.shape}, "
                         f"{outcome.target.shape}")
    return {
        "format": format_reward(outcome.response),
        "iou_level": iou_level_reward(outcome.mask, outcome.target, config),
        "iou_increase": iou_increase_reward(outcome.previous_mask, outcome.mask, outcome.target),
        "click_placement": click_placement_reward(outcome.response, outcome.previous_mask, outcome.target, config),
        "length": length_reward(outcome.step, config),
    }


def combine(terms: dict[str, float], config: RewardConfig = RewardConfig()) -> float:
    """The weighted mean of the terms (the reference: all weights 1, a plain mean)."""
    total = sum(config.weights.get(name, 0.0) for name in terms)
    return sum(config.weights.get(name, 0.0) * value for name, value in terms.items()) / total
