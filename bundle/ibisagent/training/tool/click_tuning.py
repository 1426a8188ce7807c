"""Fine-tune LiteMedSAM's prompt encoder and mask decoder for positive and negative clicks.

LiteMedSAM was trained with boxes only. Here the image encoder stays frozen
(embeddings cached on disk) and the decoder learns from iterative click
simulation, as in interactive segmentation training: per batch a random
number of click steps, each adding a click in the current error region and
feeding the previous best logits back as `mask_input`, with a loss on every
step. Box batches are mixed in so box prompts stay as good as before, and
can be distilled from the frozen base decoder (learning without forgetting:
the base was trained on boxes). Some distilled batches may use arbitrary
boxes (anywhere, any size, learnt from the teacher alone), so the base's box
behaviour is kept beyond tight boxes around the training targets, for
structures and modalities the training split lacks. Box fraction, distillation weight and
learning rate may change per epoch (a list, the last entry repeating), so a
resumed run and a run from scratch follow the same schedule. Model selection
is on the validation split, in the model-input frame, and penalises any
source whose box IoU fell below the base decoder's. A run may start from an
earlier decoder (`init_decoder`, pinned by sha256) to learn new sources
without repeating the old epochs; the box floor stays the base decoder.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...evaluation import Pair, read_manifest
from ...imaging.io import read_mask
from ...imaging.transform import Frame, ImageTransform
from ...outputs import save_torch_atomic
from ...tools.base import LABEL_BOX_END, LABEL_BOX_START, LABEL_NEGATIVE, LABEL_POSITIVE
from ...tools.onnx_export import export_onnx
from ...tools.onnx_tool import OnnxSamTool
from ...tools.sam_model import PromptDecoder, build_lite_medsam
from ..click_sampling import jittered_box, prompt_tensors, sample_click
from ..embedding_cache import EmbeddingCache
from ..schedule import scheduled

__all__ = ["ClickTuningConfig", "random_box", "train_click_decoder", "validate"]

VALIDATION_CLICKS = (1, 3, 5)


@dataclass
class ClickTuningConfig:
    manifest: str
    out_dir: str = "runs/click_tuning"
    cache_dir: str = "~/.cache/ibisagent/embeddings"
    epochs: int = 4
    batch_size: int = 8
    learning_rate: float | list[float] = 1e-4
    weight_decay: float = 0.01
    max_click_steps: int = 6
    box_fraction: float | list[float] = 0.25
    box_distillation: float | list[float] = 0.0
    random_box_fraction: float | list[float] = 0.0  # of the distilled box batches: arbitrary boxes, teacher only
    exact_click_probability: float = 0.5
    seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    limit_train: int | None = None
    limit_val: int | None = None
    resume: bool = False
    # Start from another decoder (a state dict with `prompt_encoder.*`, `mask_decoder.*` keys, e.g. the
    # previous shipped one) instead of the wheel's; the sha256, when given, is checked so the recipe
    # cannot silently start from another file. The box-IoU floor stays the wheel's decoder.
    init_decoder: str | None = None
    init_decoder_sha256: str | None = None


@dataclass
class Sample:
    image: Path
    target: np.ndarray  # (S, S) bool in the model-input frame
    source: str


def _samples(pairs: list[Pair], input_size: int, limit: int | None) -> list[Sample]:
    pairs = sorted(pairs, key=lambda p: (str(p.image), p.label))[:limit]
    samples = []
    for pair in pairs:
        mask = read_mask(pair.mask)
        target = Frame(mask.shape[0], mask.shape[1], input_size).mask_to_input(mask)
        if target.any():
            samples.append(Sample(pair.image, target, pair.source))
    return samples


def _mask_losses(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-candidate BCE + Dice (B, K) and the candidates' true IoU (B, K)."""
    target = target[:, None].expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    probability = torch.sigmoid(logits)
    intersection = (probability * target).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * intersection + 1.0) / (probability.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1.0)
    with torch.no_grad():
        predicted = logits > 0
        hard_target = target > 0.5
        union = (predicted | hard_target).sum(dim=(2, 3)).float()
        true_iou = (predicted & hard_target).sum(dim=(2, 3)).float() / union.clamp(min=1.0)
    return bce + dice, true_iou


