"""`ibis evaluate-volumes`: 3D results per (volume, label) of the volumes manifest, strategies side by side.

Per row, with the same tool, key slice and slice embeddings: the issue's
starting point (`BASELINE`: each slice prompted with the box of its
neighbour's mask only, both ways, stopping below a predicted IoU of 0.5),
forward-only propagation (MONAI Label's SAM2 behaviour), both directions,
and ours with corrections: `dice_at` after 1, 3 and 5 interactions (1 = the
key slice's run + propagation; each further one = the oracle's click on the
slice with the largest error, then re-propagation). The key slice is the slice of the
largest reference area; for policies other than the oracle, the run with the
agent-chosen key slice is reported beside it. 3D Dice, 95 % Hausdorff and
surface Dice come from MONAI's metrics, in millimetres. Sources are averaged
without weights, as in `ibis evaluate`. Records are written as they finish
(JSON lines), so a long run can be resumed.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..clicks import next_click
from ..evaluation import Pair, choose_query
from ..metrics import dice
from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import SegmentationTool
from .key_slice import choose_key_slice, reference_key_slice
from .propagation import PropagationSettings
from .readers import read_label_map, read_volume
from .session import VolumeSession
from .slices import SliceEncoder
from .volume import Volume

__all__ = ["INTERACTIONS", "VolumeItem", "evaluate_volumes", "markdown_tables", "read_volume_manifest",
           "summarise_volumes", "volume_metrics"]

INTERACTIONS = (1, 3, 5)
SURFACE_TOLERANCE_MM = 2.0
BASELINE = PropagationSettings(prompt="box", min_predicted_iou=0.5)  # the one-off starting point


@dataclass(frozen=True)
class VolumeItem:
    file: Path
    source: str
    case: str
    modality: str | None
    labels: dict[int, str]


def read_volume_manifest(path: str | Path, split: str, sources: Iterable[str] | None = None) -> list[VolumeItem]:
    """Rows of one split of ../shared/data/volumes/manifest.csv (paths relative to the manifest)."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"cannot read manifest {path}: {error.strerror}") from None
    required = {"file", "source", "labels", "split"}
    if rows and not required <= set(rows[0]):
        raise ValueError(f"manifest {path} lacks columns: {', '.join(sorted(required - set(rows[0])))}")
    wanted = set(sources) if sources else None
    items = [VolumeItem(path.parent / row["file"], row["source"], row.get("case", ""), row.get("modality") or None,
                        {int(k): v for k, v in json.loads(row["labels"]).items()})
             for row in rows if row["split"] == split and (wanted is None or row["source"] in wanted)]
    if not items:
        raise ValueError(f"manifest {path} has no volumes in split {split!r}")
    return items


# ----------------------------------------------------------------------------- metrics

