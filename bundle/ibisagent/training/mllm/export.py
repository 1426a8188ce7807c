"""Trajectory files -> datasets for training the MLLM policy (TRL's conversational layout).

One *state* is what the agent shows the policy at one turn: the system
prompt, the image (first turn) or the image with the current mask overlaid,
and the turn's user text. The SFT export pairs every state with the answer
the simulated annotator gave (a `<think>` rationale, then the action); a
trajectory that reached its target IoU ends with a Terminate state. The GRPO
export keeps each state with what the rewards need instead: the clicks so
far (the tool replays them), the original image and the ground-truth mask.

Prompts are rendered exactly as `Agent` renders them (system + one user turn,
image before text), so a model trained here sees at run time what it saw in
training. Rationales come from a teacher model behind any OpenAI-compatible
endpoint, or from a template built from the click's position when no teacher
is given. A dataset is a folder: `data.jsonl`, `meta.json`, `images/`
(observation PNGs) and, for GRPO, `targets/` (ground-truth PNGs); it is
written into a staging folder and moved into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...imaging.io import read_mask
from ...imaging.overlay import overlay_mask
from ...policies.base import Observation
from ...prompting import PromptSet, load_prompts
from ...protocol import Action, format_response, parse_action
from ..staging import staged_folder
from ..trajectories import decode_mask, read_trajectories

__all__ = ["SFT_FORMAT", "GRPO_FORMAT", "ExportKind", "State", "Teacher", "template_rationale", "iter_states",
           "export_mllm", "load_mllm_dataset"]

SFT_FORMAT = "ibisagent-mllm-sft/1"
GRPO_FORMAT = "ibisagent-mllm-grpo/1"
ExportKind = Literal["sft", "grpo"]
_FORMATS = {"sft": SFT_FORMAT, "grpo": GRPO_FORMAT}

TEACHER_SYSTEM = (
    "You explain the next step of an interactive segmentation of a medical image. The image shows the current "
    "mask in green (none on the first step). You are told the request and the correct next action. Write one to "
    "three sentences of reasoning, in the first person, that look at the image and lead to that action, as if you "
    "had decided it yourself. Do not mention that you were told the action. Write plain text without tags."
)


@dataclass(frozen=True)
class State:
    """One turn of a trajectory: what the policy sees and what the annotator did."""

    record: dict
    turn: int  # 0-based; the action taken here is number turn + 1
    previous_mask: np.ndarray  # (H, W) bool, empty on the first turn
    action: Action
    previous_iou: float

    @property
    def key(self) -> str:
        """Names this state's observation: the same image and mask in two trajectory files share it."""
        previous = self.record["steps"][self.turn - 1]["mask"]["counts"] if self.turn else ""
        return _digest(self.record["image"], self.record["mask"], str(self.turn), previous)


def _digest(*parts: str) -> str:
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _where(x: float, y: float) -> str:
    rows, cols = ("upper", "middle", "lower"), ("left", "centre", "right")
    row, col = rows[min(int(y * 3), 2)], cols[min(int(x * 3), 2)]
    if row == "middle" and col == "centre":
        return "near the centre of the image"
    return f"in the {row} {col} part of the image" if row != "middle" else f"in the middle {col} part of the image"


def template_rationale(state: State) -> str:
    """A rationale built from the action and its position, for exports without a teacher."""
    label, action = state.record["label"], state.action
    if not action.is_click:
        return (f"The green mask covers the {label} closely; no sizeable part is missed or wrongly included, "
                "so the segmentation is complete.")
    where = _where(action.x, action.y)
    if action.kind.value == "positive":
        if state.turn == 0:
            return f"There is no mask yet. The {label} lies {where}; a positive click inside it starts the mask."
        return f"The green mask misses part of the {label} {where}; a positive click there adds it."
    return f"The green mask spills beyond the {label} {where}; a negative click there removes that region."


