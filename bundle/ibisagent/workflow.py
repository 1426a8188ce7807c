"""The bundle workflow: run the agent over a datalist and write each item's outputs.

A datalist is a JSON file holding either a list of items or MONAI's decathlon
layout, `{"testing": [items]}`. Item fields:

- `image` (required): a 2D image file (PNG/JPEG, a DICOM file, a NIfTI volume
  with `slice`) or a DICOM series folder. Outputs: mask.png, overlays and
  trajectory.json; for a series a DICOM-SEG (seg.dcm + seg.json).
- `query` (required): the clinician's request.
- `label`: a reference mask (PNG) of the target on the image or slice; it
  steers the oracle policy, and any other policy's answer is scored against it
  (`reference_iou`).
- `slice`, `window`: which slice and display window (as `ibis segment`).
- `target`: DICOM series and volumes, the segment's label for its codes (default: from the query,
  `labels.py`);
  `series_uid` picks one series in a folder holding several.
- `mode: "volume"` (implied for an `.npz`): the whole volume, a DICOM series
  folder, NIfTI or npz (`volume.pipeline.segment_volume`). Outputs:
  mask.nii.gz, seg.dcm + seg.json for DICOM, trajectory.json, montage.png;
  `key_slice` (default: the agent's sweep; the oracle's largest reference
  slice); `label` is then a label map on its grid (an npz's own labels by
  default) and `reference_label` (default `target`) the label taken from it.
  Its summary entry's `confidence` and `unreliable` are those of the agent's
  mask on the key slice (propagated slices carry the tool's predicted IoU in
  trajectory.json).

Relative paths are relative to the datalist file. Each item gets the folder
`NNNN_<input name without its ending>` in the output folder, and
`summary.json` records every item's status.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .agent import TURN_LIMIT, Agent, AgentResult
from .imaging.io import read_image, read_mask
from .imaging.orientation import IDENTITY, DisplayTransform
from .metrics import iou
from .outputs import check_output_dir, write_json_atomic, write_run
from .policies import LITE_POLICY_NAMES, build_policy
from .prompting import load_prompts
from .tools.base import SegmentationTool

__all__ = ["AgentWorkflow", "DatalistError", "load_datalist", "run_bundle"]

DATALIST_KEY = "testing"
_PATH_FIELDS = ("image", "label")


class DatalistError(ValueError):
    """A datalist that cannot be read or holds an item the workflow cannot run."""


def _checked_items(items: object, where: str, base_dir: Path | None) -> list[dict]:
    if not isinstance(items, list):
        raise DatalistError(f"{where}: expected a list of items, got {type(items).__name__}")
    checked = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise DatalistError(f"{where}: item {index} is a {type(item).__name__}, not an object with "
                                "'image' and 'query'")
        item = dict(item)
        for field in ("image", "query"):
            if not isinstance(item.get(field), str) or not item[field].strip():
                raise DatalistError(f"{where}: item {index} has no {field!r} (a non-empty string)")
        if base_dir is not None:
            for field in _PATH_FIELDS:
                if isinstance(item.get(field), str) and not Path(item[field]).expanduser().is_absolute():
                    item[field] = str(base_dir / item[field])
        checked.append(item)
    return checked


def load_datalist(datalist: str | Path | Sequence[Mapping]) -> list[dict]:
    """The items of a datalist file (a list, or `{"testing": [...]}`), or of a list given in the config.

    Every item needs `image` and `query`; anything else is a `DatalistError`
    naming the file and the item, before any model loads.
    """
    if not isinstance(datalist, (str, Path)):
        return _checked_items(list(datalist), "datalist", None)
    path = Path(datalist).expanduser()
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatalistError(f"datalist {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatalistError(f"datalist {path}: cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise DatalistError(f"datalist {path}: not valid JSON ({error})") from None
    if isinstance(content, dict):
        if DATALIST_KEY not in content:
            raise DatalistError(f"datalist {path}: an object needs a {DATALIST_KEY!r} list of items (MONAI's "
                                f"layout); it has {', '.join(map(repr, content)) or 'no keys'}")
        content = content[DATALIST_KEY]
    elif not isinstance(content, list):
        raise DatalistError(f"datalist {path}: expected a list of items or {{\"{DATALIST_KEY}\": [...]}}, "
                            f"got a {type(content).__name__}")
    return _checked_items(content, f"datalist {path}", path.absolute().parent)


def item_folder_name(index: int, image: str) -> str:
    """`0000_examples_overlay` for `.../examples_overlay.dcm`: the index, then the input's name without endings."""
    name = Path(image.rstrip("/")).name
    for ending in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".npz"):
        if name.lower().endswith(ending) and len(name) > len(ending):
            name = name[: -len(ending)]
            break
    return f"{index:04d}_{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"