def volume_metrics(prediction: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """3D Dice, HD95 (mm; NaN when either mask is empty) and surface Dice at 2 mm, with MONAI's metrics."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    result = {"dice": dice(prediction, target), "hd95": float("nan"), "surface_dice": 0.0}
    if not prediction.any() or not target.any():
        result["surface_dice"] = 1.0 if not prediction.any() and not target.any() else 0.0
        return result

    def one_hot(mask: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(mask.astype(bool))
        return torch.stack([~tensor, tensor])[None].float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty classes, which are handled above
        pred, ref = one_hot(prediction), one_hot(target)
        result["hd95"] = float(compute_hausdorff_distance(pred, ref, percentile=95, spacing=list(spacing))[0, 0])
        result["surface_dice"] = float(compute_surface_dice(pred, ref, [SURFACE_TOLERANCE_MM],
                                                            spacing=list(spacing))[0, 0])
    return result


def _worst_slice(prediction: np.ndarray, target: np.ndarray) -> int | None:
    errors = (prediction ^ target).sum(axis=(1, 2))
    return int(np.argmax(errors)) if errors.max() > 0 else None


# ----------------------------------------------------------------------------- one row

PolicyMaker = Callable[[np.ndarray], Policy]  # the key slice's reference (display frame) -> a policy


def _key_run(session: VolumeSession, make_policy: PolicyMaker, target: np.ndarray, query: str, key: int,
             prompts: PromptSet | None, max_turns: int) -> None:
    reference = session.volume.to_display(target[key])
    session.run_agent(make_policy(reference), query, key, prompts=prompts, max_turns=max_turns)


def evaluate_row(volume: Volume, encoder: SliceEncoder, target: np.ndarray, query: str, make_policy: PolicyMaker,
                 *, settings: PropagationSettings, prompts: PromptSet | None = None, max_turns: int = 20,
                 agent_key: Policy | None = None) -> dict:
    """All strategies for one structure; `agent_key`: also run with the key slice this policy chooses."""
    spacing = volume.spacing
    key = reference_key_slice(target)
    started = time.perf_counter()
    record: dict = {"key_slice": key, "reference_slices": int(target.any(axis=(1, 2)).sum())}

    baseline = VolumeSession(encoder.tool, volume, BASELINE, "both", encoder=encoder)
    _key_run(baseline, make_policy, target, query, key, prompts, max_turns)
    record["baseline"] = volume_metrics(baseline.mask(), target, spacing)

    forward = VolumeSession(encoder.tool, volume, settings, "forward", encoder=encoder)
    _key_run(forward, make_policy, target, query, key, prompts, max_turns)
    record["forward"] = volume_metrics(forward.mask(), target, spacing)

    session = VolumeSession(encoder.tool, volume, settings, "both", encoder=encoder)
    _key_run(session, make_policy, target, query, key, prompts, max_turns)
    status = session.agent_result.status.value if session.agent_result else None
    at: dict[str, dict] = {}
    mask = session.mask()
    at["1"] = volume_metrics(mask, target, spacing)
    record["both"] = at["1"]
    for interaction in range(2, max(INTERACTIONS) + 1):
        worst = _worst_slice(mask, target)
        if worst is not None:
            current = volume.to_display(mask[worst])
            click, _ = next_click(current, volume.to_display(target[worst]))
            session.add_clicks(worst, [click], author="oracle")
            mask = session.mask()
        if interaction in INTERACTIONS:
            at[str(interaction)] = volume_metrics(mask, target, spacing)
    record.update(status=status, key_clicks=len(session.agent_result.clicks) if session.agent_result else 0,
                  dice_at={k: v["dice"] for k, v in at.items()}, final=at[str(max(INTERACTIONS))],
                  reached=len(session.reached))
    if agent_key is not None:
        choice = choose_key_slice(encoder, agent_key, query, prompts)
        chosen = VolumeSession(encoder.tool, volume, settings, "both", encoder=encoder)
        chosen.run_agent(agent_key, query, choice.index, prompts=prompts, max_turns=max_turns)
        record["agent_key"] = {"slice": choice.index, "distance": abs(choice.index - key),
                               "on_structure": bool(target[choice.index].any()),
                               "dice": dice(chosen.mask(), target)}
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


# ----------------------------------------------------------------------------- the run

def _records_done(path: Path | None) -> dict[tuple, dict]:
    done: dict[tuple, dict] = {}
    if path is None or not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a killed run: that row runs again
            continue
        done[_row_key(record)] = record
    return done


def _row_key(record: dict) -> tuple:
    """What makes two rows the same measurement: a row run with other settings, turns or display window (rows
    from before the window was recorded have none) is run again."""
    return (record["file"], record["label"], record["policy"], record["tool"],
            json.dumps(record.get("settings"), sort_keys=True), record.get("max_turns"),
            json.dumps(record.get("window"), sort_keys=True))


def _append(path: Path | None, record: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def evaluate_volumes(items: list[VolumeItem], tool: SegmentationTool, make_policies: Mapping[str, PolicyMaker],
                     *, queries: dict | None = None, query_kind: str = "referring",
                     settings: PropagationSettings | None = None, prompts: PromptSet | None = None,
                     max_turns: int = 20, agent_key: Mapping[str, Policy] | None = None,
                     cache_dir: str | Path | None = None, records_path: str | Path | None = None,
                     limit: int | None = None, tool_name: str | None = None,
                     progress: Callable[[int, int, dict], None] | None = None) -> dict[str, list[dict]]:
    """Records per policy name: one per (volume, label); rows already in `records_path` are not run again."""
    settings = settings or PropagationSettings()
    records_path = Path(records_path) if records_path else None
    done = _records_done(records_path)
    tool_name = tool_name or tool.name
    rows = [(item, label_id, name) for item in items for label_id, name in sorted(item.labels.items())]
    rows = rows[:limit] if limit else rows
    records: dict[str, list[dict]] = {name: [] for name in make_policies}
    current_file, volume, labels, encoder = None, None, None, None
    for number, (item, label_id, name) in enumerate(rows, start=1):
        if current_file != item.file:  # read first: the display window is part of what a row measured
            volume = read_volume(item.file, modality=item.modality)
            labels, encoder = None, SliceEncoder(tool, volume, cache_dir)
            current_file = item.file
        window = {"name": volume.window.name, "center": round(volume.window.center, 3),
                  "width": round(volume.window.width, 3)}
        for policy_name, make_policy in make_policies.items():
            base = {"file": item.file.name, "source": item.source, "case": item.case, "label": name,
                    "policy": policy_name, "tool": tool_name, "settings": asdict(settings), "max_turns": max_turns,
                    "window": window}
            key = _row_key(base)
            if key in done:
                records[policy_name].append(done[key])
                continue
            if labels is None:
                labels = read_label_map(volume)
            target = labels.mask(label_id)
            query = choose_query(Pair(item.file, item.file, name, item.source, item.case), queries, query_kind) \
                or f"Segment the {name}."
            base["query"] = query
            if not target.any():
                record = {**base, "skipped": "the label is absent from this volume"}
            else:
                before = len(encoder.encoded)
                record = {**base, **evaluate_row(volume, encoder, target, query, make_policy, settings=settings,
                                                 prompts=prompts, max_turns=max_turns,
                                                 agent_key=(agent_key or {}).get(policy_name))}
                record["encoded"] = len(encoder.encoded) - before
            _append(records_path, record)
            records[policy_name].append(record)
            if progress:
                progress(number, len(rows), record)
    return records


# ----------------------------------------------------------------------------- summaries

def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v and v not in (float("inf"), float("-inf"))]
    return float(np.mean(finite)) if finite else float("nan")


def _aggregate(records: list[dict]) -> dict:
    out = {
        "n": len(records),
        "dice_at": {k: _mean([r["dice_at"][k] for r in records]) for k in map(str, INTERACTIONS)},
        "baseline": _mean([r["baseline"]["dice"] for r in records if "baseline" in r]),
        "forward": _mean([r["forward"]["dice"] for r in records]),
        "both": _mean([r["both"]["dice"] for r in records]),
        "surface_dice": _mean([r["final"]["surface_dice"] for r in records]),
        "hd95": _mean([r["final"]["hd95"] for r in records]),
        "hd95_missing": sum(1 for r in records if r["final"]["hd95"] != r["final"]["hd95"]),
        "seconds": _mean([r["seconds"] for r in records]),
    }
    keyed = [r["agent_key"] for r in records if "agent_key" in r]
    if keyed:
        out["agent_key"] = {"dice": _mean([k["dice"] for k in keyed]), "distance": _mean([k["distance"] for k in keyed]),
                            "on_structure": _mean([float(k["on_structure"]) for k in keyed])}
    return out


def summarise_volumes(records: list[dict]) -> dict:
    """`by_source` means and `overall`: the unweighted mean of the source means."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if "skipped" not in record:
            grouped[record["source"]].append(record)
    by_source = {source: _aggregate(items) for source, items in sorted(grouped.items())}
    sources = list(by_source.values())
    overall: dict = {"n": sum(s["n"] for s in sources)}
    for key in ("baseline", "forward", "both", "surface_dice", "hd95", "seconds"):
        overall[key] = _mean([s[key] for s in sources])
    overall["hd95_missing"] = sum(s["hd95_missing"] for s in sources)
    overall["dice_at"] = {k: _mean([s["dice_at"][k] for s in sources]) for k in map(str, INTERACTIONS)}
    if sources and all("agent_key" in s for s in sources):
        overall["agent_key"] = {k: _mean([s["agent_key"][k] for s in sources])
                                for k in ("dice", "distance", "on_structure")}
    return {"by_source": by_source, "overall": overall}


def markdown_tables(summary: dict) -> str:
    """The 3D results table; the agent-chosen key slice columns when the run measured them."""
    keyed = "agent_key" in summary["overall"]
    header = ("| source | n | box baseline | forward only | both ways = Dice@1 | Dice@3 | Dice@5 | surface Dice@5 (2 mm) | "
              "HD95@5 mm | s / volume |" + (" agent key: Dice | slices off | on structure |" if keyed else ""))
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows = list(summary["by_source"].items()) + [("**overall** (mean of sources)", summary["overall"])]
    for name, s in rows:
        hd95 = f"{s['hd95']:.1f}" + (f" ({s['hd95_missing']} empty)" if s["hd95_missing"] else "")
        cells = [name, str(s["n"]), f"{s['baseline']:.3f}", f"{s['forward']:.3f}", f"{s['dice_at']['1']:.3f}", f"{s['dice_at']['3']:.3f}",
                 f"{s['dice_at']['5']:.3f}", f"{s['surface_dice']:.3f}", hd95, f"{s['seconds']:.1f}"]
        if keyed:
            k = s.get("agent_key", {})
            cells += [f"{k.get('dice', float('nan')):.3f}", f"{k.get('distance', float('nan')):.1f}",
                      f"{k.get('on_structure', float('nan')):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
