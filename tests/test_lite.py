"""IBIS-lite: trajectories, supervised states, a short real two-stage training run, and the shipped policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ibisagent.agent import Agent, RunStatus
from ibisagent.evaluation import load_queries
from ibisagent.metrics import iou
from ibisagent.protocol import check_strict, parse_response


@pytest.fixture(scope="module")
def queries(med2d_manifest):
    return load_queries(med2d_manifest.parent / "queries.json")


@pytest.fixture(scope="module")
def trajectory_file(tmp_path_factory, lite_tool, real_pairs, queries):
    from ibisagent.training.trajectories import TrajectoryConfig, write_trajectories

    pairs = [p for p in real_pairs if p.source in ("imis-btcv", "kvasir-seg")][:3]
    out = tmp_path_factory.mktemp("trajectories") / "train.jsonl"
    counts = write_trajectories(pairs, lite_tool, out, queries, TrajectoryConfig(target_iou=0.85, max_steps=4))
    assert counts["pairs"] == 3 and not list(out.parent.glob("*.tmp"))
    return out


def test_trajectory_records_replay_to_their_masks(trajectory_file, lite_tool):
    from ibisagent.imaging.io import read_mask
    from ibisagent.training.trajectories import decode_mask, read_trajectories

    records = list(read_trajectories(trajectory_file))
    assert {r["query_kind"] for r in records} == {"referring", "reasoning"}
    for record in records:
        assert 1 <= len(record["steps"]) <= 4
        assert record["stop"] in ("target_iou", "step_limit", "no_error")
        height, width = record["image_size"]
        target = read_mask(record["mask"], (height, width))
        for step in record["steps"]:
            mask = decode_mask(step["mask"])
            assert mask.shape == (height, width)
            assert iou(mask, target) == pytest.approx(step["iou"], abs=1e-5)
            click = step["click"]
            assert click["x"] == min(int(click["x_norm"] * width), width - 1)
            assert parse_response(f"<think>t</think><action>{step['action']}</action>").action is not None
        if record["stop"] == "target_iou":
            assert record["steps"][-1]["iou"] >= 0.85
    # The first click of a simulation lands on the target.
    first = records[0]["steps"][0]["click"]
    assert read_mask(records[0]["mask"])[first["y"], first["x"]]


def test_reading_a_foreign_trajectory_line_names_the_line(tmp_path, trajectory_file):
    from ibisagent.training.trajectories import read_trajectories

    bad = tmp_path / "bad.jsonl"
    bad.write_text(trajectory_file.read_text().splitlines()[0] + "\n{\"format\": \"other\"}\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: format 'other'"):
        list(read_trajectories(bad))
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not JSON"):
        list(read_trajectories(bad))


def test_states_give_learnable_targets(trajectory_file):
    from ibisagent.policies.lite_model import LiteConfig
    from ibisagent.training.lite.data import build_states

    states = build_states([trajectory_file], LiteConfig())
    steps_total = sum(len(json.loads(line)["steps"]) for line in trajectory_file.read_text().splitlines()) // 2
    assert steps_total <= len(states) <= steps_total + 3  # one per click, plus a Terminate per finished pair
    targets = states.targets.float()
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(states)), atol=1e-2)
    assert float(targets[:, :-1][states.blocked].sum()) == 0.0  # nothing to learn on a ruled-out cell
    first = states.steps[:, 0] == 0
    cells = LiteConfig().grid ** 2
    assert float(targets[first][:, :cells].sum(dim=1).min()) > 0.99  # first action: a positive click


def test_two_stage_training_runs_and_resumes(tmp_path, trajectory_file, med2d_manifest):
    from ibisagent.training.lite.training import LiteTrainingConfig, train_lite

    config = LiteTrainingConfig(
        manifest=str(med2d_manifest), queries=str(med2d_manifest.parent / "queries.json"),
        trajectories=[str(trajectory_file)], out_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        sft_epochs=2, sft_batch_size=4, dagger_rounds=1, dagger_pairs=3, dagger_max_steps=3,
        grpo_iterations=1, grpo_batch_size=2, grpo_group_size=4, grpo_max_steps=2,
        val_per_source=1, val_max_turns=2, validate_every=1)
    out = train_lite(config)
    summary = json.loads((out / "training_summary.json").read_text())
    sft = [h for h in summary["history"] if h["stage"] == "sft"]
    assert len(sft) == 2 and sft[1]["loss"] < sft[0]["loss"]  # imitation learns on its own data
    assert [h["epoch"] for h in summary["history"] if h["stage"] == "dagger"] == [3]
    assert summary["dagger_states"][0] >= 3 and (out / "dagger_round1.pt").is_file()  # >= one state per pair
    log = summary["grpo_log"]
    assert len(log) == 1 and set(log[0]) >= {"format", "iou_level", "iou_increase", "click_placement", "length",
                                             "reward", "reward_std", "kl"}
    assert log[0]["reward_std"] > 0  # the group's actions differ in reward: there is a signal to learn from
    assert (out / "sft_best.pt").is_file() and (out / "grpo_best.pt").is_file()

    config.grpo_iterations, config.resume = 2, True
    summary = json.loads((train_lite(config) / "training_summary.json").read_text())
    assert [entry["iteration"] for entry in summary["grpo_log"]] == [1, 2]
    assert len([h for h in summary["history"] if h["stage"] == "sft"]) == 2  # SFT was not redone
    assert len(summary["dagger_states"]) == 1  # nor the DAgger round


def test_dagger_labels_the_states_the_policy_reaches(tmp_path, lite_tool, lite_policy, real_pairs):
    from ibisagent.training.click_env import ClickEnvironment, load_episodes
    from ibisagent.training.embedding_cache import EmbeddingCache
    from ibisagent.training.lite.rollouts import collect_on_policy_states, greedy_rollout

    episodes = load_episodes([p for p in real_pairs if p.source in ("imis-btcv", "kvasir-seg")], 256)
    rows = list(range(len(episodes.pairs)))
    cache = EmbeddingCache(tmp_path, lite_tool)
    queries = torch.from_numpy(lite_policy.queries([f"Segment the {p.label}." for p in episodes.pairs]))
    from ibisagent.policies.lite import load_lite_checkpoint

    network, _ = load_lite_checkpoint(lite_policy.checkpoint)  # training rolls out the torch network itself
    states = collect_on_policy_states(network, episodes, rows, cache, lite_tool.decoder, queries, max_turns=4,
                                      target_iou=0.9, region_share=0.5)
    visited = []
    env = ClickEnvironment(lite_tool.decoder, episodes.features(cache, rows), episodes.targets, episodes.valid)
    greedy_rollout(network, env, queries, 4, visit=lambda env, active, turn: visited.extend(active))
    assert len(states) == len(visited)  # one labelled state per decision the policy made
    assert int((states.steps[:, 0] == 0).sum()) == len(rows)
    targets = states.targets.float()
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(states)), atol=1e-2)
    cells = network.config.grid ** 2
    first = states.steps[:, 0] == 0
    assert float(targets[first][:, :cells].sum(dim=1).min()) > 0.99  # empty mask: the annotator clicks positive
    assert float(targets[first][:, -1].max()) == 0.0  # and never stops before a click
    # No click can gain a whole IoU point: with that as the least useful gain the annotator
    # stops at every later state, and the states themselves (the policy's) do not change.
    stopping = collect_on_policy_states(network, episodes, rows, cache, lite_tool.decoder, queries, max_turns=4,
                                        target_iou=0.9, region_share=0.5, min_gain=1.0)
    later = stopping.steps[:, 0] > 0
    assert len(stopping) == len(states) and torch.equal(stopping.maps, states.maps)
    assert bool(later.any()) and bool((stopping.targets[later][:, -1] == 1).all())
    assert torch.equal(stopping.targets[~later], states.targets[~later])


@pytest.fixture(scope="module")
def lite_policy():
    from ibisagent.policies import build_policy

    return build_policy("lite")


def test_shipped_policy_segments_real_targets(lite_tool, lite_policy, med2d_manifest):
    """Named targets the policy never saw (test split): a real mask, in the protocol's exact format. Five pairs per
    single-object source (fixed order): with two, one hard image decides the mean."""
    from conftest import first_test_pairs
    from ibisagent.imaging.io import read_mask

    scores = []
    for pair in first_test_pairs(med2d_manifest, 5, ("kvasir-seg", "hc18", "ph2")):
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        target = read_mask(pair.mask, image.shape[:2])
        result = Agent(lite_tool, lite_policy, max_turns=10).run(image, f"Segment the {pair.label}.")
        assert result.status.completed
        assert all(not check_strict(turn.raw_text) for turn in result.turns)
        scores.append(iou(result.mask, target))
    assert np.mean(scores) > 0.6, scores


def test_greedy_play_takes_the_likeliest_action_and_clicks_first():
    from ibisagent.policies.lite_model import greedy_actions

    probs = torch.tensor([[0.1, 0.3, 0.2, 0.4], [0.5, 0.1, 0.1, 0.3]])  # the last action is Terminate
    assert greedy_actions(probs, may_stop=True).tolist() == [3, 0]
    assert greedy_actions(probs, may_stop=False).tolist() == [1, 0]  # the first action is always a click


def test_one_click_variant_stops_after_its_click(lite_tool, lite_policy, demo_image):
    from ibisagent.policies import build_policy

    one_click = build_policy("lite-one-click")
    result = Agent(lite_tool, one_click, max_turns=10).run(demo_image, "Segment the liver.")
    assert result.status is RunStatus.TERMINATED and len(result.clicks) == 1
    assert result.mask.any()


def test_foreign_embeddings_and_checkpoints_are_refused(tmp_path, lite_tool, lite_policy, demo_image):
    from ibisagent.policies import build_policy
    from ibisagent.tools.base import ImageEmbedding

    embedding = lite_tool.encode(demo_image)
    foreign = ImageEmbedding(embedding.features[:, :128], embedding.frame)  # another encoder's channel count
    result = Agent(lite_tool, lite_policy).run(demo_image, "Segment the liver.", embedding=foreign)
    assert result.status is RunStatus.POLICY_ERROR and "trained on" in result.error

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read lite policy"):
        build_policy("lite", checkpoint=broken)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ValueError, match="not an IBIS-lite policy checkpoint"):
        build_policy("lite", checkpoint=other)


def test_confidence_stop_ends_the_run_when_the_tool_estimate_falls(lite_tool, lite_policy, demo_image):
    """The agent hands the tool's estimates to the policy; the lite policy stops once they fall by over 0.1."""
    from ibisagent.policies import Observation, build_policy
    from ibisagent.policies.scripted import ScriptedPolicy
    from ibisagent.protocol import ActionKind

    seen = []

    class Recording(ScriptedPolicy):
        def act(self, observation, messages):
            seen.append(observation.predicted_ious)
            return super().act(observation, messages)

    clicks = ["<think>a</think><action>Positive Point (0.3000, 0.4500)</action>",
              "<think>b</think><action>Negative Point (0.3000, 0.4500)</action>",
              "<think>c</think><action>Terminate</action>"]
    result = Agent(lite_tool, Recording(clicks), max_turns=5).run(demo_image, "Segment the liver.")
    estimates = [turn.predicted_iou for turn in result.turns if turn.predicted_iou is not None]
    assert len(seen) == 3 and seen[0] == () and [round(v, 4) for v in seen[2]] == estimates and len(estimates) == 2

    embedding = lite_tool.encode(demo_image)
    clicked = tuple(result.clicks)

    def answer(policy, estimates):
        observation = Observation(demo_image, demo_image, result.mask, "Segment the liver.", 2, clicked, embedding,
                                  estimates)
        return parse_response(policy.act(observation, []))

    fell = answer(lite_policy, (0.92, 0.95, 0.80))
    assert fell.action.kind is ActionKind.TERMINATE and "fell from 0.95 to 0.80" in fell.think
    assert "fell from" not in answer(lite_policy, (0.92, 0.95, 0.88)).think  # within 0.1: the network decides
    assert "fell from" not in answer(build_policy("lite-no-confidence-stop"), (0.92, 0.95, 0.80)).think


