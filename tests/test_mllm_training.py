"""MLLM training on the CPU with real parts: trajectories from the real tool on real images, exports, TRL SFT
(LoRA) and GRPO (tool in the loop) on a tiny random Qwen2.5-VL built offline, merge, and the agent on the result."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibisagent.agent import Agent, RunStatus
from ibisagent.imaging.overlay import overlay_mask
from ibisagent.prompting import load_prompts
from ibisagent.protocol import check_strict, parse_response

pytest.importorskip("trl", reason="the train extra is not installed")

# Short wording keeps the tiny model's sequences short (a prompt file is a supported setting, see docs/protocol.md).
SHORT_PROMPTS = """\
system: "Segment. Answer <think>...</think><action>...</action>."
first_turn: "{query}"
refinement_turn: "{query} Refine."
"""
TINY_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}
CPU = {"use_cpu": True, "gradient_checkpointing": False, "gradient_accumulation_steps": 1, "save_steps": 1000,
       "logging_steps": 1, "trainer_args": {"disable_tqdm": True, "lr_scheduler_type": "constant"}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are too small to share out: with a second busy process on two cores, torch's
    thread pool spin-waits (a 2-step GRPO run measured 165 s with 2 threads, 4.7 s with 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "short.yaml"
    path.write_text(SHORT_PROMPTS)
    return load_prompts(path)


@pytest.fixture(scope="module")
def trajectory_file(tmp_path_factory, lite_tool, real_pairs):
    from ibisagent.training.trajectories import TrajectoryConfig, write_trajectories

    pairs = [p for p in real_pairs if p.source == "kvasir-seg"][:1]
    out = tmp_path_factory.mktemp("trajectories") / "train.jsonl"
    write_trajectories(pairs, lite_tool, out, None, TrajectoryConfig(target_iou=0.8, max_steps=3,
                                                                      query_kinds=("referring",)))
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory, trajectory_file, prompts):
    from ibisagent.training.mllm.export import export_mllm

    root = tmp_path_factory.mktemp("exports")
    export_mllm([trajectory_file], root / "sft", "sft", prompts)
    export_mllm([trajectory_file], root / "grpo", "grpo", prompts)
    return root


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]


def test_sft_export_renders_the_agents_turns(exports, trajectory_file, prompts):
    from ibisagent.training.trajectories import decode_mask, read_trajectories

    record = next(read_trajectories(trajectory_file))
    rows = _rows(exports / "sft")
    steps = record["steps"]
    finished = record["stop"] in ("target_iou", "no_error")
    assert len(rows) == len(steps) + finished
    image = np.asarray(Image.open(record["image"]).convert("RGB"))
    for turn, row in enumerate(rows):
        assert row["prompt"][0] == {"role": "system", "content": prompts.system}
        assert row["prompt"][1]["content"] == (prompts.first(record["query"]) if turn == 0
                                               else prompts.refinement(record["query"]))
        answer = row["completion"][0]["content"]
        assert check_strict(answer) == [] and row["rationale"] == "template"
        expected = steps[turn]["action"] if turn < len(steps) else "Terminate"
        assert parse_response(answer).action.to_text() == expected
        # the observation: the original image first, then the previous step's mask overlaid, pixel for pixel
        view = np.asarray(Image.open(exports / "sft" / row["images"][0]))
        want = image if turn == 0 else overlay_mask(image, decode_mask(steps[turn - 1]["mask"]))
        assert np.array_equal(view, want)
    meta = json.loads((exports / "sft" / "meta.json").read_text())
    assert meta["format"] == "ibisagent-mllm-sft/1" and meta["counts"]["states"] == len(rows)
    assert not list(exports.glob(".*staging*"))


def test_grpo_rewards_replay_the_annotator_with_the_tool(exports, trajectory_file, lite_tool):
    """The annotator's own answer, scored by the tool in the loop, lands on the trajectory's recorded IoU."""
    from ibisagent.metrics import iou
    from ibisagent.training.mllm.export import load_mllm_dataset
    from ibisagent.training.mllm.grpo import ToolRewards
    from ibisagent.training.trajectories import decode_mask, read_trajectories

    record = next(read_trajectories(trajectory_file))
    dataset = load_mllm_dataset(exports / "grpo", "grpo")
    assert len(dataset) == len(record["steps"]) + 1  # every state, including the one after the last click
    rewards = ToolRewards(lite_tool)
    target = np.asarray(Image.open(dataset[0]["target"])) > 127
    for row, step in zip(dataset, record["steps"]):
        assert len(row["clicks"]) == row["step"] - 1
        answer = f"<think>t</think><action>{row['annotator_action']}</action>"
        terms = rewards.terms(answer, row["source_image"], row["target"], row["clicks"], row["step"])
        mask = rewards.tool.predict(rewards._embedding(row["source_image"]),
                                    [*map(_click, row["clicks"]), _click(_xy(row["annotator_action"]))],
                                    rewards._state(row["source_image"], tuple(map(tuple, row["clicks"])))[1]).mask
        assert iou(mask, decode_mask(step["mask"])) > 0.98  # the 4-decimal action reproduces the recorded step
        assert terms["format"] == 1.0 and terms["length"] == 1.0
        assert terms["click_placement"] == 1.0  # the annotator clicks in the error region
        assert terms["iou_increase"] == float(step["iou"] > row["previous_iou"])
        assert abs(iou(mask, target) - step["iou"]) < 0.02
    garbage = rewards.terms("no tags at all", dataset[0]["source_image"], dataset[0]["target"], [], 1)
    assert garbage == {"format": 0.0, "iou_level": 0.0, "iou_increase": 0.0, "click_placement": -1.0, "length": 1.0}
    assert len(rewards.functions()) == 5 and sum(rewards.weights()) == pytest.approx(1.0)


def _xy(action: str) -> list[float]:
    parsed = parse_response(f"<think>t</think><action>{action}</action>").action
    return [parsed.x, parsed.y, 1.0 if parsed.kind.value == "positive" else 0.0]


def _click(values):
    from ibisagent.tools.base import Click

    x, y, positive = values
    return Click(x, y, bool(positive))


def test_export_errors_are_one_line_and_leave_nothing(tmp_path, trajectory_file):
    from ibisagent.training.mllm.export import export_mllm, load_mllm_dataset

    with pytest.raises(ValueError, match="does not exist"):
        export_mllm([tmp_path / "absent.jsonl"], tmp_path / "out")
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="not an earlier output"):
        export_mllm([trajectory_file], tmp_path / "mine")
    with pytest.raises(ValueError, match="not an exported MLLM dataset"):
        load_mllm_dataset(tmp_path / "mine", "sft")
    bad = tmp_path / "bad.jsonl"
    record = json.loads(trajectory_file.read_text().splitlines()[0])
    bad.write_text(json.dumps({**record, "image_size": [7, 7]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: image .* the record says 7x7"):
        export_mllm([bad], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "mine"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_teacher_rationales_come_from_an_openai_compatible_endpoint(tmp_path, trajectory_file, prompts):
    from ibisagent.training.mllm.export import Teacher, export_mllm

    port, log = _free_port(), tmp_path / "requests.jsonl"
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "chat_server.py"), str(port), str(log)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        teacher = Teacher(f"http://127.0.0.1:{port}/v1", "teacher-model")
        counts = export_mllm([trajectory_file], tmp_path / "sft", "sft", prompts, teacher)
    finally:
        server.terminate()
        server.wait(timeout=10)
    rows = _rows(tmp_path / "sft")
    assert counts["teacher_rationales"] == len(rows) and all(row["rationale"] == "teacher" for row in rows)
    # the script's first answer, its tags stripped, becomes the rationale; the action stays the annotator's
    assert parse_response(rows[0]["completion"][0]["content"]).think == (
        "The liver is the large organ on the left of the image.")
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(requests) == len(rows) and all(r["image_sizes"] and r["model"] == "teacher-model" for r in requests)


def test_sft_lora_loss_goes_down_then_the_merged_checkpoint_runs_the_agent(tiny_qwen, exports, tmp_path, lite_tool):
    import torch
    from safetensors.torch import load_file

    from ibisagent.policies import build_policy
    from ibisagent.training.mllm.model import LoraSettings
    from ibisagent.training.mllm.sft import SFTRecipe, train_sft

    size = len(_rows(exports / "sft"))  # one batch holds the whole dataset: every step sees the same batch
    recipe = SFTRecipe(model=str(tiny_qwen), dataset=str(exports / "sft"), out_dir=str(tmp_path / "sft"),
                       merged_dir=str(tmp_path / "merged"), lora=LoraSettings(rank=16, alpha=32, dropout=0.0),
                       learning_rate=1e-2, max_steps=6, per_device_batch_size=size, **TINY_PIXELS, **CPU)
    result = train_sft(recipe)
    losses = [entry["loss"] for entry in result["log_history"] if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.2, losses
    assert (Path(result["adapter"]) / "adapter_config.json").is_file()

    base, merged = load_file(tiny_qwen / "model.safetensors"), load_file(Path(result["merged"]) / "model.safetensors")
    vision = [k for k in base if k.startswith("visual.")]  # the checkpoint's own key names
    language = [k for k in base if k.startswith("model.layers.") and k.endswith("q_proj.weight")]
    assert vision and language and not any("lora" in k for k in merged)
    assert all(torch.equal(base[k], merged[k]) for k in vision)  # the vision tower stayed frozen
    assert any(not torch.equal(base[k], merged[k]) for k in language)  # the adapter was folded in

    from ibisagent.cli import main

    assert main(["merge-lora", "--adapter", result["adapter"], "--out", str(tmp_path / "merged-cli")]) == 0
    again = load_file(tmp_path / "merged-cli" / "model.safetensors")
    assert again.keys() == merged.keys() and all(torch.equal(again[k], merged[k]) for k in merged)

    policy = build_policy("hf", model_path=result["merged"], max_new_tokens=24)
    assert policy.processor.image_processor.size["longest_edge"] == TINY_PIXELS["max_pixels"]
    image = np.asarray(Image.open(exports / "sft" / _rows(exports / "sft")[0]["images"][0]))
    run = Agent(lite_tool, policy, max_turns=2, max_invalid=2).run(image, "Segment the polyp.")
    assert run.status in set(RunStatus) - {RunStatus.POLICY_ERROR, RunStatus.TOOL_ERROR}
    assert run.turns and all(isinstance(turn.raw_text, str) for turn in run.turns)


def test_grpo_scores_sampled_answers_with_the_tool_and_logs_every_reward(tiny_qwen, exports, tmp_path, lite_tool):
    from ibisagent.training.mllm.grpo import GRPORecipe, train_grpo
    from ibisagent.training.mllm.model import LoraSettings
    from ibisagent.training.mllm.sft import SFTRecipe, train_sft
    from ibisagent.training.rewards import REWARD_TERMS

    # Warm start: full fine-tuning (LoRA rank 0) on the first state until the tiny model writes the protocol
    # sometimes, as SFT does before GRPO in the paper; a random model's answers all score alike.
    first = tmp_path / "first-state"
    (first / "images").mkdir(parents=True)
    row = _rows(exports / "sft")[0]
    (first / "images" / Path(row["images"][0]).name).write_bytes((exports / "sft" / row["images"][0]).read_bytes())
    (first / "data.jsonl").write_text(json.dumps(row) + "\n")
    (first / "meta.json").write_text((exports / "sft" / "meta.json").read_text())
    warm = train_sft(SFTRecipe(model=str(tiny_qwen), dataset=str(first), out_dir=str(tmp_path / "warm"),
                               lora=LoraSettings(rank=0), learning_rate=4e-3, max_steps=50, per_device_batch_size=1,
                               **TINY_PIXELS, **{**CPU, "logging_steps": 10}))
    assert [e["loss"] for e in warm["log_history"] if "loss" in e][-1] < 0.5

    recipe = GRPORecipe(model=warm["adapter"], dataset=str(exports / "grpo"), out_dir=str(tmp_path / "grpo"),
                        lora=LoraSettings(rank=8, alpha=16, dropout=0.0), learning_rate=1e-3, max_steps=2,
                        per_device_batch_size=6, num_generations=6, max_completion_length=110,
                        **TINY_PIXELS, **CPU)
    result = train_grpo(recipe, tool=lite_tool)
    steps = [entry for entry in result["log_history"] if "reward" in entry]
    assert len(steps) == 2
    for entry in steps:
        assert all(f"rewards/{term}/mean" in entry and f"rewards/{term}/std" in entry for term in REWARD_TERMS)
    # answers within one group differ in reward (the only signal GRPO learns from)
    assert max(entry["reward_std"] for entry in steps) > 0.0
    assert max(entry["rewards/format/std"] + entry["rewards/click_placement/std"] for entry in steps) > 0.0
    assert json.loads((tmp_path / "grpo" / "grpo_log.json").read_text()) == result["log_history"]


def test_cli_export_and_the_shipped_training_configs(tmp_path, trajectory_file, capsys):
    from monai.bundle import ConfigParser
    from trl import GRPOConfig, SFTConfig

    from ibisagent.cli import main
    from ibisagent.training.mllm.grpo import GRPORecipe
    from ibisagent.training.mllm.sft import SFTRecipe

    assert main(["export-mllm", "--kind", "grpo", "--trajectories", str(trajectory_file),
                 "--out", str(tmp_path / "grpo")]) == 0
    assert json.loads((tmp_path / "grpo" / "meta.json").read_text())["format"] == "ibisagent-mllm-grpo/1"
    assert main(["export-mllm", "--kind", "sft", "--trajectories", str(trajectory_file), "--out", str(tmp_path / "x"),
                 "--teacher-url", "http://127.0.0.1:9/v1"]) == 2
    assert main(["train-grpo", "--model", str(tmp_path / "absent"), "--dataset", str(tmp_path / "grpo")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ibis:")]
    assert errors == ["ibis: error: a teacher needs both --teacher-url URL and --teacher-model NAME",
                           f"ibis: error: {tmp_path / 'absent'} is not a Hugging Face model folder (no config.json)"]
    repo = Path(__file__).resolve().parents[1]
    for name, section, kind in (("train_sft.yaml", "sft", SFTRecipe), ("train_grpo.yaml", "grpo", GRPORecipe)):
        parser = ConfigParser()
        parser.read_config(repo / "configs" / name)
        recipe = parser.get_parsed_content(section)
        assert isinstance(recipe, kind) and recipe.max_pixels >= recipe.min_pixels
        assert recipe.lora.rank == 0 or recipe.lora.peft_config().target_modules == recipe.lora.target_modules
        # TRL accepts every training argument the config passes (bf16 needs a GPU: checked on the CPU without it)
        recipe.use_cpu, recipe.out_dir = True, str(tmp_path / section)
        specific = {"num_generations": recipe.num_generations} if section == "grpo" else {}
        arguments = recipe.trainer_config(SFTConfig if section == "sft" else GRPOConfig, **specific)
        assert arguments.learning_rate == recipe.learning_rate
