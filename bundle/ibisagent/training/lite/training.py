"""Train IBIS-lite with the paper's two stages: SFT on simulated trajectories, then GRPO with the tool in the loop.

Stage 1 (SFT) imitates the annotator of `ibis trajectories`, then, in
optional DAgger rounds, the annotator's answers on the states the policy
itself reaches (`rollouts`), starting from the best SFT epoch. Stage 2 (GRPO)
starts from the SFT policy: on its own rollouts, at each state it samples a
group of actions, runs each through the segmentation tool, scores it with
the five fine-grained rewards (`rewards.py`), and raises the probability of
the actions that beat their group's mean, with a KL penalty towards the SFT
policy. Each stage keeps the checkpoint with the best validation rollouts
(mean over sources of the final IoU, referring and reasoning queries).
Everything runs on cached image embeddings in the model-input frame.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...evaluation import load_queries, read_manifest, select_pairs
from ...policies.lite import LITE_FORMAT, load_lite_checkpoint, rationale
from ...policies.lite_model import (LiteConfig, LitePolicyNet, action_distribution, greedy_actions, masked_logits,
                                    pool_embedding, state_tensors)
from ...policies.query_encoder import QUERY_ENCODER_NAME, QueryEncoder
from ...outputs import save_torch_atomic
from ...protocol import Action, format_response
from ...tools.factory import build_tool
from ...tools.torch_tool import TorchSamTool
from ..click_env import Candidate, ClickEnvironment, Episodes, load_episodes
from ..embedding_cache import EmbeddingCache
from ..rewards import RewardConfig, StepOutcome, combine, step_rewards
from ..schedule import scheduled
from .data import StateSet, build_states, label_queries
from .rollouts import candidate, collect_on_policy_states, validate_policy, validation_queries

__all__ = ["LiteTrainingConfig", "train_lite"]


@dataclass
class LiteTrainingConfig:
    manifest: str
    queries: str
    trajectories: list[str]
    out_dir: str = "runs/lite"
    cache_dir: str = "~/.cache/ibisagent/embeddings"
    tool: str = "lite-medsam"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["sft", "grpo"])
    # stage 1: SFT
    sft_epochs: int = 5
    sft_batch_size: int = 64
    sft_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    region_share: float = 0.5
    # stage 1, continued: DAgger rounds after the SFT epochs (0: none); pairs, steps and gain
    # may be lists by round (the last entry repeating)
    dagger_rounds: int = 0
    dagger_epochs: int = 1  # imitation epochs on the grown set per round
    dagger_pairs: int | None | list[int | None] = None  # training pairs rolled out per round (None: all)
    dagger_max_steps: int | list[int] = 6
    dagger_target_iou: float = 0.9  # the annotator's Terminate, as in `ibis trajectories`
    dagger_min_gain: float | None | list[float | None] = None  # Terminate where the annotator's click gains less
    # stage 2: GRPO
    grpo_iterations: int = 25
    grpo_batch_size: int = 6  # episodes per iteration
    grpo_group_size: int = 6  # sampled actions per state
    grpo_learning_rate: float = 1e-4
    grpo_kl: float = 0.05
    grpo_max_steps: int = 6
    rewards: RewardConfig = field(default_factory=RewardConfig)
    # validation
    val_split: str = "val"
    val_per_source: int | None = 20
    val_max_turns: int = 10
    validate_every: int = 25  # GRPO iterations between validations
    resume: bool = False

    @property
    def imitation_epochs(self) -> int:
        """Stage 1 in epochs: the SFT epochs, then each DAgger round's epochs."""
        return self.sft_epochs + self.dagger_rounds * self.dagger_epochs


def _response(candidate: Candidate, env: ClickEnvironment, row: int, query: str, probability: float) -> str:
    """The protocol text the policy would print (coordinates normalised to the frame the masks live in)."""
    side = env.targets.shape[-1]
    x, y = candidate.x / side, candidate.y / side
    think = rationale(query, float(env.masks[row].mean()), len(env.clicks[row]), candidate.kind, x, y, probability)
    action = {"positive": Action.positive, "negative": Action.negative}.get(candidate.kind)
    return format_response(action(x, y) if action else Action.terminate(), think)


def _policy_checkpoint(network: LitePolicyNet, stage: str, tool: TorchSamTool, validation: dict,
                       config: LiteTrainingConfig) -> dict:
    return {
        "format": LITE_FORMAT, "stage": stage, "config": network.config.to_dict(),
        "state_dict": {k: v.detach().clone().half() for k, v in network.state_dict().items()},
        "encoder_key": tool.encoder_key, "tool": tool.name, "query_encoder": QUERY_ENCODER_NAME,
        "validation": validation["overall"], "training": {"trajectories": config.trajectories, "seed": config.seed},
    }


