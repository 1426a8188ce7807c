"""Supervised states for IBIS-lite, built from trajectory files.

Each trajectory step k gives one decision point: the mask and clicks before
step k, and the annotator's click k as the answer; a trajectory that reached
its target IoU (or left nothing to correct) adds a final Terminate. The
annotator clicks the deepest point of the larger error region, but any deep
point of that region is as good a click, so half of each target's weight
goes to the annotator's cell and half is spread over the region, deeper
cells weighing more.

Both query records of a pair share one simulation; each state keeps the
pair's label, and the trainer draws a query for it from every wording the
query file has for that label.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from ...imaging.io import read_mask
from ...imaging.transform import Frame
from ...policies.lite_model import LiteConfig, PolicyState, frame_xy_to_cell, state_tensors, valid_region
from ..trajectories import decode_mask, read_trajectories

__all__ = ["StateSet", "action_target", "assemble_states", "build_states", "label_queries", "normalised_to_frame"]


def normalised_to_frame(x: float, y: float, frame: Frame) -> tuple[float, float]:
    """Normalised image coordinates to continuous model-input pixels."""
    return x * frame.width * frame.scale, y * frame.height * frame.scale


@dataclass
class StateSet:
    images: list[str]  # image paths; `image_index` points here
    labels: list[str]
    image_index: np.ndarray  # (N,)
    label_index: np.ndarray  # (N,)
    sources: list[str]  # per state
    maps: torch.Tensor  # (N, 4, G, G) float16
    steps: torch.Tensor  # (N, 1)
    blocked: torch.Tensor  # (N, 2*G*G) bool
    targets: torch.Tensor  # (N, 2*G*G + 1) float16, sums to 1

    def __len__(self) -> int:
        return len(self.image_index)

    @staticmethod
    def join(sets: list[StateSet]) -> StateSet:
        """The sets as one, image and label indices remapped to the union of their lists."""
        images = sorted({p for part in sets for p in part.images})
        labels = sorted({l for part in sets for l in part.labels})
        image_ids, label_ids = {p: i for i, p in enumerate(images)}, {l: i for i, l in enumerate(labels)}
        return StateSet(
            images, labels,
            np.concatenate([np.asarray([image_ids[part.images[i]] for i in part.image_index], np.int64)
                            for part in sets]),
            np.concatenate([np.asarray([label_ids[part.labels[i]] for i in part.label_index], np.int64)
                            for part in sets]),
            [source for part in sets for source in part.sources], torch.cat([part.maps for part in sets]),
            torch.cat([part.steps for part in sets]), torch.cat([part.blocked for part in sets]),
            torch.cat([part.targets for part in sets]))


def _region_weights(region: np.ndarray, grid: int) -> np.ndarray:
    """(G, G) weights over an error region: deeper cells weigh more; zeros when the region vanishes at G."""
    side = region.shape[0]
    pooled = region.reshape(grid, side // grid, grid, side // grid).mean(axis=(1, 3)) >= 0.5
    if not pooled.any():
        return np.zeros((grid, grid), np.float32)
    depth = ndimage.distance_transform_edt(np.pad(pooled, 1))[1:-1, 1:-1]
    weights = (depth / depth.max()) ** 2
    return (weights / weights.sum()).astype(np.float32)


def action_target(state_mask: np.ndarray, truth: np.ndarray, click: tuple[float, float, bool] | None,
                  config: LiteConfig, region_share: float) -> np.ndarray:
    """The SFT target of one annotator action (a frame-pixel click, or None for Terminate)."""
    cells = config.grid * config.grid
    target = np.zeros(2 * cells + 1, np.float32)
    if click is None:
        target[-1] = 1.0
        return target
    x, y, positive = click
    row, col = frame_xy_to_cell(x, y, config)
    offset = 0 if positive else cells
    region = (truth & ~state_mask) if positive else (state_mask & ~truth)
    spread = _region_weights(region, config.grid)
    share = region_share if spread.any() else 0.0
    target[offset:offset + cells] = share * spread.ravel()
    target[offset + row * config.grid + col] += 1.0 - share
    return target


def build_states(trajectory_files: list[str | Path], config: LiteConfig, region_share: float = 0.5,
                 limit: int | None = None) -> StateSet:
    """Every decision point of the trajectories (one simulation per image and label)."""
    pairs: dict[tuple[str, str], dict] = {}
    for path in trajectory_files:
        for record in read_trajectories(path):
            pairs.setdefault((record["image"], record["label"]), record)
    records = list(pairs.values())[:limit]
    states, targets, images, labels, sources = [], [], [], [], []
    for record in tqdm(records, desc="states", unit="trajectory"):
        height, width = record["image_size"]
        frame = Frame(height, width, config.frame_size)
        truth = frame.mask_to_input(read_mask(record["mask"], (height, width)))
        valid = valid_region(frame)
        mask = np.zeros_like(truth)
        clicks: list[tuple[float, float, bool]] = []
        steps = record["steps"]
        finished = record["stop"] in ("target_iou", "no_error")
        for k in range(len(steps) + 1):
            if k < len(steps):
                click = steps[k]["click"]
                action = (*normalised_to_frame(click["x_norm"], click["y_norm"], frame), click["positive"])
            elif finished:
                action = None  # Terminate
            else:
                break
            states.append(PolicyState(mask, valid, tuple(clicks), k))
            targets.append(action_target(mask, truth, action, config, region_share))
            images.append(record["image"]), labels.append(record["label"]), sources.append(record["source"])
            if action is not None:
                clicks.append(action)
                mask = frame.mask_to_input(decode_mask(steps[k]["mask"]))
    return assemble_states(states, targets, images, labels, sources, config)


def assemble_states(states: list[PolicyState], targets: list[np.ndarray], images: list[str], labels: list[str],
                    sources: list[str], config: LiteConfig) -> StateSet:
    """Decision points with their targets (one image, label and source each) as a training set."""
    image_list, label_list = sorted(set(images)), sorted(set(labels))
    image_ids, label_ids = {p: i for i, p in enumerate(image_list)}, {l: i for i, l in enumerate(label_list)}
    maps, step_features, blocked = state_tensors(states, config)
    target_tensor = torch.from_numpy(np.stack(targets))
    # A target on a blocked cell (the annotator clicked a cell twice) cannot be learned: drop and renormalise.
    target_tensor[:, :-1][blocked] = 0.0
    target_tensor = target_tensor / target_tensor.sum(dim=1, keepdim=True).clamp(min=1e-8)
    keep = (target_tensor.sum(dim=1) > 0.5).numpy()
    return StateSet(image_list, label_list, np.asarray([image_ids[p] for p in images], np.int64)[keep],
                    np.asarray([label_ids[l] for l in labels], np.int64)[keep],
                    [s for s, k in zip(sources, keep.tolist()) if k], maps[keep].half(), step_features[keep],
                    blocked[keep], target_tensor[keep].half())


def label_queries(queries: dict | None, labels: list[str]) -> list[list[str]]:
    """Every wording the query file has for each label (referring templates and reasoning questions)."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for label in labels:
        templates = (queries or {}).get("referring_templates") or ["Segment the {label}."]
        by_label[label] += [t.format(label=label) for t in templates]
        by_label[label] += list((queries or {}).get("reasoning", {}).get(label, []))
    return [by_label[label] for label in labels]
