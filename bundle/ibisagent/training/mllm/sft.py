"""Stage 1 of the MLLM policy: supervised fine-tuning on exported trajectory states (TRL SFTTrainer + LoRA).

Each sample is one turn as the agent renders it (system prompt, image or
overlay, user text) with the annotator's answer as the completion; the loss
covers the completion only, so the model learns to answer, not to repeat
prompts. LoRA adapters sit on the language model; the vision tower stays
frozen. Run it with `ibis train-sft --config configs/train_sft.yaml`, or
under `accelerate launch` for several GPUs (docs/mllm_training.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from .export import load_mllm_dataset
from .model import RecipeSettings, finish_training, load_model, load_processor

__all__ = ["SFTRecipe", "train_sft"]


@dataclass
class SFTRecipe(RecipeSettings):
    out_dir: str = "runs/mllm/sft"
    max_length: int | None = None  # tokens; None never truncates (truncation could cut image tokens)


def train_sft(recipe: SFTRecipe) -> dict:
    """Train, save the adapter (and processor) to `out_dir/final`, merge when `merged_dir` is set.

    Returns the training log (`log_history`), the adapter folder and the
    merged folder; the log is also written to `out_dir/sft_log.json`.
    """
    from trl import SFTConfig, SFTTrainer

    dataset = load_mllm_dataset(recipe.dataset, "sft")
    processor = load_processor(recipe.model, recipe.min_pixels, recipe.max_pixels)
    model = load_model(recipe.model, dtype=recipe.dtype)
    args = recipe.trainer_config(SFTConfig, max_length=recipe.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         peft_config=recipe.lora.peft_config())
    return finish_training(trainer, recipe, processor, "sft_log.json")