def _pooled_embeddings(cache: EmbeddingCache, images: list[str]) -> torch.Tensor:
    """(N, C, G/2, G/2) float16: what the trunk reads, for every image of a state set."""
    return torch.stack([pool_embedding(torch.from_numpy(cache.get(image)[None].astype(np.float32)))[0].half()
                        for image in tqdm(images, desc="pooled embeddings", unit="image")])


def _dagger_round(network: LitePolicyNet, config: LiteTrainingConfig, round_index: int, episodes: Episodes,
                  cache: EmbeddingCache, encoder: QueryEncoder, queries: dict, rng: np.random.Generator,
                  tool: TorchSamTool) -> StateSet:
    """On-policy states of the current network on training pairs, labelled by the annotator."""
    pairs = scheduled(config.dagger_pairs, round_index)
    count = len(episodes.pairs) if pairs is None else min(pairs, len(episodes.pairs))
    rows = sorted(int(r) for r in rng.choice(len(episodes.pairs), count, replace=False))
    labels = sorted({episodes.pairs[r].label for r in rows})
    wordings = dict(zip(labels, label_queries(queries, labels)))
    texts = [wordings[episodes.pairs[r].label][rng.integers(len(wordings[episodes.pairs[r].label]))] for r in rows]
    return collect_on_policy_states(network, episodes, rows, cache, tool.decoder, torch.from_numpy(encoder(texts)),
                                    scheduled(config.dagger_max_steps, round_index), config.dagger_target_iou,
                                    config.region_share, scheduled(config.dagger_min_gain, round_index))


def _train_sft(network: LitePolicyNet, config: LiteTrainingConfig, cache: EmbeddingCache, encoder: QueryEncoder,
               queries: dict, validate, rng: np.random.Generator, out_dir: Path, state: dict) -> None:
    """SFT epochs on the trajectories, then DAgger rounds (each: collect, then `dagger_epochs` epochs on all)."""
    states = build_states(config.trajectories, network.config, config.region_share)
    # A resumed run reads the rounds it already collected back, rather than replaying them with another policy.
    started_rounds = -(-max(0, state["sft_epoch"] - config.sft_epochs) // config.dagger_epochs)
    states = StateSet.join([states] + [torch.load(out_dir / f"dagger_round{k + 1}.pt", weights_only=False)
                                       for k in range(started_rounds)])
    pooled_all = _pooled_embeddings(cache, states.images)
    vectors = [torch.from_numpy(encoder(texts)) for texts in label_queries(queries, states.labels)]
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.sft_learning_rate, weight_decay=config.weight_decay)
    if state.get("sft_optimizer"):
        optimizer.load_state_dict(state.pop("sft_optimizer"))
    episodes = None
    for epoch in range(state["sft_epoch"], config.imitation_epochs):
        dagger_epoch = epoch - config.sft_epochs
        if dagger_epoch >= 0 and dagger_epoch % config.dagger_epochs == 0:
            round_index = dagger_epoch // config.dagger_epochs
            if round_index == 0:  # DAgger starts from the selected SFT policy, as GRPO does
                network.load_state_dict(load_lite_checkpoint(out_dir / "sft_best.pt")[0].state_dict())
            if episodes is None:  # the training pairs, read once for all rounds
                episodes = load_episodes(read_manifest(config.manifest, "train"), network.config.frame_size)
            collected = _dagger_round(network, config, round_index, episodes, cache, encoder, queries, rng,
                                      state["tool"])
            save_torch_atomic(collected, out_dir / f"dagger_round{round_index + 1}.pt")
            state.setdefault("dagger_states", []).append(len(collected))
            print(f"dagger round {round_index + 1}: {len(collected)} on-policy states", flush=True)
            images = states.images
            states = StateSet.join([states, collected])
            if states.images != images:  # rollouts on images the trajectories lacked
                pooled_all = _pooled_embeddings(cache, states.images)
            vectors = [torch.from_numpy(encoder(texts)) for texts in label_queries(queries, states.labels)]
        network.train()
        order = rng.permutation(len(states))
        steps_per_epoch = len(states) // config.sft_batch_size
        progress = tqdm(range(steps_per_epoch), desc=f"sft {epoch + 1}/{config.imitation_epochs}", unit="batch")
        running = []
        for step in progress:
            batch = order[step * config.sft_batch_size:(step + 1) * config.sft_batch_size]
            query = torch.stack([vectors[l][rng.integers(len(vectors[l]))] for l in states.label_index[batch]])
            logits = network(pooled_all[states.image_index[batch]].float(), states.maps[batch].float(), query,
                             states.steps[batch])
            log_probs = F.log_softmax(masked_logits(logits, states.blocked[batch]), dim=1)
            loss = -(states.targets[batch].float() * log_probs).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            progress.set_postfix(loss=f"{np.mean(running[-50:]):.3f}")
        metrics = validate(network)
        stage = "sft" if dagger_epoch < 0 else "dagger"
        state["history"].append({"stage": stage, "epoch": epoch + 1, "loss": float(np.mean(running)),
                                 **metrics["overall"]})
        print(f"{stage} epoch {epoch + 1}: loss {np.mean(running):.3f}, val " +
              ", ".join(f"{k} {v:.3f}" for k, v in metrics["overall"].items()), flush=True)
        if metrics["overall"]["score"] > state["sft_best"]:
            state["sft_best"] = metrics["overall"]["score"]
            save_torch_atomic(_policy_checkpoint(network, stage, state["tool"], metrics, config),
                              out_dir / "sft_best.pt")
        state["sft_epoch"] = epoch + 1
        _save_resume(out_dir, network, optimizer, rng, state, "sft_optimizer")


