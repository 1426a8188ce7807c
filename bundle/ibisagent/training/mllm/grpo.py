"""Stage 2 of the MLLM policy: GRPO with the segmentation tool in the loop (TRL GRPOTrainer + LoRA).

Each sample is one exported state. For every sampled answer the tool replays
the state's earlier clicks (so the mask and the low-res logits it feeds back
are the ones the annotator saw), applies the answer's action and returns the
new mask; the five reference rewards of `rewards.py` score the step against
the ground truth. Each term is its own TRL reward function, so TRL logs
`rewards/<term>/mean` and `/std` for all five, and the trainer's weights are
`RewardConfig.weights` normalised to sum to one: the total is `combine`, the
reference's mean. The tool is any spec `build_tool` takes: in-process
(`lite-medsam`, `onnx:DIR`) or served (`triton:HOST:PORT`), which lets
several GPU workers share one tool server.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from ...imaging.io import read_mask
from ...protocol import parse_response
from ...tools.base import Click, ImageEmbedding, SegmentationTool
from ..rewards import REWARD_TERMS, RewardConfig, StepOutcome, step_rewards
from .export import load_mllm_dataset
from .model import RecipeSettings, finish_training, load_model, load_processor

__all__ = ["GRPORecipe", "ToolRewards", "train_grpo"]


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        if len(self) > self.size:
            self.popitem(last=False)
        return value


def _completion_text(completion: Any) -> str:
    """TRL passes conversational completions as a list of messages; plain ones as text."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content or ""


class ToolRewards:
    """The five reward terms of completions, computed once per completion with the tool in the loop.

    TRL calls each term's function in turn on the same batch; the outcome of
    a completion is cached, so the tool runs once per completion, and the
    embedding, replayed state and ground truth once per image or state.
    """

    def __init__(self, tool: SegmentationTool, config: RewardConfig = RewardConfig(), cache_size: int = 256):
        self.tool, self.config = tool, config
        self._embeddings = _LRU(16)
        self._targets = _LRU(64)
        self._states = _LRU(cache_size)
        self._terms = _LRU(cache_size * 16)

    def _embedding(self, image_path: str) -> ImageEmbedding:
        def encode() -> ImageEmbedding:
            with Image.open(image_path) as image:
                return self.tool.encode(np.asarray(image.convert("RGB")))
        return self._embeddings.get_or(image_path, encode)

    def _state(self, image_path: str, clicks: tuple[tuple[float, float, float], ...]):
        """The mask and low-res logits after replaying `clicks` (the state the policy saw)."""
        def replay():
            embedding = self._embedding(image_path)
            mask, low_res = np.zeros((embedding.frame.height, embedding.frame.width), bool), None
            for index in range(1, len(clicks) + 1):
                output = self.tool.predict(embedding, [Click(x, y, bool(p)) for x, y, p in clicks[:index]], low_res)
                mask, low_res = output.mask, output.low_res_logits
            return mask, low_res
        return self._states.get_or((image_path, clicks), replay)

    def terms(self, completion: str, source_image: str, target: str, clicks: Sequence[Sequence[float]],
              step: int) -> dict[str, float]:
        """All five terms for one answer in one state."""
        state_clicks = tuple(tuple(float(v) for v in click) for click in clicks)
        key = (source_image, state_clicks, int(step), completion)

        def score() -> dict[str, float]:
            previous, low_res = self._state(source_image, state_clicks)
            truth = self._targets.get_or(target, lambda: read_mask(target, previous.shape))
            action = parse_response(completion).action
            mask = previous
            if action is not None and action.is_click:
                all_clicks = [Click(x, y, bool(p)) for x, y, p in state_clicks]
                all_clicks.append(Click(action.x, action.y, action.kind.value == "positive"))
                mask = self.tool.predict(self._embedding(source_image), all_clicks, low_res).mask
            return step_rewards(StepOutcome(completion, previous, mask, truth, int(step)), self.config)
        return self._terms.get_or(key, score)

    def functions(self) -> list[Callable[..., list[float]]]:
        """One TRL reward function per term, named after it (TRL logs rewards/<name>/mean)."""
        def make(term: str) -> Callable[..., list[float]]:
            def reward(completions: list, source_image: list[str], target: list[str], clicks: list, step: list[int],
                       **_: Any) -> list[float]:
                return [self.terms(_completion_text(c), image, mask, prior, number)[term]
                        for c, image, mask, prior, number in zip(completions, source_image, target, clicks, step)]
            reward.__name__ = reward.__qualname__ = term
            return reward
        return [make(term) for term in REWARD_TERMS]

    def weights(self) -> list[float]:
        """The trainer's reward weights: the config's, normalised, so the total is the weighted mean."""
        total = sum(self.config.weights.get(term, 0.0) for term in REWARD_TERMS)
        return [self.config.weights.get(term, 0.0) / total for term in REWARD_TERMS]


@dataclass
class GRPORecipe(RecipeSettings):
    out_dir: str = "runs/mllm/grpo"
    tool: str = "lite-medsam"  # any build_tool spec; triton:HOST:PORT shares one served tool between workers
    rewards: RewardConfig = field(default_factory=RewardConfig)
    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    beta: float = 0.04  # KL coefficient against the starting model
    learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError("GRPO compares answers within a group: num_generations must be at least 2")
        if isinstance(self.rewards, dict):
            self.rewards = RewardConfig(**self.rewards)


def train_grpo(recipe: GRPORecipe, tool: SegmentationTool | None = None) -> dict:
    """Train from `recipe.model` (normally the merged SFT checkpoint); save the adapter, merge when asked.

    `tool` is an already built tool to use instead of building `recipe.tool`.

    Returns the log history (with rewards/<term>/mean for every term), the
    adapter folder and the merged folder; the log is written to
    `out_dir/grpo_log.json`.
    """
    from trl import GRPOConfig, GRPOTrainer

    from ...tools.factory import build_tool

    dataset = load_mllm_dataset(recipe.dataset, "grpo")
    rewards = ToolRewards(tool or build_tool(recipe.tool), recipe.rewards)
    processor = load_processor(recipe.model, recipe.min_pixels, recipe.max_pixels)
    model = load_model(recipe.model, dtype=recipe.dtype)
    args = recipe.trainer_config(GRPOConfig, num_generations=recipe.num_generations,
                                 max_completion_length=recipe.max_completion_length, temperature=recipe.temperature,
                                 beta=recipe.beta, reward_weights=rewards.weights(), remove_unused_columns=False)
    trainer = GRPOTrainer(model=model, reward_funcs=rewards.functions(), args=args, train_dataset=dataset,
                          processing_class=processor, peft_config=recipe.lora.peft_config())
    return finish_training(trainer, recipe, processor, "grpo_log.json")