class Teacher:
    """Rationales from a vision-language model behind an OpenAI-compatible endpoint (vLLM, transformers serve).

    Every state's image is sent to the endpoint: for patient data use a teacher
    served inside the hospital network, never a public API.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", timeout: float = 60.0,
                 max_retries: int = 2, max_tokens: int = 160):
        from ...policies.openai_policy import OpenAIPolicy

        self.client = OpenAIPolicy(base_url, model, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                   max_tokens=max_tokens, temperature=0.0)
        self.name = f"{model} at {base_url}"

    def rationale(self, state: State, view: np.ndarray) -> str | None:
        """The teacher's reasoning for this state's action; None when it answered nothing usable."""
        record = state.record
        text = (f"Request: {record['query']}\nTarget: {record['label']}\n"
                f"Correct next action: {state.action.to_text()}")
        messages = [{"role": "system", "content": [{"type": "text", "text": TEACHER_SYSTEM}]},
                    {"role": "user", "content": [{"type": "image", "image": view}, {"type": "text", "text": text}]}]
        observation = Observation(view, view, state.previous_mask, record["query"], state.turn)
        answer = self.client.act(observation, messages)  # PolicyError (one line, names the endpoint) on failure
        inner = re.search(r"<think>(.*?)</think>", answer, re.DOTALL)
        cleaned = re.sub(r"<[^>]*>.*?</[^>]*>|<[^>]*>", " ", inner.group(1) if inner else answer, flags=re.DOTALL)
        cleaned = " ".join(cleaned.split())
        return cleaned or None


def iter_states(record: dict, include_final: bool) -> Iterator[State]:
    """Every turn of a record; the state after the last click too (Terminate) when `include_final`."""
    height, width = record["image_size"]
    previous, previous_iou = np.zeros((height, width), bool), 0.0
    for turn, step in enumerate(record["steps"]):
        yield State(record, turn, previous, parse_action(step["action"]), previous_iou)
        previous, previous_iou = decode_mask(step["mask"]), float(step["iou"])
    if include_final and record["steps"]:
        yield State(record, len(record["steps"]), previous, Action.terminate(), previous_iou)


def _prompt(prompts: PromptSet, state: State) -> list[dict]:
    """System + one user turn with string contents: TRL places the image before the user text, as `Agent` does."""
    return [{"role": "system", "content": prompts.system}, {"role": "user", "content": prompts.user_text(state.record["query"], state.turn)}]


def _read_image(path: str, size: list[int], where: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"{where}: cannot read image {path}: {error}") from None
    if list(rgb.shape[:2]) != list(size):
        raise ValueError(f"{where}: image {path} is {rgb.shape[1]}x{rgb.shape[0]}, the record says {size[1]}x{size[0]}")
    return rgb


class _Writer:
    """Files of one dataset folder, written into a staging folder."""

    def __init__(self, staging: Path, kind: ExportKind):
        self.staging = staging
        (staging / "images").mkdir()
        if kind == "grpo":
            (staging / "targets").mkdir()
        self.written: set[str] = set()

    def image(self, folder: str, name: str, pixels: np.ndarray) -> str:
        relative = f"{folder}/{name}.png"
        if relative not in self.written:
            Image.fromarray(pixels).save(self.staging / relative)
            self.written.add(relative)
        return relative


def export_mllm(trajectories: Iterable[str | Path], out_dir: str | Path, kind: ExportKind = "sft",
                prompts: PromptSet | None = None, teacher: Teacher | None = None, limit: int | None = None) -> dict:
    """Write an SFT or GRPO dataset folder from trajectory files; returns the counts written to meta.json."""
    if kind not in _FORMATS:
        raise ValueError(f"unknown export kind {kind!r}: use sft or grpo")
    if teacher is not None and kind != "sft":
        raise ValueError("a teacher writes rationales, which only the sft export has")
    prompts = prompts or load_prompts()
    files = [Path(path) for path in trajectories]
    if not files:
        raise ValueError("no trajectory file given")
    for path in files:
        if not path.is_file():
            raise ValueError(f"trajectory file {path} does not exist")
    counts = {"records": 0, "states": 0, "click_states": 0, "terminate_states": 0, "teacher_rationales": 0,
              "template_rationales": 0}
    with staged_folder(out_dir, lambda old: (old / "meta.json").is_file()) as staging:
        writer = _Writer(staging, kind)
        with (staging / "data.jsonl").open("w") as lines:
            for path in files:
                for number, record in enumerate(tqdm(read_trajectories(path), desc=f"export {kind}", unit="record"), 1):
                    if limit is not None and counts["records"] >= limit:
                        break
                    counts["records"] += 1
                    for row in _record_rows(writer, kind, record, f"{path}:{number}", prompts, teacher, counts):
                        lines.write(json.dumps(row) + "\n")
        meta = {"format": _FORMATS[kind], "trajectories": [str(path) for path in files], "prompts": prompts.source,
                "system_prompt": prompts.system, "teacher": teacher.name if teacher else None, "counts": counts}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return counts


def _record_rows(writer: _Writer, kind: ExportKind, record: dict, where: str, prompts: PromptSet,
                 teacher: Teacher | None, counts: dict) -> Iterator[dict]:
    image = _read_image(record["image"], record["image_size"], where)
    include_final = kind == "grpo" or record["stop"] in ("target_iou", "no_error")
    original = writer.image("images", _digest(record["image"]), image)
    target_path = None
    if kind == "grpo":
        target = read_mask(record["mask"], tuple(record["image_size"]))
        target_path = writer.image("targets", _digest(record["image"], record["mask"]), target.astype(np.uint8) * 255)
    clicks: list[list[float]] = []
    for state in iter_states(record, include_final):
        view = image if state.turn == 0 else overlay_mask(image, state.previous_mask)
        view_path = original if state.turn == 0 else writer.image("images", state.key, view)
        row = {"format": _FORMATS[kind], "id": f"{state.key}-{record['query_kind']}", "prompt": _prompt(prompts, state),
               "images": [view_path], "source": record["source"], "label": record["label"],
               "query": record["query"], "query_kind": record["query_kind"], "step": state.turn + 1}
        if kind == "sft":
            rationale = teacher.rationale(state, view) if teacher is not None else None
            counts["teacher_rationales" if rationale else "template_rationales"] += 1
            text = format_response(state.action, rationale or template_rationale(state))
            row.update(completion=[{"role": "assistant", "content": text}],
                       rationale="teacher" if rationale else "template")
        else:
            row.update(source_image=original, target=target_path, clicks=[list(click) for click in clicks],
                       previous_iou=state.previous_iou, annotator_action=state.action.to_text())
        yield row
        counts["states"] += 1
        counts["click_states" if state.action.is_click else "terminate_states"] += 1
        if state.action.is_click:  # the recorded click (6 decimals): the tool replays the recorded masks
            click = record["steps"][state.turn]["click"]
            clicks.append([click["x_norm"], click["y_norm"], 1.0 if click["positive"] else 0.0])


def load_mllm_dataset(folder: str | Path, kind: ExportKind):
    """The exported folder as a `datasets.Dataset` for TRL: image columns decoded lazily, paths made absolute."""
    from datasets import Dataset, Image as ImageFeature, Sequence

    folder = Path(folder)
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder} is not an exported MLLM dataset ({meta_path}: {error})") from None
    if meta.get("format") != _FORMATS.get(kind):
        raise ValueError(f"{folder} holds {meta.get('format')!r}, the {kind} recipe needs {_FORMATS.get(kind)!r}")
    rows = []
    with (folder / "data.jsonl").open() as stream:
        for line in stream:
            row = json.loads(line)
            row["images"] = [str(folder / path) for path in row["images"]]
            if kind == "grpo":
                row["source_image"], row["target"] = str(folder / row["source_image"]), str(folder / row["target"])
            rows.append(row)
    if not rows:
        raise ValueError(f"{folder} holds no samples")
    return Dataset.from_list(rows).cast_column("images", Sequence(ImageFeature()))