def _train_grpo(network: LitePolicyNet, config: LiteTrainingConfig, cache: EmbeddingCache, encoder: QueryEncoder,
                queries: dict, validate, rng: np.random.Generator, out_dir: Path, state: dict,
                tool: TorchSamTool, reference: LitePolicyNet) -> None:
    episodes = load_episodes(read_manifest(config.manifest, "train"), network.config.frame_size)
    labels = sorted({p.label for p in episodes.pairs})
    wordings = dict(zip(labels, label_queries(queries, labels)))
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.grpo_learning_rate, weight_decay=config.weight_decay)
    if state.get("grpo_optimizer"):
        optimizer.load_state_dict(state.pop("grpo_optimizer"))
    group = config.grpo_group_size
    progress = tqdm(range(state["grpo_iteration"], config.grpo_iterations), desc="grpo", unit="iteration")
    for iteration in progress:
        network.train()
        rows = [int(r) for r in rng.choice(len(episodes.pairs), config.grpo_batch_size, replace=False)]
        texts = [wordings[episodes.pairs[r].label][rng.integers(len(wordings[episodes.pairs[r].label]))] for r in rows]
        query = torch.from_numpy(encoder(texts))
        features = episodes.features(cache, rows)
        pooled = pool_embedding(features)
        env = ClickEnvironment(tool.decoder, features, episodes.targets[rows], episodes.valid[rows])
        optimizer.zero_grad(set_to_none=True)
        log = defaultdict(list)
        for turn in range(config.grpo_max_steps):
            active = [i for i in range(len(rows)) if not env.done[i]]
            if not active:
                break
            maps, steps, blocked = state_tensors([env.state(r) for r in active], network.config)
            logits = network(pooled[active], maps, query[active], steps)
            distribution = action_distribution(logits, blocked)
            with torch.no_grad():
                reference_distribution = action_distribution(reference(pooled[active], maps, query[active], steps),
                                                             blocked)
            samples = distribution.sample((group,))  # (G, A)
            if turn == 0:  # nothing to stop on yet: resample any Terminate as the best click
                terminal = samples == logits.shape[1] - 1
                samples[terminal] = greedy_actions(distribution.probs, may_stop=False).expand(group, -1)[terminal]
            candidates = [[candidate(int(samples[g, a]), network.config) for a in range(len(active))]
                          for g in range(group)]
            flat_rows = [active[a] for g in range(group) for a in range(len(active))]
            flat = [c for g in range(group) for c in candidates[g]]
            masks, new_logits = env.try_actions(flat_rows, flat)
            probabilities = distribution.probs.gather(1, samples.T).T  # (G, A)
            rewards = np.zeros((group, len(active)))
            for g in range(group):
                for a, row in enumerate(active):
                    k = g * len(active) + a
                    response = _response(flat[k], env, row, texts[row], float(probabilities[g, a].detach()))
                    terms = step_rewards(StepOutcome(response, env.masks[row], masks[k], env.targets[row],
                                                     turn + 1), config.rewards)
                    rewards[g, a] = combine(terms, config.rewards)
                    for name, value in terms.items():
                        log[name].append(value)
            advantages = torch.from_numpy((rewards - rewards.mean(axis=0)) / (rewards.std(axis=0) + 1e-4)).float()
            policy_loss = -(advantages * distribution.log_prob(samples)).mean()
            kl = torch.distributions.kl_divergence(distribution, reference_distribution).mean()
            ((policy_loss + config.grpo_kl * kl) / config.grpo_max_steps).backward()
            log["reward"].append(float(rewards.mean()))
            log["reward_std"].append(float(rewards.std(axis=0).mean()))
            log["kl"].append(kl.item())
            keep = list(range(len(active)))  # continue each episode with its first sample
            env.commit(active, [flat[a] for a in keep], masks[keep], new_logits[keep])
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        summary = {k: float(np.mean(v)) for k, v in log.items()}
        state["grpo_log"].append({"iteration": iteration + 1, **summary})
        progress.set_postfix(reward=f"{summary['reward']:.3f}", kl=f"{summary['kl']:.4f}")
        state["grpo_iteration"] = iteration + 1
        if (iteration + 1) % config.validate_every == 0 or iteration + 1 == config.grpo_iterations:
            metrics = validate(network)
            state["history"].append({"stage": "grpo", "iteration": iteration + 1, **metrics["overall"]})
            print(f"grpo iteration {iteration + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()) +
                  "; val " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["overall"].items()), flush=True)
            if metrics["overall"]["score"] > state["grpo_best"]:
                state["grpo_best"] = metrics["overall"]["score"]
                save_torch_atomic(_policy_checkpoint(network, "sft+grpo", tool, metrics, config), out_dir / "grpo_best.pt")
            _save_resume(out_dir, network, optimizer, rng, state, "grpo_optimizer")


