"""Greedy rollouts of IBIS-lite with the tool in the loop: validation, and on-policy states for DAgger.

Validation plays episodes as the agent does. DAgger plays the same way on
training pairs and, at every state the policy itself reached, asks the
simulated annotator what it would do there: a click at the
distance-transform maximum of the larger error region, or Terminate once
the mask reaches the target IoU or (with `min_gain`) once even the
annotator's click would raise the IoU by less than that: where the tool
cannot be steered further, more clicks only drift. Imitating the annotator only on the
annotator's own states leaves the policy lost after its first imperfect
click; these labels cover the states it really visits.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ...evaluation import choose_query
from ...policies.lite_model import (LiteConfig, LitePolicyNet, PolicyState, action_distribution, decode_action,
                                    greedy_actions, pool_embedding, state_tensors)
from ...policies.query_encoder import QueryEncoder
from ...tools.sam_model import PromptDecoder
from ..click_env import Candidate, ClickEnvironment, Episodes
from ..click_sampling import sample_click
from ..embedding_cache import EmbeddingCache
from .data import StateSet, action_target, assemble_states

__all__ = ["candidate", "greedy_rollout", "validation_queries", "validate_policy", "collect_on_policy_states"]

Visitor = Callable[[ClickEnvironment, list[int], int], None]


def candidate(index: int, config: LiteConfig) -> Candidate:
    kind, x, y = decode_action(index, config)
    return Candidate(kind, x, y)


@torch.no_grad()
def greedy_rollout(network: LitePolicyNet, env: ClickEnvironment, queries: torch.Tensor, max_turns: int,
                   visit: Visitor | None = None) -> np.ndarray:
    """Play every row to Terminate or `max_turns`; `visit(env, active_rows, turn)` sees each state
    before the policy acts. Returns the IoU after the first click per row."""
    network.eval()
    pooled = pool_embedding(env.features)
    first_iou = np.zeros(len(env.targets))
    for turn in range(max_turns):
        active = [i for i in range(len(env.targets)) if not env.done[i]]
        if not active:
            break
        if visit is not None:
            visit(env, active, turn)
        maps, steps, blocked = state_tensors([env.state(r) for r in active], network.config)
        distribution = action_distribution(network(pooled[active], maps, queries[active], steps), blocked)
        actions = [candidate(int(i), network.config) for i in greedy_actions(distribution.probs, may_stop=turn > 0)]
        masks, logits = env.try_actions(active, actions)
        env.commit(active, actions, masks, logits)
        if turn == 0:
            first_iou[active] = env.iou(masks, active)
    return first_iou


def validation_queries(episodes: Episodes, queries: dict, encoder: QueryEncoder) -> dict[str, torch.Tensor]:
    """One referring and one reasoning query per pair (the label's name where it has no question), encoded."""
    return {kind: torch.from_numpy(encoder([choose_query(p, queries, kind) or f"Segment the {p.label}."
                                            for p in episodes.pairs])) for kind in ("referring", "reasoning")}


def validate_policy(network: LitePolicyNet, episodes: Episodes, cache: EmbeddingCache, decoder: PromptDecoder,
                    query_vectors: dict[str, torch.Tensor], max_turns: int, batch_size: int = 32) -> dict:
    """Greedy rollouts (as the agent runs them): final and one-click IoU per source, per query kind."""
    results: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for kind, vectors in query_vectors.items():
        for start in range(0, len(episodes.pairs), batch_size):
            rows = list(range(start, min(start + batch_size, len(episodes.pairs))))
            features = episodes.features(cache, rows)
            env = ClickEnvironment(decoder, features, episodes.targets[rows], episodes.valid[rows])
            first_iou = greedy_rollout(network, env, vectors[rows], max_turns)
            final = env.iou(env.masks, list(range(len(rows))))
            for i, row in enumerate(rows):
                source = episodes.pairs[row].source
                results[source][f"{kind}_iou"].append(float(final[i]))
                results[source][f"{kind}_one_click_iou"].append(float(first_iou[i]))
                results[source][f"{kind}_clicks"].append(float(len(env.clicks[i])))
    by_source = {s: {k: float(np.mean(v)) for k, v in m.items()} for s, m in sorted(results.items())}
    keys = sorted({k for m in by_source.values() for k in m})
    overall = {k: float(np.mean([m[k] for m in by_source.values() if k in m])) for k in keys}
    overall["score"] = float(np.mean([overall[f"{kind}_iou"] for kind in query_vectors]))
    return {"by_source": by_source, "overall": overall}


def collect_on_policy_states(network: LitePolicyNet, episodes: Episodes, rows: list[int], cache: EmbeddingCache,
                             decoder: PromptDecoder, queries: torch.Tensor, max_turns: int, target_iou: float,
                             region_share: float, min_gain: float | None = None, batch_size: int = 32) -> StateSet:
    """Every state the greedy policy reaches on `rows` (queries (len(rows), Q)), with the annotator's action."""
    config = network.config
    parts = []
    annotator = np.random.default_rng(0)  # exact clicks (probability 1): its draw never changes the pick
    for start in tqdm(range(0, len(rows), batch_size), desc="dagger rollouts", unit="batch"):
        batch = rows[start:start + batch_size]
        states: list[PolicyState] = []
        targets: list[np.ndarray] = []
        pairs = []

        def label(env: ClickEnvironment, active: list[int], turn: int) -> None:
            ious = dict(zip(active, env.iou(env.masks[active], active)))
            actions = {}
            for i, iou in ious.items():
                click = None if turn > 0 and iou >= target_iou else sample_click(env.masks[i], env.targets[i],
                                                                                  annotator, 1.0)
                actions[i] = None if click is None else (click[1] + 0.5, click[0] + 0.5, click[2])
            clicking = [i for i in active if actions[i] is not None]
            if min_gain is not None and turn > 0 and clicking:
                tried = [Candidate("positive" if actions[i][2] else "negative", actions[i][0], actions[i][1])
                         for i in clicking]
                gains = env.iou(env.try_actions(clicking, tried)[0], clicking) - np.array([ious[i] for i in clicking])
                actions.update({i: None for i, gain in zip(clicking, gains) if gain < min_gain})
            for i in active:
                action = actions[i]
                state = env.state(i)  # the environment updates its masks in place: keep a copy
                states.append(PolicyState(state.mask.copy(), state.valid, state.clicks, state.step))
                targets.append(action_target(state.mask, env.targets[i], action, config, region_share))
                pairs.append(episodes.pairs[batch[i]])

        env = ClickEnvironment(decoder, episodes.features(cache, batch), episodes.targets[batch],
                               episodes.valid[batch])
        greedy_rollout(network, env, queries[start:start + batch_size], max_turns, visit=label)
        parts.append(assemble_states(states, targets, [str(p.image) for p in pairs], [p.label for p in pairs],
                                     [p.source for p in pairs], config))
    return StateSet.join(parts)
