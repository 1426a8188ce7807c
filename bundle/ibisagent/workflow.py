"""The bundle workflow: run the agent over a datalist and write each item's outputs.

A datalist is MONAI's decathlon layout (`{"testing": [{"image": ..., "query": ...,
"label": ...}]}`, paths relative to the file) or a list of such items. `image`
is a 2D image file (outputs: mask.png, overlays, trajectory.json) or a DICOM
series folder (outputs: seg.dcm and seg.json; `target` names the segment for
its codes, `slice` picks the slice). `label`, a reference mask, steers the
oracle policy; any other policy's answer is scored against it (`reference_iou`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .agent import Agent
from .imaging.io import read_image, read_mask
from .imaging.orientation import IDENTITY, DisplayTransform
from .outputs import write_json_atomic, write_run
from .metrics import iou
from .policies import build_policy
from .prompting import load_prompts
from .tools.base import SegmentationTool

__all__ = ["AgentWorkflow", "load_datalist"]


def load_datalist(datalist: str | Path | Sequence[dict], key: str = "testing") -> list[dict]:
    if isinstance(datalist, (str, Path)):
        from monai.data import load_decathlon_datalist

        return load_decathlon_datalist(str(datalist), is_segmentation=False, data_list_key=key)
    return [dict(item) for item in datalist]


class AgentWorkflow:
    def __init__(self, tool: SegmentationTool, datalist: str | Path | Sequence[dict], output_dir: str | Path,
                 policy: str = "lite", policy_options: dict[str, Any] | None = None,
                 prompts: str | Path | None = None, max_turns: int = 20, target_iou: float = 0.9):
        self.tool = tool
        self.items = load_datalist(datalist)
        self.output_dir = Path(output_dir)
        self.policy_name = policy
        self.policy_options = dict(policy_options or {})
        self.prompts = load_prompts(prompts)
        self.max_turns = max_turns
        self.target_iou = target_iou
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
        entry.update(status=result.status.value, clicks=len(result.clicks), mask_area=int(result.mask.sum()))
        if not run.completed:
            entry["error"] = result.error

    def _run_image(self, item: dict, out_dir: Path, entry: dict) -> None:
        """A 2D image file: mask.png, overlays and trajectory.json out."""
        loaded = read_image(item["image"], item.get("slice"), item.get("window"))
        policy = self._policy(item, loaded.rgb.shape[:2], loaded.display)
        agent = Agent(self.tool, policy, self.prompts, self.max_turns)
        masks: list[np.ndarray] = []
        result = agent.run(loaded.rgb, item["query"], on_turn=lambda turn, mask: masks.append(mask))
        entry.update(status=result.status.value, clicks=len(result.clicks), mask_area=int(result.mask.sum()))
        if item.get("label") and self.policy_name != "oracle":  # a reference mask scores the policy's answer
            reference = read_mask(item["label"], loaded.rgb.shape[:2], loaded.display)
            entry["reference_iou"] = round(iou(result.mask, reference), 4)
        if result.status.completed:
            metadata = {"input": entry["image"], "query": item["query"], "policy": self.policy_name, "tool": self.tool.name,
                        "window": loaded.window, "display": loaded.display_note or "as stored"}
            write_run(out_dir, loaded.rgb, result, masks, metadata, loaded.display)
        else:
            entry["error"] = result.error

    def run(self) -> list[dict]:
        """Run every item; one item's failure is recorded and the others still run."""
        summary = []
        for index, item in enumerate(self.items):
            name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(item["image"])).name)
            entry = {"index": index, "image": name, "query": item.get("query")}
            out_dir = self.output_dir / f"{index:04d}_{name}"
            try:
                if Path(item["image"]).is_dir():
                    self._run_dicom(item, out_dir, entry)
                else:
                    self._run_image(item, out_dir, entry)
            except (ValueError, OSError, KeyError) as error:
                entry.update(status="failed", error=str(error))
            summary.append(entry)
        write_json_atomic(self.output_dir / "summary.json", summary)
        return summary
