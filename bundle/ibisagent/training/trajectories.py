"""Simulated click trajectories with the segmentation tool in the loop: the training data of every policy.

For each (image, target) of a manifest split the paper's simulated annotator
clicks at the centre of the larger error region until the mask reaches a
target IoU or a step limit; every step records the click (pixel and
normalised), the tool's mask (COCO run-length encoding), its IoU and the
predicted IoU. One JSON line per (image, target, query): the steps do not
depend on the query, so every query kind of a pair shares one simulation.
Nothing here knows about a policy, so the same files feed the compact
policy and the MLLM's SFT export.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask
from tqdm import tqdm

from ..clicks import next_click, normalised_to_pixel
from ..evaluation import Pair, QueryKind, choose_query
from ..imaging.io import read_mask
from ..metrics import iou
from ..outputs import publish
from ..protocol import Action
from ..tools.base import Click, ImageEmbedding, SegmentationTool
from .embedding_cache import EmbeddingCache

__all__ = ["TRAJECTORY_FORMAT", "TrajectoryConfig", "encode_mask", "decode_mask", "simulate_steps",
           "write_trajectories", "read_trajectories"]

TRAJECTORY_FORMAT = "ibisagent-trajectory/1"


@dataclass(frozen=True)
class TrajectoryConfig:
    target_iou: float = 0.9
    max_steps: int = 10
    query_kinds: tuple[QueryKind, ...] = ("referring", "reasoning")

    def __post_init__(self) -> None:
        if not 0.0 < self.target_iou <= 1.0:
            raise ValueError(f"target_iou must be in (0, 1], got {self.target_iou}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        unknown = set(self.query_kinds) - {"referring", "reasoning"}
        if unknown or not self.query_kinds:
            raise ValueError(f"query kinds must be among referring, reasoning; got {list(self.query_kinds)}")


def encode_mask(mask: np.ndarray) -> dict:
    """COCO run-length encoding of a bool mask, JSON-ready."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def simulate_steps(tool: SegmentationTool, embedding: ImageEmbedding, target: np.ndarray,
                   config: TrajectoryConfig) -> tuple[list[dict], str]:
    """The annotator's steps on one target, and why it stopped (target_iou, step_limit or no_error)."""
    height, width = target.shape
    mask = np.zeros_like(target, dtype=bool)
    clicks: list[Click] = []
    low_res = None
    steps: list[dict] = []
    for index in range(config.max_steps):
        click, _ = next_click(mask, target)
        if click is None:
            return steps, "no_error"
        clicks.append(click)
        output = tool.predict(embedding, clicks, low_res)
        low_res, mask = output.low_res_logits, output.mask
        action = Action.positive(click.x, click.y) if click.positive else Action.negative(click.x, click.y)
        value = iou(mask, target)
        row, col = normalised_to_pixel(click.x, click.y, (height, width))
        steps.append({
            "step": index + 1,
            "action": action.to_text(),
            "click": {"x": col, "y": row,
                      "x_norm": round(click.x, 6), "y_norm": round(click.y, 6), "positive": click.positive},
            "iou": round(value, 6),
            "predicted_iou": round(output.iou, 6),
            "mask": encode_mask(mask),
        })
        if value >= config.target_iou:
            return steps, "target_iou"
    return steps, "step_limit"


def _records(pair: Pair, steps: list[dict], stop: str, shape: tuple[int, int], tool: SegmentationTool,
             queries: dict | None, config: TrajectoryConfig) -> Iterator[dict]:
    for kind in config.query_kinds:
        query = choose_query(pair, queries, kind)
        if query is None:  # no reasoning question for this label
            continue
        yield {
            "format": TRAJECTORY_FORMAT,
            "image": str(pair.image), "mask": str(pair.mask), "label": pair.label, "source": pair.source,
            "case": pair.case, "query": query, "query_kind": kind,
            "image_size": [int(shape[0]), int(shape[1])],
            "tool": tool.name, "target_iou": config.target_iou, "max_steps": config.max_steps,
            "stop": stop, "final_iou": steps[-1]["iou"] if steps else 0.0,
            "steps": steps,
        }


def write_trajectories(pairs: Iterable[Pair], tool: SegmentationTool, out_path: str | Path,
                       queries: dict | None = None, config: TrajectoryConfig = TrajectoryConfig(),
                       cache: EmbeddingCache | None = None) -> dict:
    """Simulate every pair and write JSON lines atomically; returns counts for the log."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pairs = sorted(pairs, key=lambda p: (str(p.image), p.label))  # one image in a row: encode once
    handle, temporary = tempfile.mkstemp(suffix=".jsonl.tmp", dir=out_path.parent)
    counts = {"pairs": 0, "records": 0, "skipped_empty": 0, "target_iou": 0, "step_limit": 0, "no_error": 0}
    try:
        with os.fdopen(handle, "w") as stream:
            cached_image, embedding = None, None
            for pair in tqdm(pairs, desc="trajectories", unit="pair"):
                with Image.open(pair.image) as image:
                    shape = (image.height, image.width)
                target = read_mask(pair.mask, shape)
                if not target.any():
                    counts["skipped_empty"] += 1
                    continue
                if cached_image != pair.image:
                    if cache is not None:
                        embedding = cache.embedding(pair.image)
                    else:
                        embedding = tool.encode(np.asarray(Image.open(pair.image).convert("RGB")))
                    cached_image = pair.image
                steps, stop = simulate_steps(tool, embedding, target, config)
                counts["pairs"] += 1
                counts[stop] += 1
                for record in _records(pair, steps, stop, shape, tool, queries, config):
                    stream.write(json.dumps(record) + "\n")
                    counts["records"] += 1
        publish(temporary, out_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return counts


def read_trajectories(path: str | Path) -> Iterator[dict]:
    """Records of a trajectory file; a line in another format is an error naming the line."""
    with open(path) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
            if record.get("format") != TRAJECTORY_FORMAT:
                raise ValueError(f"{path}:{number}: format {record.get('format')!r}, expected {TRAJECTORY_FORMAT!r}")
            yield record
