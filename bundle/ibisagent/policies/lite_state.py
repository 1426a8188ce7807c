"""IBIS-lite's state and actions without torch: what training and inference (torch or onnxruntime) share.

The network (`lite_model.LitePolicyNet`) reads what `state_arrays` builds
from a decision point and scores one categorical action space: a positive or
a negative click on any cell of the embedding grid, or Terminate. Everything
here is numpy, so the onnxruntime policy (`lite.py`) runs without torch and
training (`lite_model.state_tensors`) sees exactly the same arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..imaging.transform import Frame

__all__ = ["LiteConfig", "PolicyState", "STATE_CHANNELS", "state_arrays", "pool_embedding_array", "decode_action",
           "valid_region", "cell_to_frame_xy", "frame_xy_to_cell", "action_probabilities", "greedy_action"]

STATE_CHANNELS = 4  # mask, image area (not padding), positive clicks, negative clicks


@dataclass(frozen=True)
class LiteConfig:
    embedding_channels: int = 256
    grid: int = 64  # the embedding grid; actions are cells of it
    frame_size: int = 256  # the tool's model-input side
    query_dim: int = 384
    width: int = 48
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    max_steps: int = 10  # step feature scale (the agent's usual turn budget)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PolicyState:
    """One decision point, in the tool's model-input frame."""

    mask: np.ndarray  # (S, S) bool: the current mask
    valid: np.ndarray  # (S, S) bool: inside the resized image (not padding)
    clicks: Sequence[tuple[float, float, bool]]  # (x, y, positive) in frame pixels
    step: int  # 0-based turn index


def frame_xy_to_cell(x: float, y: float, config: LiteConfig) -> tuple[int, int]:
    """(row, col) of the grid cell holding a frame-pixel coordinate."""
    cell = config.frame_size / config.grid
    return (min(max(int(y // cell), 0), config.grid - 1), min(max(int(x // cell), 0), config.grid - 1))


def cell_to_frame_xy(row: int, col: int, config: LiteConfig) -> tuple[float, float]:
    """The centre of a grid cell in frame pixels (continuous coordinates)."""
    cell = config.frame_size / config.grid
    return (col + 0.5) * cell, (row + 0.5) * cell


def decode_action(index: int, config: LiteConfig) -> tuple[str, float, float]:
    """An action index -> ("positive" | "negative" | "terminate", frame x, frame y)."""
    cells = config.grid * config.grid
    if index >= 2 * cells:
        return "terminate", 0.0, 0.0
    kind = "positive" if index < cells else "negative"
    row, col = divmod(index % cells, config.grid)
    x, y = cell_to_frame_xy(row, col, config)
    return kind, x, y


def valid_region(frame: Frame) -> np.ndarray:
    """(S, S) bool: the part of the model input that holds the image, not padding."""
    rows, cols = frame.resized
    valid = np.zeros((frame.input_size, frame.input_size), bool)
    valid[:rows, :cols] = True
    return valid


def _pool(mask: np.ndarray, grid: int) -> np.ndarray:
    side = mask.shape[0]
    return mask.reshape(grid, side // grid, grid, side // grid).mean(axis=(1, 3)).astype(np.float32)


def state_arrays(states: Sequence[PolicyState], config: LiteConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per state: (4, G, G) maps, the step feature (1,), and the click cells ruled out (G*G*2,) bool.

    Ruled out: padding, cells clicked before (the agent would repeat itself),
    positive clicks on fully covered cells and negative clicks off the mask.
    """
    grid = config.grid
    maps = np.zeros((len(states), STATE_CHANNELS, grid, grid), np.float32)
    steps = np.zeros((len(states), 1), np.float32)
    blocked = np.zeros((len(states), 2, grid, grid), bool)
    for index, state in enumerate(states):
        maps[index, 0] = _pool(state.mask, grid)
        valid = _pool(state.valid, grid)
        maps[index, 1] = valid
        for x, y, positive in state.clicks:
            row, col = frame_xy_to_cell(x, y, config)
            maps[index, 2 if positive else 3, row, col] = 1.0
            blocked[index, :, row, col] = True  # never click a cell twice: the agent would repeat itself
        blocked[index, :, valid < 0.5] = True
        # A positive click only helps where the mask is not complete, a negative one only where there is mask.
        blocked[index, 0, maps[index, 0] >= 1.0] = True
        blocked[index, 1, maps[index, 0] <= 0.0] = True
        steps[index, 0] = min(state.step / config.max_steps, 1.0)
    return maps, steps, blocked.reshape(len(states), -1)


def pool_embedding_array(features: np.ndarray) -> np.ndarray:
    """(B, C, G, G) -> (B, C, G/2, G/2) float32, 2x2 means: `lite_model.pool_embedding` in numpy.

    Summed in a fixed order (as triton_models/sam_encoder does for served
    embeddings), so the policy reads the same numbers in process and served.
    """
    x = np.asarray(features, np.float32)
    return ((x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2])
            / np.float32(4.0)).astype(np.float32)


def action_probabilities(logits: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """(B, A) action probabilities with blocked click cells removed (Terminate is always allowed).

    `lite_model.action_distribution`'s probabilities, in numpy: a blocked cell
    gets the same large negative logit (-1e9), then a softmax.
    """
    allowed = np.concatenate([~blocked, np.ones_like(blocked[:, :1])], axis=1)
    masked = np.where(allowed, logits, np.float32(-1e9)).astype(np.float64)
    masked -= masked.max(axis=1, keepdims=True)
    weights = np.exp(masked)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def greedy_action(probabilities: np.ndarray, may_stop: bool) -> int:
    """The likeliest action of one state (1, A); a click while `may_stop` is false (`lite_model.greedy_actions`)."""
    return int(np.argmax(probabilities[0] if may_stop else probabilities[0, :-1]))