def _outcome(result: AgentResult) -> dict:
    """What the summary records of a run: its status, the unreliable flag and the confidence, clicks, mask area."""
    return {"status": result.status.value, "unreliable": result.unreliable,
            "confidence": round(result.confidence.value, 4) if result.confidence else None,
            "clicks": len(result.clicks), "mask_area": int(result.mask.sum())}


class AgentWorkflow:
    """The agent over a datalist. `tool` is a tool or a tool spec (built once the datalist has been read);
    `backend` says where the embedded models run (see `tools.factory`)."""

    def __init__(self, tool: SegmentationTool | str | Mapping[str, Any], datalist: str | Path | Sequence[Mapping],
                 output_dir: str | Path, policy: str = "lite", policy_options: dict[str, Any] | None = None,
                 prompts: str | Path | None = None, max_turns: int = 20, target_iou: float = 0.9,
                 backend: str | None = None):
        self._tool = tool
        self.backend = backend  # where the embedded models run: onnxruntime (default) or torch
        self.datalist = datalist
        self.output_dir = Path(output_dir)
        self.policy_name = policy
        self.policy_options = dict(policy_options or {})
        if backend and policy in LITE_POLICY_NAMES:
            self.policy_options.setdefault("backend", backend)
        self.prompts_source = prompts
        self.max_turns = max_turns
        self.target_iou = target_iou
        self.tool: SegmentationTool | None = None  # built by `run`, after the checks
        self.prompts = None
        self._shared_policy = None  # every policy but the oracle serves all items

    def _policy(self, item: dict, shape: tuple[int, int], display: DisplayTransform = IDENTITY):
        """The policy for one item; `shape` is the image as the agent sees it (`display` of the stored one)."""
        if self.policy_name != "oracle":
            if self._shared_policy is None:
                self._shared_policy = build_policy(self.policy_name, **self.policy_options)
            return self._shared_policy
        if not item.get("label"):
            raise ValueError(f"the oracle policy needs a 'label' mask for {Path(item['image']).name}")
        reference = read_mask(item["label"], shape, display)
        return build_policy("oracle", ground_truth=reference, target_iou=self.target_iou)

    def _score(self, item: dict, mask: np.ndarray, display: DisplayTransform, entry: dict) -> None:
        """A reference mask scores any policy but the oracle (which it steered)."""
        if item.get("label") and self.policy_name != "oracle":
            entry["reference_iou"] = round(iou(mask, read_mask(item["label"], mask.shape, display)), 4)

    def _run_dicom(self, item: dict, out_dir: Path, entry: dict) -> None:
        """A DICOM series folder: the chosen slice through the agent, a DICOM-SEG out."""
        from .dicom.pipeline import segment_dicom
        from .dicom.series import read_series

        series = read_series(item["image"], item.get("slice"), item.get("series_uid"), item.get("window"))
        policy = self._policy(item, series.rgb.shape[:2], series.display)
        run = segment_dicom(item["image"], item["query"], out_dir, self.tool, policy, label=item.get("target"),
                            prompts=self.prompts, max_turns=self.max_turns, series=series, tool_name=self.tool.name,
                            policy_name=self.policy_name)
        result = run.result
        entry.update(_outcome(result))
        self._score(item, result.mask, series.display, entry)
        if not run.completed:
            entry["error"] = result.error

    def _run_volume(self, item: dict, out_dir: Path, entry: dict) -> None:
        """A whole volume: the agent on a key slice, propagation, mask.nii.gz (+ seg.dcm for DICOM) out."""
        from .volume.key_slice import reference_key_slice
        from .volume.pipeline import segment_volume
        from .volume.readers import read_label_map, read_volume

        volume = read_volume(item["image"], window=item.get("window"), series_uid=item.get("series_uid"))
        key, key_from, reference = item.get("key_slice"), "given", None
        which = item.get("reference_label", item.get("target"))
        if item.get("label") or (self.policy_name == "oracle" and str(item["image"]).endswith(".npz")):
            if which is None:
                raise ValueError(f"{entry['image']}: a reference label map needs 'reference_label' (or 'target')")
            reference = read_label_map(volume, item.get("label")).mask(which)
        if self.policy_name == "oracle":
            if reference is None or not reference.any():
                raise ValueError(f"the oracle policy needs a non-empty reference for {entry['image']}")
            key = reference_key_slice(reference) if key is None else key
            key_from = "given" if item.get("key_slice") is not None else "the reference's largest slice (oracle)"
            policy = build_policy("oracle", ground_truth=volume.to_display(reference[key]), target_iou=self.target_iou)
        else:
            policy = self._policy(item, volume.display_shape)
        run = segment_volume(volume, item["query"], out_dir, self.tool, policy, key_slice=key, key_from=key_from,
                             label=item.get("target"), reference=reference, prompts=self.prompts,
                             max_turns=self.max_turns, metadata={"input": entry["image"], "policy": self.policy_name,
                                                                 "tool": self.tool.name})
        result = run.result
        entry.update(status=result.status.value, unreliable=result.unreliable,  # both of the key slice's mask
                     confidence=round(result.confidence.value, 4) if result.confidence else None,
                     clicks=len(result.clicks), key_slice=run.session.key_slice, mask_voxels=int(run.mask.sum()))
        if run.reference_dice is not None:
            entry["reference_dice"] = round(run.reference_dice, 4)
        if not run.completed:
            entry["error"] = result.error

    def _run_image(self, item: dict, out_dir: Path, entry: dict) -> None:
        """A 2D image file: mask.png, overlays and trajectory.json out."""
        loaded = read_image(item["image"], item.get("slice"), item.get("window"))
        policy = self._policy(item, loaded.rgb.shape[:2], loaded.display)
        agent = Agent(self.tool, policy, self.prompts, self.max_turns)
        masks: list[np.ndarray] = []
        result = agent.run(loaded.rgb, item["query"], on_turn=lambda turn, mask: masks.append(mask))
        entry.update(_outcome(result))
        self._score(item, result.mask, loaded.display, entry)
        if result.status.completed:
            metadata = {"input": Path(item["image"]).name, "query": item["query"], "policy": self.policy_name,
                        "tool": self.tool.name, "window": loaded.window, "display": loaded.display_note or "as stored"}
            write_run(out_dir, loaded.rgb, result, masks, metadata, loaded.display, loaded.nifti)
        else:
            entry["error"] = result.error

    def run(self) -> list[dict]:
        """Check the datalist, the settings and the output folder, then run every item.

        Those checks raise before any model loads; after them one item's
        failure is recorded in its summary entry and the others still run.
        """
        items = load_datalist(self.datalist)
        if not 1 <= self.max_turns <= TURN_LIMIT:
            raise ValueError(f"max_turns must be 1 to {TURN_LIMIT}, not {self.max_turns}")
        check_output_dir(self.output_dir)
        self.prompts = load_prompts(self.prompts_source)
        if isinstance(self._tool, SegmentationTool):
            self.tool = self._tool
        else:
            from .tools.factory import build_tool

            self.tool = build_tool(self._tool, self.backend)
        summary = []
        for index, item in enumerate(items):
            entry = {"index": index, "image": Path(item["image"]).name, "query": item["query"],
                     "output": item_folder_name(index, item["image"])}
            try:
                if item.get("mode") == "volume" or str(item["image"]).endswith(".npz"):
                    self._run_volume(item, self.output_dir / entry["output"], entry)
                elif Path(item["image"]).is_dir():
                    self._run_dicom(item, self.output_dir / entry["output"], entry)
                else:
                    self._run_image(item, self.output_dir / entry["output"], entry)
            except (ValueError, OSError, KeyError) as error:
                entry.update(status="failed", error=str(error))
            summary.append(entry)
        write_json_atomic(self.output_dir / "summary.json", summary)
        return summary