def _save_resume(out_dir: Path, network: LitePolicyNet, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
                 state: dict, optimizer_key: str) -> None:
    saved = {k: v for k, v in state.items() if k != "tool"}
    save_torch_atomic({"network": network.state_dict(), optimizer_key: optimizer.state_dict(),
                  "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "state": saved},
                 out_dir / "last.pt")


def train_lite(config: LiteTrainingConfig) -> Path:
    """Run the configured stages; returns the folder with `sft_best.pt`, `grpo_best.pt` and the summary."""
    started = time.perf_counter()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    tool = build_tool(config.tool, backend="torch")  # training reads the torch parts
    if not isinstance(tool, TorchSamTool):
        raise ValueError(f"training needs an in-process torch tool, got {tool.name}")
    cache = EmbeddingCache(Path(config.cache_dir).expanduser(), tool)
    queries = load_queries(config.queries)
    encoder = QueryEncoder()
    network = LitePolicyNet(LiteConfig())
    state = {"sft_epoch": 0, "sft_best": -1.0, "grpo_iteration": 0, "grpo_best": -1.0, "history": [], "grpo_log": []}
    last = out_dir / "last.pt"
    if config.resume and last.is_file():
        checkpoint = torch.load(last, map_location="cpu", weights_only=False)
        network.load_state_dict(checkpoint["network"])
        rng.bit_generator.state = checkpoint["numpy_rng"]
        torch.set_rng_state(checkpoint["torch_rng"])
        state = checkpoint["state"]
        state.update({k: checkpoint[k] for k in ("sft_optimizer", "grpo_optimizer") if k in checkpoint})
    state["tool"] = tool

    episodes = load_episodes(select_pairs(read_manifest(config.manifest, config.val_split), config.val_per_source),
                         network.config.frame_size)
    vectors = validation_queries(episodes, queries, encoder)

    def validate(net: LitePolicyNet) -> dict:
        return validate_policy(net, episodes, cache, tool.decoder, vectors, config.val_max_turns)

    if "sft" in config.stages and state["sft_epoch"] < config.imitation_epochs:
        _train_sft(network, config, cache, encoder, queries, validate, rng, out_dir, state)
    if "grpo" in config.stages:
        if not (out_dir / "sft_best.pt").is_file():
            raise ValueError(f"GRPO starts from an SFT policy: {out_dir / 'sft_best.pt'} not found; run the sft stage")
        reference, _ = load_lite_checkpoint(out_dir / "sft_best.pt")  # the KL anchor, frozen
        for parameter in reference.parameters():
            parameter.requires_grad_(False)
        if state["grpo_iteration"] == 0:  # GRPO starts from the selected SFT policy
            network.load_state_dict(reference.state_dict())
        _train_grpo(network, config, cache, encoder, queries, validate, rng, out_dir, state, tool, reference)

    summary = {"config": {**asdict(config), "rewards": asdict(config.rewards)},
               **{k: v for k, v in state.items() if k != "tool"},
               "wall_seconds_this_run": round(time.perf_counter() - started, 1)}
    (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir
