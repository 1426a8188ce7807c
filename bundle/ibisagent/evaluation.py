"""Evaluate a policy + tool over the pairs of a manifest (the ../shared/data/med2d layout).

Per pair: the final mask's IoU, DSC and boundary F1; IoU after 1, 3, 5 and 10
clicks (the last mask carries forward when the run stopped earlier); NoC@85/90;
and the tool's IoU when given the ground-truth box. Sources are averaged
without weights, so a large source cannot hide a small one.
"""

from __future__ import annotations

import csv
import json
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Literal, Mapping

import numpy as np
from PIL import Image

from .agent import Agent
from .imaging.io import read_mask
from .metrics import auroc, boundary_f1, bounding_box, dice, iou, noc
from .policies.base import Policy
from .prompting import PromptSet
from .tools.base import SegmentationTool

if TYPE_CHECKING:
    from .training.embedding_cache import EmbeddingCache

__all__ = ["Pair", "read_manifest", "select_pairs", "choose_query", "evaluate", "evaluate_policies", "summarise", "markdown_table",
           "calibration", "calibration_line", "CLICK_STEPS"]

CLICK_STEPS = (1, 3, 5, 10)
QueryKind = Literal["referring", "reasoning"]


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    label: str
    source: str
    case: str


def read_manifest(path: str | Path, split: str) -> list[Pair]:
    """Rows of one split; paths resolved against the manifest's folder."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"cannot read manifest {path}: {error.strerror}") from None
    required = {"image", "mask", "label", "source", "split"}
    if rows and not required <= set(rows[0]):
        raise ValueError(f"manifest {path} lacks columns: {', '.join(sorted(required - set(rows[0])))}")
    pairs = [
        Pair(path.parent / row["image"], path.parent / row["mask"], row["label"], row["source"], row.get("case", ""))
        for row in rows if row["split"] == split
    ]
    if not pairs:
        raise ValueError(f"manifest {path} has no pairs in split {split!r}")
    return pairs


def select_pairs(pairs: list[Pair], per_source: int | None = None, limit: int | None = None) -> list[Pair]:
    """At most `per_source` pairs of each source (in a fixed order), then at most `limit` in all."""
    if per_source:
        by_source: dict[str, list[Pair]] = defaultdict(list)
        for pair in sorted(pairs, key=lambda p: (str(p.image), p.label)):
            by_source[pair.source].append(pair)
        pairs = [pair for group in by_source.values() for pair in group[:per_source]]
    return pairs[:limit] if limit else pairs


def choose_query(pair: Pair, queries: dict | None, kind: QueryKind) -> str | None:
    """A deterministic query per pair: a referring template or a reasoning question for its label."""
    key = zlib.crc32(f"{pair.image.name}|{pair.label}".encode())
    if queries is None:
        return f"Segment the {pair.label}." if kind == "referring" else None
    if kind == "referring":
        templates = queries.get("referring_templates") or ["Segment the {label}."]
        return templates[key % len(templates)].format(label=pair.label)
    questions = queries.get("reasoning", {}).get(pair.label)
    return questions[key % len(questions)] if questions else None


def evaluate(pairs: Iterable[Pair], tool: SegmentationTool, make_policy: Callable[[np.ndarray], Policy],
             queries: dict | None = None, query_kind: QueryKind = "referring", prompts: PromptSet | None = None,
             max_turns: int = 20, progress: Callable[[int, int, dict], None] | None = None) -> list[dict]:
    """One record per evaluated pair. `make_policy(ground_truth)` builds the policy for a pair."""
    return evaluate_policies(pairs, tool, {"policy": make_policy}, queries, query_kind, prompts, max_turns,
                             progress)["policy"]


def evaluate_policies(pairs: Iterable[Pair], tool: SegmentationTool,
                      make_policies: Mapping[str, Callable[[np.ndarray], Policy]], queries: dict | None = None,
                      query_kind: QueryKind = "referring", prompts: PromptSet | None = None, max_turns: int = 20,
                      progress: Callable[[int, int, dict], None] | None = None,
                      cache: EmbeddingCache | None = None) -> dict[str, list[dict]]:
    """Records per policy name; every policy sees the same pairs, queries and image embeddings (encoded once,
    or read from `cache`: float16 embeddings on disk, shared by runs and by tools with one encoder)."""
    pairs = sorted(pairs, key=lambda p: (str(p.image), p.label))  # same image in a row: encode once
    records: dict[str, list[dict]] = {name: [] for name in make_policies}
    cached_image, embedding = None, None
    for index, pair in enumerate(pairs):
        query = choose_query(pair, queries, query_kind)
        if query is None:
            continue
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        target = read_mask(pair.mask, image.shape[:2])
        if cached_image != pair.image:
            embedding = cache.embedding(pair.image) if cache is not None else tool.encode(image)
            cached_image = pair.image
        box = bounding_box(target)
        box_iou = iou(tool.predict(embedding, box=box, multimask=False).mask, target) if box else float("nan")
        for name, make_policy in make_policies.items():
            record = _run_pair(pair, query, image, target, embedding, tool, make_policy(target), prompts, max_turns)
            record.update(policy=name, box_iou=box_iou)
            records[name].append(record)
            if progress:
                progress(index + 1, len(pairs), record)
    return records


def _run_pair(pair: Pair, query: str, image: np.ndarray, target: np.ndarray, embedding, tool: SegmentationTool,
              policy: Policy, prompts: PromptSet | None, max_turns: int) -> dict:
    click_ious: list[float] = []

    def record_click(turn, mask) -> None:
        if turn.mask_area is not None:
            click_ious.append(iou(mask, target))

    started = time.perf_counter()
    result = Agent(tool, policy, prompts, max_turns=max_turns).run(image, query, on_turn=record_click,
                                                                   embedding=embedding)
    carried = [click_ious[min(k, len(click_ious)) - 1] if click_ious else 0.0 for k in CLICK_STEPS]
    return {
        "image": pair.image.name, "label": pair.label, "source": pair.source, "query": query,
        "status": result.status.value, "turns": len(result.turns), "clicks": len(result.clicks),
        "iou": iou(result.mask, target), "dsc": dice(result.mask, target), "f1": boundary_f1(result.mask, target),
        "iou_at": dict(zip(map(str, CLICK_STEPS), carried)),
        "noc85": noc(click_ious, 0.85, max_turns), "noc90": noc(click_ious, 0.90, max_turns),
        "agent_seconds": round(time.perf_counter() - started, 4),
        "confidence": result.confidence.value if result.confidence else None,
        "confidence_source": result.confidence.source if result.confidence else None,
        "confidence_features": dict(result.confidence.features) if result.confidence else None,
        "unreliable": result.unreliable,
        "tool_iou": next((t.predicted_iou for t in reversed(result.turns) if t.predicted_iou is not None), None),
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def _aggregate(records: list[dict]) -> dict:
    return {
        "n": len(records),
        "clicks": _mean([r["clicks"] for r in records]),
        "iou": _mean([r["iou"] for r in records]),
        "dsc": _mean([r["dsc"] for r in records]),
        "f1": _mean([r["f1"] for r in records]),
        "iou_at": {k: _mean([r["iou_at"][k] for r in records]) for k in map(str, CLICK_STEPS)},
        "noc85": _mean([r["noc85"] for r in records]),
        "noc90": _mean([r["noc90"] for r in records]),
        "box_iou": _mean([r["box_iou"] for r in records]),
    }


def summarise(records: list[dict]) -> dict:
    """`by_source` means, and `overall`: the unweighted mean of the source means."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        grouped[record["source"]].append(record)
    by_source = {source: _aggregate(items) for source, items in sorted(grouped.items())}
    sources = list(by_source.values())
    overall = {
        key: (_mean([s[key] for s in sources]) if key != "iou_at" else
              {k: _mean([s["iou_at"][k] for s in sources]) for k in map(str, CLICK_STEPS)})
        for key in ("clicks", "iou", "dsc", "f1", "iou_at", "noc85", "noc90", "box_iou")
    }
    overall["n"] = sum(s["n"] for s in sources)
    return {"by_source": by_source, "overall": overall, "calibration": calibration(records)}