def describe_summary(summary: list[dict], output_dir: str | Path) -> str:
    """One line: how many items, how they ended, the mean reference IoU when there were references."""
    statuses: dict[str, int] = {}
    for entry in summary:
        statuses[entry["status"]] = statuses.get(entry["status"], 0) + 1
    ended = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    unreliable = sum(bool(entry.get("unreliable")) for entry in summary)
    if unreliable:
        ended += f" ({unreliable} flagged unreliable)"
    scores = [entry["reference_iou"] for entry in summary if "reference_iou" in entry]
    scored = f"; mean IoU {np.mean(scores):.3f} against {len(scores)} reference(s)" if scores else ""
    return f"{len(summary)} item(s): {ended or 'none'}{scored}; outputs in {output_dir} (summary.json)"


def run_bundle(workflow: AgentWorkflow) -> list[dict]:
    """The bundle's `run`: the workflow, its outcome in one line, bad input refused in one line.

    MONAI reports a failing expression with a long chained traceback; an
    input the user can fix (the datalist, the output folder, a setting) is
    refused with the one line that says what to fix, exit status 2.
    """
    try:
        summary = workflow.run()
    except (ValueError, OSError) as error:
        import sys

        print(f"ibisagent: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        raise SystemExit(2) from None
    for entry in summary:
        if entry["status"] == "failed" or entry.get("error"):
            print(f"ibisagent: item {entry['index']} ({entry['image']}): {entry['status']}: {entry.get('error')}")
        elif entry.get("unreliable"):
            print(f"ibisagent: warning: item {entry['index']} ({entry['image']}): the result is unreliable "
                  f"(confidence {entry['confidence']:.2f}); check the mask before using it")
    print(f"ibisagent: {describe_summary(summary, workflow.output_dir)}", flush=True)
    return summary