def test_the_shipped_policy_says_when_its_lung_mask_is_unreliable(lite_tool, lite_policy, real_pairs):
    """The issue's example: "Segment the lungs." on chest X-rays of the test split gives a correct mask or the
    unreliable flag, from the shipped policy's calibrated confidence (models/lite_policy.confidence.json)."""
    from ibisagent.imaging.io import read_mask

    pairs = [p for p in real_pairs if p.source == "v7-covid-cxr"]
    assert pairs, "no chest X-ray in the test split"
    for pair in pairs:
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        result = Agent(lite_tool, lite_policy).run(image, "Segment the lungs.")
        confidence = result.confidence
        assert confidence.source == "lite" and confidence.threshold == lite_policy.confidence_model.threshold
        features = confidence.features
        assert set(features) == {"tool_iou", "belief_inside", "stop_probability", "mask_fraction"}
        assert all(0.0 <= value <= 1.0 for value in features.values())
        assert features["mask_fraction"] == pytest.approx(result.mask.mean())
        score = iou(result.mask, read_mask(pair.mask, image.shape[:2]))
        assert score >= 0.5 or result.unreliable, (pair.image.name, score, confidence)


def test_a_calibration_for_another_checkpoint_is_refused(tmp_path):
    import shutil

    from ibisagent.confidence import calibration_path
    from ibisagent.policies import build_policy
    from ibisagent.policies.lite import shipped_lite_policy

    checkpoint = tmp_path / "lite_policy.pt"
    shutil.copy(shipped_lite_policy(), checkpoint)
    shutil.copy(calibration_path(shipped_lite_policy()), calibration_path(checkpoint))
    assert build_policy("lite", checkpoint=checkpoint).confidence_model is not None  # the same weights: kept
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="fitted for another checkpoint"):
        build_policy("lite", checkpoint=checkpoint)
