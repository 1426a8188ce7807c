"""The Qwen2.5-VL checkpoint as the MLLM recipes train it: pixel budget, frozen vision tower, LoRA, merge.

Both recipes (SFT, GRPO) load a local Hugging Face folder, train LoRA
adapters on the language model only (the vision tower and its merger stay
frozen, as the vision features carry over from pre-training), and end with a
merged folder: the LoRA deltas folded into the weights, saved with the
processor, so the `hf` policy and Triton's `ibis_mllm` load it like any
Qwen2.5-VL checkpoint, without peft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..staging import staged_folder

__all__ = ["LoraSettings", "RecipeSettings", "LANGUAGE_LINEAR_LAYERS", "load_model", "load_processor",
           "freeze_vision", "merge_adapter", "finish_training"]

# Every linear layer of the language model's blocks; the vision tower's blocks (model.visual...) share some of
# these names, so the pattern is anchored on the language model.
LANGUAGE_LINEAR_LAYERS = (r".*language_model\.layers\.\d+\."
                          r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the language model; `rank` 0 trains the language model's full weights instead."""

    rank: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: str = LANGUAGE_LINEAR_LAYERS

    def __post_init__(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA needs rank >= 0, alpha > 0 and dropout in [0, 1); got {self}")

    def peft_config(self):
        """The peft config, or None for full fine-tuning."""
        if self.rank == 0:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


@dataclass
class RecipeSettings:
    """What both recipes share: checkpoint in, dataset, pixel budget, LoRA, optimisation, outputs.

    `trainer_args` passes any further TRL/transformers training argument
    through unchanged (e.g. `deepspeed`, `report_to`, `warmup_ratio`).
    """

    model: str = ""  # a local Hugging Face folder (Qwen2.5-VL / Qwen2-VL)
    dataset: str = ""  # a folder written by `ibis export-mllm`
    out_dir: str = "runs/mllm"
    merged_dir: str | None = None  # where the merged checkpoint goes after training; None: keep the adapter only
    min_pixels: int = 56 * 56
    max_pixels: int = 1280 * 28 * 28
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    bf16: bool = True
    gradient_checkpointing: bool = True
    logging_steps: int = 10
    save_steps: int = 500
    seed: int = 0
    use_cpu: bool = False
    resume: bool = False  # continue from the newest checkpoint-* in out_dir
    trainer_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model or not self.dataset:
            raise ValueError("a recipe needs `model` (a local checkpoint folder) and `dataset` (an export folder)")
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("per_device_batch_size and gradient_accumulation_steps must be at least 1")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.merged_dir and self.lora.rank == 0:
            raise ValueError("merged_dir needs a LoRA adapter (lora.rank > 0); full fine-tuning saves the checkpoint "
                             "itself in out_dir/final")

    def trainer_config(self, config_class: type, **specific: Any) -> Any:
        """TRL's config (SFTConfig, GRPOConfig) from these settings; an unknown `trainer_args` key is one line."""
        try:
            return config_class(**self.training_arguments(), **specific)
        except TypeError as error:
            raise ValueError(f"trainer_args: {error}") from None

    def training_arguments(self) -> dict[str, Any]:
        """The keyword arguments common to SFTConfig and GRPOConfig."""
        arguments = dict(
            output_dir=self.out_dir, learning_rate=self.learning_rate, num_train_epochs=self.epochs,
            max_steps=self.max_steps, per_device_train_batch_size=self.per_device_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps, bf16=self.bf16 and not self.use_cpu,
            gradient_checkpointing=self.gradient_checkpointing, logging_steps=self.logging_steps,
            save_steps=self.save_steps, seed=self.seed, use_cpu=self.use_cpu, report_to="none",
        )
        return {**arguments, **self.trainer_args}

    @property
    def dtype(self) -> str:
        """The weights' dtype while training: bf16 on GPUs that use it, fp32 otherwise."""
        return "bfloat16" if self.bf16 and not self.use_cpu else "float32"

    def resume_checkpoint(self) -> bool | None:
        """True when resuming and a checkpoint exists (the trainer then takes the newest)."""
        return True if self.resume and any(Path(self.out_dir).glob("checkpoint-*")) else None


def _check_folder(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model folder (no config.json)")
    return path


def load_processor(path: str | Path, min_pixels: int, max_pixels: int):
    """The checkpoint's processor with the image pixel budget set (images are resized to fit it)."""
    from transformers import AutoProcessor

    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"pixel budget needs 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    processor = AutoProcessor.from_pretrained(_check_folder(path), local_files_only=True)
    processor.image_processor.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    return processor


def load_model(path: str | Path, dtype: str = "auto", attn_implementation: str | None = None):
    """The model of a local folder, its vision tower frozen."""
    from transformers import AutoModelForImageTextToText

    options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForImageTextToText.from_pretrained(_check_folder(path), local_files_only=True, dtype=dtype,
                                                        **options)
    freeze_vision(model)
    return model


def freeze_vision(model) -> int:
    """Stop gradients into the vision tower (patch embedding, blocks, merger); returns the parameters frozen."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (model.visual): not a Qwen2-VL family model")
    frozen = 0
    for parameter in visual.parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base_model: str | Path | None = None,
                  dtype: str = "auto") -> Path:
    """Fold a LoRA adapter into its base model and save model + processor to `out_dir`, atomically.

    The base is the adapter's recorded `base_model_name_or_path` unless given.
    Full fine-tuning (LoRA rank 0) saves a plain checkpoint and needs no merge.
    """
    from peft import PeftModel
    from transformers import AutoProcessor

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(f"{adapter_dir} holds no LoRA adapter (no adapter_config.json)")
    base = Path(base_model or json.loads(config_path.read_text())["base_model_name_or_path"])
    model = load_model(base, dtype=dtype)
    merged = PeftModel.from_pretrained(model, adapter_dir, local_files_only=True).merge_and_unload()
    for parameter in merged.parameters():
        parameter.requires_grad_(True)  # a plain checkpoint again
    saved_processor = any((adapter_dir / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))
    processor_source = adapter_dir if saved_processor else base  # the training pixel budget, when it was saved
    processor = AutoProcessor.from_pretrained(processor_source, local_files_only=True)
    with staged_folder(out_dir, lambda old: (old / "ibisagent_merge.json").is_file()) as staging:
        merged.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / "ibisagent_merge.json").write_text(json.dumps(
            {"base_model": str(base), "adapter": str(adapter_dir)}, indent=2) + "\n")
    return out_dir


def finish_training(trainer, recipe: RecipeSettings, processor, log_name: str) -> dict:
    """Train; save the adapter and processor to `out_dir/final` and the log; merge when `merged_dir` is set.

    Only the main process writes; the others wait, so a multi-GPU run leaves
    one consistent set of outputs. Returns the log history and both folders.
    """
    from ...outputs import write_json_atomic

    trainer.train(resume_from_checkpoint=recipe.resume_checkpoint())
    final = Path(recipe.out_dir) / "final"
    main = trainer.accelerator.is_main_process
    if main:
        with staged_folder(final, lambda old: (old / "training_args.bin").is_file()) as staging:
            trainer.save_model(str(staging))
            processor.save_pretrained(staging)
        write_json_atomic(Path(recipe.out_dir) / log_name, trainer.state.log_history)
    trainer.accelerator.wait_for_everyone()
    merged = None
    if main and recipe.merged_dir and recipe.lora.rank > 0:
        merged = str(merge_adapter(final, recipe.merged_dir, base_model=recipe.model))
    return {"log_history": trainer.state.log_history, "adapter": str(final), "merged": merged}
