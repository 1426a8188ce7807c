"""The `hf` policy on a real (tiny, random) Qwen2.5-VL and the `openai` policy against a real server process."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ibisagent.agent import Agent, RunStatus
from ibisagent.policies import PolicyError, build_policy

pytest.importorskip("transformers", reason="the hf extra is not installed")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen"))


def test_hf_policy_loads_generates_and_the_agent_survives_garbage(tiny_qwen, lite_tool, demo_image):
    policy = build_policy("hf", model_path=tiny_qwen, max_new_tokens=12)
    result = Agent(lite_tool, policy, max_turns=5, max_invalid=2).run(demo_image, "Segment the liver.")
    # a random model writes no valid action: the run ends by the invalid-output rule, not by an exception
    assert result.status is RunStatus.INVALID_OUTPUT
    assert len(result.turns) == 2 and all(turn.action is None and turn.issues for turn in result.turns)
    assert all(isinstance(turn.raw_text, str) for turn in result.turns)


def test_hf_policy_with_history_sends_several_images(tiny_qwen, demo_image):
    from ibisagent.policies.base import Observation

    policy = build_policy("hf", model_path=tiny_qwen, max_new_tokens=4)
    image_part = {"type": "image", "image": demo_image}
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "system"}]},
        {"role": "user", "content": [image_part, {"type": "text", "text": "Segment the liver."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>x</think><action>Terminate</action>"}]},
        {"role": "user", "content": [image_part, {"type": "text", "text": "Refine."}]},
    ]
    observation = Observation(demo_image, demo_image, np.zeros(demo_image.shape[:2], bool), "q", 1)
    assert isinstance(policy.act(observation, messages), str)


def test_hf_policy_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        build_policy("hf", model_path=tmp_path / "absent")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def chat_server(tmp_path):
    port, log = _free_port(), tmp_path / "requests.jsonl"
    process = subprocess.Popen([sys.executable, str(Path(__file__).parent / "chat_server.py"), str(port), str(log)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_openai_policy_against_a_real_server(chat_server, lite_tool, demo_image):
    base_url, log = chat_server
    policy = build_policy("openai", base_url=base_url, model="ibis-7b", timeout=10)
    result = Agent(lite_tool, policy).run(demo_image, "Segment the liver.")
    assert result.status is RunStatus.TERMINATED and result.answer == "liver"
    assert len(result.clicks) == 1 and result.mask.any()
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["model"] for r in requests] == ["ibis-7b", "ibis-7b"]
    assert requests[0]["roles"] == ["system", "user"]
    assert requests[0]["image_sizes"] == [[484, 300]] and requests[1]["image_sizes"] == [[484, 300]]


def test_openai_policy_unreachable_server_is_a_bounded_policy_error(lite_tool, demo_image):
    policy = build_policy("openai", base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", timeout=2, max_retries=1)
    started = time.monotonic()
    result = Agent(lite_tool, policy).run(demo_image, "Segment the liver.")
    assert result.status is RunStatus.POLICY_ERROR and "127.0.0.1" in result.error
    assert time.monotonic() - started < 30
