"""The agent's environment for training, batched: clicks in, the tool's masks out, in the model-input frame.

`Episodes` holds the pairs to play (targets and padding maps in the frame,
embeddings from the cache on demand); `ClickEnvironment` plays a batch.

GRPO scores several candidate actions per state with the tool in the loop,
and validation rolls whole episodes out; both need many decoder calls, so
this environment runs the tool's prompt decoder (torch) on a batch of
images at once, on cached embeddings. It follows the agent's protocol: all
clicks so far, the previous best low-res logits as `mask_input` (none on
the first step), best of the multimask candidates by predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..evaluation import Pair
from ..imaging.io import read_mask
from ..imaging.transform import Frame
from ..policies.lite_model import PolicyState, valid_region
from ..tools.base import LABEL_NEGATIVE, LABEL_POSITIVE
from ..tools.sam_model import PromptDecoder
from .click_sampling import prompt_tensors
from .embedding_cache import EmbeddingCache

__all__ = ["ClickEnvironment", "Candidate", "Episodes", "load_episodes"]


@dataclass
class Episodes:
    """Pairs ready for rollouts: frame targets and padding maps; cached features on demand."""

    pairs: list[Pair]
    targets: np.ndarray  # (N, S, S) bool
    valid: np.ndarray  # (N, S, S) bool

    def features(self, cache: EmbeddingCache, rows: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([cache.get(self.pairs[r].image) for r in rows]).astype(np.float32))


def load_episodes(pairs: list[Pair], size: int) -> Episodes:
    """The pairs with a non-empty target in the `size`-px model frame (empty ones give nothing to play)."""
    targets, valid, kept = [], [], []
    for pair in pairs:
        with Image.open(pair.image) as image:
            frame = Frame(image.height, image.width, size)
        target = frame.mask_to_input(read_mask(pair.mask, (frame.height, frame.width)))
        if target.any():
            kept.append(pair), targets.append(target), valid.append(valid_region(frame))
    return Episodes(kept, np.stack(targets), np.stack(valid))


@dataclass(frozen=True)
class Candidate:
    kind: str  # positive | negative | terminate
    x: float = 0.0  # continuous frame pixels
    y: float = 0.0


class ClickEnvironment:
    """Episodes for a batch of (embedding, target) pairs; rows are episodes."""

    def __init__(self, decoder: PromptDecoder, features: torch.Tensor, targets: np.ndarray, valid: np.ndarray):
        self.decoder = decoder.eval()
        self.features = features  # (B, C, G, G) float32
        self.targets = targets  # (B, S, S) bool
        self.valid = valid  # (B, S, S) bool
        batch, side = targets.shape[0], targets.shape[-1]
        self.masks = np.zeros_like(targets)
        self.logits = torch.zeros(batch, 1, side, side)
        self.has_logits = np.zeros(batch, bool)
        self.clicks: list[list[tuple[float, float, bool]]] = [[] for _ in range(batch)]
        self.steps = np.zeros(batch, int)
        self.done = np.zeros(batch, bool)

    def state(self, row: int) -> PolicyState:
        return PolicyState(self.masks[row], self.valid[row], tuple(self.clicks[row]), int(self.steps[row]))

    def iou(self, masks: np.ndarray, rows: list[int]) -> np.ndarray:
        targets = self.targets[rows]
        union = (masks | targets).sum(axis=(1, 2))
        return (masks & targets).sum(axis=(1, 2)) / np.maximum(union, 1)

    @torch.no_grad()
    def try_actions(self, rows: list[int], actions: list[Candidate]) -> tuple[np.ndarray, torch.Tensor]:
        """The masks and logits each (row, action) would give, without committing them."""
        masks = self.masks[rows].copy()
        logits = self.logits[rows].clone()
        clicking = [i for i, a in enumerate(actions) if a.kind != "terminate"]
        if clicking:
            points = []
            for i in clicking:
                prior = self.clicks[rows[i]] + [(actions[i].x, actions[i].y, actions[i].kind == "positive")]
                # SAM's prompt encoder takes pixel indices: continuous coordinates minus half a pixel.
                points.append([(x - 0.5, y - 0.5, LABEL_POSITIVE if p else LABEL_NEGATIVE) for x, y, p in prior])
            coords, labels = prompt_tensors(points)
            chosen_rows = [rows[i] for i in clicking]
            has_mask = torch.from_numpy(self.has_logits[chosen_rows].astype(np.float32))
            out, predicted = self.decoder(self.features[chosen_rows], coords, labels, self.logits[chosen_rows], has_mask)
            best = 1 + predicted[:, 1:].argmax(dim=1)
            picked = out[torch.arange(len(clicking)), best][:, None]
            logits[clicking] = picked
            masks[clicking] = picked[:, 0].numpy() > 0
        return masks, logits

    def commit(self, rows: list[int], actions: list[Candidate], masks: np.ndarray, logits: torch.Tensor) -> None:
        for i, row in enumerate(rows):
            self.steps[row] += 1
            if actions[i].kind == "terminate":
                self.done[row] = True
                continue
            self.clicks[row].append((actions[i].x, actions[i].y, actions[i].kind == "positive"))
            self.masks[row], self.logits[row], self.has_logits[row] = masks[i], logits[i], True
