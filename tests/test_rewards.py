"""The five GRPO reward terms on hand-made masks and answers."""

from __future__ import annotations

import numpy as np
import pytest

from ibisagent.training.rewards import (
    RewardConfig, StepOutcome, click_placement_reward, combine, format_reward, iou_increase_reward, iou_level_reward,
    length_reward, step_rewards,
)

THINK = "<think>The lower part is missing.</think>\n"


def _square(top: int, left: int, size: int, shape: tuple[int, int] = (10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


TARGET = _square(0, 0, 6)  # rows 0-5, cols 0-5: 36 px


def test_format_accepts_both_terminate_spellings_and_rejects_loose_text():
    assert format_reward(THINK + "<action>Positive Point (0.2500, 0.7500)</action>") == 1.0
    assert format_reward(THINK + "<action>Terminate</action>") == 1.0
    assert format_reward(THINK + "<action>Termination</action>\n<answer>the liver</answer>") == 1.0
    assert format_reward("<action>Positive Point (0.2500, 0.7500)</action>") == 0.0  # no think
    assert format_reward(THINK + "<action>positive point (0.25, 0.75)</action>") == 0.0  # not canonical
    assert format_reward(THINK + "<action>Positive Point (1.2500, 0.7500)</action>") == 0.0  # outside the image
    assert format_reward(THINK + "<action>Positive Point (0.2500, 0.7500)</action>\n<answer>x</answer>") == 0.0


def test_iou_level_each_band():
    # IoU 0.81, 0.75, 0.60 and 0.50: strictly above a threshold earns its level.
    target = np.zeros((1, 100), bool)
    target[0, :100] = True
    for covered, expected in [(81, 3.0), (75, 2.0), (60, 1.0), (50, 0.0)]:
        prediction = np.zeros_like(target)
        prediction[0, :covered] = True
        assert iou_level_reward(prediction, target) == expected, covered


def test_iou_increase_is_strict():
    before, after = _square(0, 0, 3), _square(0, 0, 5)
    assert iou_increase_reward(before, after, TARGET) == 1.0
    assert iou_increase_reward(after, before, TARGET) == 0.0
    assert iou_increase_reward(after, after, TARGET) == 0.0


def test_click_placement_by_region():
    previous = _square(0, 0, 3)  # covers rows/cols 0-2 of the target
    # (x, y) normalised; pixel = (int(y*10), int(x*10))
    missed = THINK + "<action>Positive Point (0.5500, 0.5500)</action>"  # (5, 5): target, not yet covered
    covered = THINK + "<action>Positive Point (0.1500, 0.1500)</action>"  # (1, 1): already in the mask
    outside = THINK + "<action>Positive Point (0.9500, 0.9500)</action>"  # (9, 9): background
    assert click_placement_reward(missed, previous, TARGET) == 1.0
    assert click_placement_reward(covered, previous, TARGET) == -1.0
    assert click_placement_reward(outside, previous, TARGET) == -1.0
    spill = _square(0, 0, 8)  # covers background at (7, 7)
    assert click_placement_reward(THINK + "<action>Negative Point (0.7500, 0.7500)</action>", spill, TARGET) == 1.0
    assert click_placement_reward(THINK + "<action>Negative Point (0.2500, 0.2500)</action>", spill, TARGET) == -1.0
    assert click_placement_reward("nothing to parse", previous, TARGET) == -1.0


def test_terminate_placement_depends_on_the_mask_it_keeps():
    assert click_placement_reward(THINK + "<action>Terminate</action>", TARGET, TARGET) == 1.0
    assert click_placement_reward(THINK + "<action>Termination</action>", _square(0, 0, 2), TARGET) == -1.0


def test_length_reward_after_the_optimal_steps():
    assert [length_reward(step) for step in (1, 5, 6, 8)] == pytest.approx([1.0, 1.0, -0.2, -0.6])
    assert length_reward(3, RewardConfig(optimal_steps=2, extra_step_penalty=0.5)) == pytest.approx(-0.5)


def test_step_rewards_and_reference_mean():
    outcome = StepOutcome(THINK + "<action>Positive Point (0.5500, 0.5500)</action>", _square(0, 0, 3), TARGET,
                          TARGET, step=2)
    terms = step_rewards(outcome)
    assert terms == {"format": 1.0, "iou_level": 3.0, "iou_increase": 1.0, "click_placement": 1.0, "length": 1.0}
    assert combine(terms) == pytest.approx(7.0 / 5.0)
    weighted = RewardConfig(weights={"format": 0.0, "iou_level": 1.0, "iou_increase": 0.0, "click_placement": 0.0,
                                     "length": 0.0})
    assert combine(terms, weighted) == pytest.approx(3.0)


def test_bad_configuration_and_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown reward terms"):
        RewardConfig(weights={"fromat": 1.0})
    with pytest.raises(ValueError, match="shapes differ"):
        step_rewards(StepOutcome(THINK + "<action>Terminate</action>", np.zeros((4, 4), bool), TARGET, TARGET, 1))