def _step_loss(logits: torch.Tensor, iou_prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The best candidate's mask loss (SAM's ambiguity-aware choice) plus IoU-head regression on all."""
    losses, true_iou = _mask_losses(logits, target)
    return losses.min(dim=1).values.mean() + F.mse_loss(iou_prediction, true_iou)


class _Batches:
    """Embeddings and targets of a sample list as tensors, by index."""

    def __init__(self, samples: list[Sample], embeddings: dict[Path, np.ndarray]):
        self.samples = samples
        self.embeddings = embeddings

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[Sample]]:
        chosen = [self.samples[i] for i in indices]
        features = torch.from_numpy(np.stack([self.embeddings[s.image] for s in chosen]).astype(np.float32))
        targets = torch.from_numpy(np.stack([s.target for s in chosen]).astype(np.float32))
        return features, targets, chosen


def _click_rollout(decoder: PromptDecoder, features: torch.Tensor, targets: torch.Tensor, steps: int,
                   rng: np.random.Generator | None, exact_probability: float, train: bool) -> list[np.ndarray]:
    """Run `steps` click steps; with `train`, backpropagate each step's loss. Returns per-step IoUs (B,)."""
    batch, side = features.shape[0], targets.shape[-1]
    target_masks = targets.numpy() > 0.5
    predictions = np.zeros_like(target_masks)
    points: list[list[tuple[float, float, int]]] = [[] for _ in range(batch)]
    mask_input = torch.zeros(batch, 1, side, side)
    has_mask = torch.zeros(batch)
    ious = []
    # Without a generator (validation) every click is the exact simulator's.
    sampler, exact = (rng, exact_probability) if rng is not None else (np.random.default_rng(0), 1.0)
    for _ in range(steps):
        for index in range(batch):
            click = sample_click(predictions[index], target_masks[index], sampler, exact)
            if click is not None:
                row, col, positive = click
                points[index].append((float(col), float(row), LABEL_POSITIVE if positive else LABEL_NEGATIVE))
        coords, labels = prompt_tensors(points)
        with torch.set_grad_enabled(train):
            logits, iou_prediction = decoder(features, coords, labels, mask_input, has_mask)
            logits, iou_prediction = logits[:, 1:], iou_prediction[:, 1:]
            if train:
                (_step_loss(logits, iou_prediction, targets) / steps).backward()
        best = iou_prediction.detach().argmax(dim=1)
        chosen = logits.detach()[torch.arange(batch), best][:, None]
        mask_input, has_mask = chosen, torch.ones(batch)
        predictions = chosen[:, 0].numpy() > 0
        union = (predictions | target_masks).sum(axis=(1, 2))
        ious.append((predictions & target_masks).sum(axis=(1, 2)) / np.maximum(union, 1))
    return ious


def random_box(side: int, rng: np.random.Generator, min_size: int = 8) -> np.ndarray:
    """A box (x0, y0, x1, y1) anywhere in a side x side frame, each side at least `min_size` long."""
    size = rng.integers(min_size, side + 1, 2)
    start = rng.integers(0, side - size + 1)
    return np.concatenate([start, start + size - 1]).astype(np.float32)


def _box_step(decoder: PromptDecoder, features: torch.Tensor, targets: torch.Tensor,
              rng: np.random.Generator | None, train: bool,
              teacher: PromptDecoder | None = None, distillation: float = 0.0, arbitrary: bool = False) -> np.ndarray:
    """One box prompt on the single-mask output; jittered when training. With a `teacher` and a
    `distillation` weight, the loss adds BCE towards the teacher's probabilities. `arbitrary` boxes
    (training only) ignore the targets: the teacher's output is the only label. Returns IoUs (B,)."""
    masks = targets.numpy() > 0.5
    if arbitrary:
        if rng is None or teacher is None or distillation <= 0:
            raise ValueError("arbitrary boxes are learnt from the teacher: they need training with distillation")
        boxes = [random_box(m.shape[0], rng) for m in masks]
    else:
        boxes = [jittered_box(m, rng) if rng is not None else jittered_box(m, np.random.default_rng(0), 0.0)
                 for m in masks]
    points = [[(b[0], b[1], LABEL_BOX_START), (b[2], b[3], LABEL_BOX_END)] for b in boxes]
    coords, labels = prompt_tensors(points)
    coords, labels = coords[:, :2], labels[:, :2]  # a box takes no padding point, as in SAM
    side = targets.shape[-1]
    no_mask = torch.zeros(len(masks), 1, side, side), torch.zeros(len(masks))
    with torch.set_grad_enabled(train):
        logits, iou_prediction = decoder(features, coords, labels, *no_mask)
        if train:
            loss = torch.zeros(()) if arbitrary else _step_loss(logits[:, :1], iou_prediction[:, :1], targets)
            if teacher is not None and distillation > 0:
                with torch.no_grad():
                    teacher_probability = torch.sigmoid(teacher(features, coords, labels, *no_mask)[0][:, :1])
                loss = loss + distillation * F.binary_cross_entropy_with_logits(logits[:, :1], teacher_probability)
            loss.backward()
    predictions = logits.detach()[:, 0].numpy() > 0
    return (predictions & masks).sum(axis=(1, 2)) / np.maximum((predictions | masks).sum(axis=(1, 2)), 1)