def calibration(records: list[dict], failure_iou: float = 0.5) -> dict:
    """How well the runs' confidence tells a failed mask (IoU < `failure_iou`) from a good one: the AUROC of
    low confidence for failure over all runs, how many runs were flagged unreliable, and the IoU (mean of
    sources, as in the tables) of the runs not flagged and of those flagged."""
    scored = [r for r in records if r.get("confidence") is not None]

    def by_sources(chosen: list[dict]) -> float:
        grouped: dict[str, list[float]] = defaultdict(list)
        for record in chosen:
            grouped[record["source"]].append(record["iou"])
        return _mean([_mean(values) for values in grouped.values()])

    return {
        "n": len(scored), "failure_iou": failure_iou,
        "failures": sum(r["iou"] < failure_iou for r in scored),
        "auroc": auroc([-r["confidence"] for r in scored], [r["iou"] < failure_iou for r in scored]),
        "flagged": sum(bool(r["unreliable"]) for r in scored),
        "flagged_failures": sum(bool(r["unreliable"]) and r["iou"] < failure_iou for r in scored),
        "iou_unflagged": by_sources([r for r in scored if not r["unreliable"]]),
        "iou_flagged": by_sources([r for r in scored if r["unreliable"]]),
    }


def calibration_line(summary: dict) -> str:
    """One line under a run's table: the calibration of its confidence."""
    c = summary["calibration"]
    if not c["n"]:
        return "calibration: no run reported a confidence"
    return (f"calibration ({c['n']} runs, {c['failures']} with IoU < {c['failure_iou']}): AUROC {c['auroc']:.3f}; "
            f"flagged unreliable {c['flagged']} ({c['flagged_failures']} of them failures); IoU of unflagged runs "
            f"{c['iou_unflagged']:.3f}, of flagged runs {c['iou_flagged']:.3f} (means of sources)")


def markdown_table(summary: dict) -> str:
    header = "| source | n | clicks | IoU | DSC | F1 | " + " | ".join(f"IoU@{k}" for k in CLICK_STEPS) + " | NoC85 | NoC90 | box IoU |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows = list(summary["by_source"].items()) + [("**overall** (mean of sources)", summary["overall"])]
    for name, s in rows:
        cells = [name, str(s["n"]), f"{s['clicks']:.1f}", *(f"{s[k]:.3f}" for k in ("iou", "dsc", "f1")),
                 *(f"{s['iou_at'][str(k)]:.3f}" for k in CLICK_STEPS),
                 f"{s['noc85']:.2f}", f"{s['noc90']:.2f}", f"{s['box_iou']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_queries(path: str | Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read queries {path}: {error}") from None
