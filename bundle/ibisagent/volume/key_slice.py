"""The key slice when the user gives none: a coarse sweep of the agent's first answer.

On a few evenly spaced slices the policy gets its first turn (the image and
the query) and the tool turns its first click into a mask. The chosen slice
is the one whose first mask the tool rates best (its predicted IoU, times
the mask's share of the largest first mask: a structure is best seen where
it is large). A first answer of Terminate counts as "not on this slice".
Works for every policy (no policy-specific confidence is needed); measured
against the largest-reference slice by `ibis evaluate-volumes` (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..agent import Agent
from ..policies.base import Policy
from ..prompting import PromptSet
from .slices import SliceEncoder

__all__ = ["KeySliceChoice", "choose_key_slice", "reference_key_slice", "sweep_slices"]

DEFAULT_SWEEP = 9


@dataclass(frozen=True)
class KeySliceChoice:
    index: int
    scores: dict[int, float]  # swept slice -> score (0: the policy terminated or the mask was empty)
    predicted_iou: dict[int, float]
    area: dict[int, int]

    def record(self) -> dict:
        return {"chosen": self.index, "rule": "predicted IoU x area / largest area, over a coarse sweep",
                "sweep": {str(k): {"score": round(self.scores[k], 4), "predicted_iou": round(self.predicted_iou[k], 4),
                                   "area_px": self.area[k]} for k in sorted(self.scores)}}


def sweep_slices(count: int, samples: int = DEFAULT_SWEEP) -> list[int]:
    """`samples` slices spread evenly inside the volume (the outermost slices rarely hold the structure best)."""
    if count <= samples:
        return list(range(count))
    positions = np.linspace(0, count - 1, samples + 2)[1:-1]
    return sorted({int(round(p)) for p in positions})


def choose_key_slice(encoder: SliceEncoder, policy: Policy, query: str, prompts: PromptSet | None = None,
                     samples: int = DEFAULT_SWEEP) -> KeySliceChoice:
    """Sweep, score each slice's first click, pick the best (the middle slice when none yields a mask)."""
    agent = Agent(encoder.tool, policy, prompts, max_turns=1)
    predicted, area = {}, {}
    for index in sweep_slices(encoder.volume.slice_count, samples):
        result = agent.run(encoder.rgb(index), query, embedding=encoder.embedding(index))
        turn = result.turns[0] if result.turns else None
        found = result.status.completed and result.clicks and turn is not None and turn.predicted_iou is not None
        predicted[index] = float(turn.predicted_iou) if found else 0.0
        area[index] = int(result.mask.sum()) if found else 0
    largest = max(area.values()) if area else 0
    scores = {k: predicted[k] * area[k] / largest if largest else 0.0 for k in predicted}
    if largest == 0:
        chosen = encoder.volume.slice_count // 2
    else:
        chosen = max(scores, key=lambda k: (scores[k], -abs(k - encoder.volume.slice_count / 2)))
    return KeySliceChoice(chosen, scores, predicted, area)


def reference_key_slice(reference: np.ndarray) -> int:
    """The oracle's key slice: the slice of largest reference area (N, H, W)."""
    areas = reference.sum(axis=(1, 2))
    if not areas.any():
        raise ValueError("the reference is empty: the oracle has nothing to segment")
    return int(np.argmax(areas))