def validate(decoder: PromptDecoder, data: _Batches, batch_size: int = 16, base: dict | None = None) -> dict:
    """Exact simulator clicks and exact boxes on every sample; means per source and over sources.

    The score is (IoU@1 + IoU@5) / 2 over sources, minus every source's box-IoU shortfall
    against `base` (the base decoder's validation), so a checkpoint that trades box
    quality on one source for clicks is not kept."""
    decoder.eval()
    per_source: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for start in range(0, len(data.samples), batch_size):
        features, targets, chosen = data.get(np.arange(start, min(start + batch_size, len(data.samples))))
        click_ious = _click_rollout(decoder, features, targets, max(VALIDATION_CLICKS), None, 1.0, train=False)
        box_ious = _box_step(decoder, features, targets, None, train=False)
        for index, sample in enumerate(chosen):
            for k in VALIDATION_CLICKS:
                per_source[sample.source][f"iou@{k}"].append(float(click_ious[k - 1][index]))
            per_source[sample.source]["box_iou"].append(float(box_ious[index]))
    by_source = {source: {key: float(np.mean(values)) for key, values in metrics.items()}
                 for source, metrics in sorted(per_source.items())}
    keys = [f"iou@{k}" for k in VALIDATION_CLICKS] + ["box_iou"]
    overall = {key: float(np.mean([m[key] for m in by_source.values()])) for key in keys}
    shortfall = sum(max(0.0, base["by_source"][source]["box_iou"] - metrics["box_iou"])
                    for source, metrics in by_source.items() if base and source in base["by_source"])
    overall["box_shortfall"] = shortfall
    overall["score"] = (overall["iou@1"] + overall["iou@5"]) / 2.0 - shortfall
    return {"by_source": by_source, "overall": overall}


def _decoder_state(decoder: PromptDecoder) -> dict[str, torch.Tensor]:
    return {f"{part}.{key}": value.detach().clone() for part in ("prompt_encoder", "mask_decoder")
            for key, value in getattr(decoder, part).state_dict().items()}


def _initial_state(config: ClickTuningConfig) -> dict[str, torch.Tensor]:
    path = Path(config.init_decoder)
    if not path.is_file():
        raise FileNotFoundError(f"init_decoder {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if config.init_decoder_sha256 and digest != config.init_decoder_sha256:
        raise ValueError(f"init_decoder {path} has sha256 {digest}, the config expects {config.init_decoder_sha256}")
    return torch.load(path, map_location="cpu", weights_only=True)


def train_click_decoder(config: ClickTuningConfig) -> Path:
    """Train; returns the folder with `best_decoder.pt`, `last.pt` and `training_summary.json`."""
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)

    initial = _initial_state(config) if config.init_decoder else None  # a wrong file fails before any work
    parts = build_lite_medsam()
    encoder_dir = out_dir / "encoder_onnx"
    if not (encoder_dir / "tool.json").is_file():
        export_onnx(parts, ImageTransform(256, "minmax"), encoder_dir)
    cache = EmbeddingCache(Path(config.cache_dir).expanduser(), OnnxSamTool(encoder_dir))
    train = _samples(read_manifest(config.manifest, config.train_split), parts.input_size, config.limit_train)
    val = _samples(read_manifest(config.manifest, config.val_split), parts.input_size, config.limit_val)
    images = sorted({s.image for s in train + val})
    embeddings = {image: cache.get(image) for image in tqdm(images, desc="embeddings", unit="image")}
    train_data, val_data = _Batches(train, embeddings), _Batches(val, embeddings)

    decoder = PromptDecoder(parts)  # holds only the prompt encoder and mask decoder: the encoder stays frozen
    distilling = any(float(scheduled(config.box_distillation, epoch)) > 0 for epoch in range(config.epochs))
    teacher = PromptDecoder(build_lite_medsam()).eval().requires_grad_(False) if distilling else None
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=float(scheduled(config.learning_rate, 0)),
                                  weight_decay=config.weight_decay)
    state = {"epoch": 0, "best_score": -1.0, "history": [], "base": None, "init": None}
    last_path = out_dir / "last.pt"
    if config.resume and last_path.is_file():
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=False)
        decoder.load_state_dict({**decoder.state_dict(), **checkpoint["decoder"]})
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng.bit_generator.state = checkpoint["numpy_rng"]
        torch.set_rng_state(checkpoint["torch_rng"])
        state = checkpoint["state"]
    if state["base"] is None:
        state["base"] = validate(decoder, val_data)  # the wheel's decoder: the box-IoU floor
        if initial is not None:
            decoder.load_state_dict({**decoder.state_dict(), **initial})
            state["init"] = validate(decoder, val_data, base=state["base"])
            state["best_score"] = state["init"]["overall"]["score"]  # an epoch must beat its start to be kept
            save_torch_atomic(_decoder_state(decoder), out_dir / "best_decoder.pt")
            print("init: val " + ", ".join(f"{k} {v:.3f}" for k, v in state["init"]["overall"].items()), flush=True)

    steps_per_epoch = len(train) // config.batch_size
    for epoch in range(state["epoch"], config.epochs):
        decoder.train()
        box_fraction = float(scheduled(config.box_fraction, epoch))
        distillation = float(scheduled(config.box_distillation, epoch))
        random_fraction = float(scheduled(config.random_box_fraction, epoch)) if distillation > 0 else 0.0
        for group in optimizer.param_groups:
            group["lr"] = float(scheduled(config.learning_rate, epoch))
        order = rng.permutation(len(train))
        progress = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch")
        running = []
        for step in progress:
            features, targets, _ = train_data.get(order[step * config.batch_size:(step + 1) * config.batch_size])
            optimizer.zero_grad(set_to_none=True)
            arbitrary = False
            if rng.random() < box_fraction:
                arbitrary = random_fraction > 0 and bool(rng.random() < random_fraction)
                ious = [_box_step(decoder, features, targets, rng, True, teacher, distillation, arbitrary)]
            else:
                steps = int(rng.integers(1, config.max_click_steps + 1))
                ious = _click_rollout(decoder, features, targets, steps, rng, config.exact_click_probability, True)
            optimizer.step()
            if not arbitrary:  # an arbitrary box's mask is not meant to match the target
                running.append(float(np.mean(ious[-1])))
                progress.set_postfix(iou=f"{np.mean(running[-50:]):.3f}")
        metrics = validate(decoder, val_data, base=state["base"])
        box_by_source = {source: m["box_iou"] for source, m in metrics["by_source"].items()}
        state["history"].append({"epoch": epoch + 1, **metrics["overall"], "box_iou_by_source": box_by_source})
        if metrics["overall"]["score"] > state["best_score"]:
            state["best_score"] = metrics["overall"]["score"]
            save_torch_atomic(_decoder_state(decoder), out_dir / "best_decoder.pt")
        state["epoch"] = epoch + 1
        save_torch_atomic({"decoder": _decoder_state(decoder), "optimizer": optimizer.state_dict(),
                      "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "state": state},
                     last_path)
        print(f"epoch {epoch + 1}: val " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["overall"].items()), flush=True)

    summary = {
        "config": asdict(config), "train_samples": len(train), "val_samples": len(val),
        "base_val": state["base"], "init_val": state.get("init"), "history": state["history"], "best_score": state["best_score"],
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "peak_memory_mib_this_run": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir
