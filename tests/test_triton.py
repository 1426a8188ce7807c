"""A real tritonserver (the nvidia-pytriton wheel's, in .venv-triton) serving triton_models/, started by the
same module `ibis serve` uses; the agent runs through it and must match the in-process run exactly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ibisagent.agent import Agent, RunStatus
from ibisagent.policies import build_policy

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")

from ibisagent.serving.environment import ServerError, find_triton  # noqa: E402
from ibisagent.serving.repository import SAM_MODELS, prepare_repository  # noqa: E402
from ibisagent.serving.server import TritonServer  # noqa: E402
from ibisagent.serving.triton_tool import ServerEmbedding, TritonSamTool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVER_ENV = REPO / ".venv-triton"


from ibisagent.stress.run import free_ports  # noqa: E402  (tests import it from here too)


@pytest.fixture(scope="session")
def triton_install():
    try:
        return find_triton(SERVER_ENV)
    except ServerError as error:
        pytest.skip(f"no Triton server here: {error}")


def copy_models(names: tuple[str, ...], target: Path) -> Path:
    """The repository's model folders (config and code, no weights) in a scratch repository."""
    for name in names:
        shutil.copytree(REPO / "triton_models" / name, target / name,
                        ignore=shutil.ignore_patterns("*.onnx", "tool.json", "__pycache__"))
    return target


@pytest.fixture(scope="session")
def sam_repository(tmp_path_factory, onnx_dir) -> Path:
    """triton_models' sam models holding the very graphs the in-process ONNX tool runs (conftest's onnx_dir)."""
    repository = copy_models(SAM_MODELS, tmp_path_factory.mktemp("repo") / "triton_models")
    assert prepare_repository(repository, f"onnx:{onnx_dir}")
    return repository


def test_graphs_of_other_weights_are_exported_again(tmp_path, onnx_dir):
    """The repository keeps graphs made from the same weights and replaces others (an older shipped decoder)."""
    repository = copy_models(SAM_MODELS, tmp_path / "triton_models")
    assert prepare_repository(repository, f"onnx:{onnx_dir}")
    assert not prepare_repository(repository, f"onnx:{onnx_dir}")
    assert not prepare_repository(repository, "lite-medsam")  # onnx_dir is the default tool's export
    manifest = repository / "sam_encoder" / "1" / "tool.json"
    older = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**older, "source": older["source"].replace("sha256 ", "sha256 0")}))
    assert prepare_repository(repository, f"onnx:{onnx_dir}")
    assert json.loads(manifest.read_text()) == older
    box_graph = repository / "sam_decoder" / "1" / "box_decoder.onnx"
    assert box_graph.is_file()  # the default tool keeps the wheel's decoder for box-only prompts
    assert prepare_repository(repository, "lite-medsam-base")  # one decoder: the box graph must go
    assert not box_graph.is_file() and "box-only" not in json.loads(manifest.read_text())["source"]


def start_server(repository: Path, install, models=SAM_MODELS, env=None, log=None) -> TritonServer:
    grpc_port, http_port, metrics_port = free_ports(3)
    lines = log if log is not None else []
    return TritonServer(repository, models, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                        install=install, env=env, log=lines.append).start()


@pytest.fixture(scope="module")
def sam_server(sam_repository, triton_install):
    server = start_server(sam_repository, triton_install)
    yield server
    server.stop()


@pytest.fixture()
def own_server(sam_repository, triton_install):
    """A server this test may kill or change."""
    server = start_server(sam_repository, triton_install)
    yield server
    server.stop()


def run_oracle(tool, image, reference, max_turns=6, embedding=None):
    return Agent(tool, build_policy("oracle", ground_truth=reference, target_iou=0.99), max_turns=max_turns).run(
        image, "Segment the target.", embedding=embedding)


def assert_same_run(served, local):
    assert served.status is local.status and served.error is None
    assert [t.action for t in served.turns] == [t.action for t in local.turns]
    assert [t.predicted_iou for t in served.turns] == [t.predicted_iou for t in local.turns]
    assert np.array_equal(served.mask, local.mask) and served.mask.any()


def test_agent_through_triton_gives_the_in_process_masks(sam_server, onnx_dir, demo_image, demo_reference,
                                                         real_pairs):
    from ibisagent.imaging.io import read_image, read_mask
    from ibisagent.tools.onnx_tool import OnnxSamTool

    local, served = OnnxSamTool(onnx_dir), TritonSamTool(sam_server.grpc_url)
    cases = [(demo_image, demo_reference)]
    for pair in real_pairs[::4][:2]:  # a real ultrasound/endoscopy/... image or two from ../shared/data
        image = read_image(pair.image).rgb
        cases.append((image, read_mask(pair.mask, image.shape[:2])))
    for image, reference in cases:
        expected = run_oracle(local, image, reference)
        assert len(expected.clicks) >= 2  # several clicks: previous logits travel too
        assert_same_run(run_oracle(served, image, reference), expected)


def test_the_default_policy_runs_through_triton_with_the_in_process_masks(sam_server, onnx_dir, demo_image,
                                                                          tmp_path):
    """IBIS-lite reads the embedding's 2x2 means, sent back once at encode; the embedding itself stays on the
    server, and the run equals the in-process one on the same graphs, click for click."""
    from PIL import Image

    from ibisagent.tools.onnx_tool import OnnxSamTool

    query = "Which organ produces bile? Segment it."
    local, served = OnnxSamTool(onnx_dir), TritonSamTool(sam_server.grpc_url)
    policy = build_policy("lite")
    expected = Agent(local, policy).run(demo_image, query)
    received = served.caller.bytes_received
    embedding = served.encode(demo_image)
    assert 2**20 <= served.caller.bytes_received - received < 2**20 + 100_000  # the pooled input, 1 MiB, once
    sent = served.caller.bytes_sent
    result = Agent(served, policy).run(demo_image, query, embedding=embedding)
    # however many clicks the shipped policy makes (the oracle test above covers the previous logits
    # travelling on later clicks), no click sends anything near the embedding's size
    assert result.clicks and (served.caller.bytes_sent - sent) / len(result.clicks) < 300_000
    assert_same_run(result, expected)
    image = tmp_path / "mr.png"
    Image.fromarray(demo_image).save(image)
    for command in (["segment", image, "--query", query], ["demo"]):  # the README's and docs/serving.md's routes
        out = tmp_path / command[0]
        done = subprocess.run([sys.executable, "-m", "ibisagent.cli", *map(str, command), "--server",
                               sam_server.grpc_url, "--out", str(out)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        trajectory = json.loads((out / "trajectory.json").read_text())
        assert trajectory["policy"] == "lite" and trajectory["tool"] == f"triton:{sam_server.grpc_url}"
    assert [{"x": c.x, "y": c.y, "positive": c.positive} for c in expected.clicks] == \
        json.loads((tmp_path / "segment" / "trajectory.json").read_text())["clicks"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "segment" / "mask.png")) > 0, expected.mask)


def test_a_box_alone_is_answered_by_the_box_decoder_on_the_server(sam_server, onnx_dir, demo_image):
    """The served decoder routes like the in-process tools (test_tools checks those against both decoders):
    a box alone to the wheel's decoder, any prompt with a click to ours."""
    from ibisagent.tools.base import Click
    from ibisagent.tools.onnx_tool import OnnxSamTool

    local, served = OnnxSamTool(onnx_dir), TritonSamTool(sam_server.grpc_url)
    assert local.box_decoder is not None
    embedding, served_embedding, box = local.encode(demo_image), served.encode(demo_image), (38, 62, 190, 262)
    for prompt in ({"box": box, "multimask": False}, {"clicks": [Click(0.3, 0.45, True)], "box": box}):
        expected = local.predict(embedding, **prompt)
        assert np.abs(served.predict(served_embedding, **prompt).low_res_logits - expected.low_res_logits).max() < 1e-3


def test_embedding_stays_on_the_server_and_travelling_gives_the_same_mask(sam_server, onnx_dir, demo_image,
                                                                          demo_reference):
    resident, travelling = TritonSamTool(sam_server.grpc_url), TritonSamTool(sam_server.grpc_url, resident=False)
    runs = {}
    for name, tool in (("resident", resident), ("travelling", travelling)):
        embedding = tool.encode(demo_image)
        sent = tool.caller.bytes_sent
        result = run_oracle(tool, demo_image, demo_reference, max_turns=4, embedding=embedding)
        runs[name] = (embedding.features, result, (tool.caller.bytes_sent - sent) / len(result.clicks))
    (handle, resident_run, resident_up), (array, travelling_run, travelling_up) = runs["resident"], runs["travelling"]
    assert isinstance(handle, ServerEmbedding) and handle.shape == (1, 256, 64, 64)
    assert isinstance(array, np.ndarray) and array.shape == (1, 256, 64, 64)
    assert np.array_equal(resident_run.mask, travelling_run.mask)
    assert resident_up < 300_000 < 4 * 2**20 < travelling_up  # per click: prompts + previous logits vs + embedding


def test_an_embedding_the_server_lost_is_encoded_again(sam_server, demo_image):
    from ibisagent.tools.base import Click

    tool = TritonSamTool(sam_server.grpc_url)
    embedding = tool.encode(demo_image)
    expected = tool.predict(embedding, [Click(0.3, 0.5, True)])
    lost = ServerEmbedding("0" * 32, embedding.features.shape, embedding.features.model_input)
    again = tool.predict(type(embedding)(lost, embedding.frame), [Click(0.3, 0.5, True)])
    assert np.array_equal(again.mask, expected.mask)
    with pytest.raises(ServerError, match=f"{sam_server.grpc_url}, model sam_decoder: embedding not resident"):
        tool.caller.infer("sam_decoder", {"image_key": np.array([[b"1" * 32]], dtype=np.object_),
                                          "point_coords": np.zeros((1, 1, 2), np.float32),
                                          "point_labels": np.ones((1, 1), np.float32)}, ["iou_predictions"])


def test_the_tool_spec_and_concurrent_sessions(sam_server, demo_image, demo_reference):
    from concurrent.futures import ThreadPoolExecutor

    from ibisagent.tools.factory import build_tool

    tool = build_tool(f"triton:{sam_server.grpc_url}")
    assert tool.name == f"triton:{sam_server.grpc_url}"
    expected = run_oracle(tool, demo_image, demo_reference, max_turns=3)
    with ThreadPoolExecutor(4) as pool:  # four sessions at once share the server (and the resident embedding)
        results = list(pool.map(lambda _: run_oracle(tool, demo_image, demo_reference, max_turns=3), range(4)))
    for result in results:
        assert_same_run(result, expected)


# Faults: every one ends with an error naming server and model, within the timeouts, with nothing half-done.

def test_no_server_is_a_bounded_clear_error():
    address = f"127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    with pytest.raises(ServerError, match=f"Triton at {address}, model sam_encoder: "):
        TritonSamTool(address, timeout=2, retries=1)
    assert time.monotonic() - started < 10


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ServerError, match=f"Triton at {address}, model sam_encoder"):
            TritonSamTool(address, timeout=1.5, retries=1)
        assert time.monotonic() - started < 10


def test_unknown_model_is_named(sam_server):
    with pytest.raises(ServerError, match=f"Triton at {sam_server.grpc_url}, model sam_nope: not ready"):
        TritonSamTool(sam_server.grpc_url, encoder_model="sam_nope")


def test_server_killed_mid_session_ends_the_run_with_a_tool_error(own_server, demo_image, demo_reference):
    tool = TritonSamTool(own_server.grpc_url, timeout=60, retries=1)  # a dead server refuses at once: no waiting
    embedding = tool.encode(demo_image)
    os.killpg(own_server.process.pid, signal.SIGKILL)  # tritonserver and its python-backend stubs, at once
    own_server.process.wait()
    started = time.monotonic()
    result = Agent(tool, build_policy("oracle", ground_truth=demo_reference)).run(
        demo_image, "Segment the liver.", embedding=embedding)
    assert time.monotonic() - started < 15
    assert result.status is RunStatus.TOOL_ERROR and not result.status.completed
    assert f"Triton at {own_server.grpc_url}, model sam_decoder" in result.error
    assert not result.mask.any() and result.clicks == []  # no mask from the failed step


def test_model_unloaded_mid_session_is_named(own_server, demo_image, demo_reference):
    from ibisagent.tools.base import Click

    tool = TritonSamTool(own_server.grpc_url, timeout=5, retries=0)
    embedding = tool.encode(demo_image)
    tool.caller.client.unload_model("sam_decoder")
    with pytest.raises(ServerError, match=f"Triton at {own_server.grpc_url}, model sam_decoder: .*unknown model"):
        tool.predict(embedding, [Click(0.4, 0.5, True)])


def test_cli_segment_through_a_dead_server_writes_nothing(tmp_path):
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "ibisagent.cli", "demo", "--policy", "oracle", "--server", f"127.0.0.1:{free_ports(1)[0]}",
         "--out", str(out)], capture_output=True, text=True, timeout=120)  # --server: the served tool by default
    assert process.returncode == 2 and not out.exists()
    assert process.stderr.strip().splitlines()[-1].startswith("ibis: error: Triton at 127.0.0.1:")


def test_ibis_serve_starts_answers_and_stops_on_sigint(sam_repository, triton_install, demo_image):
    grpc_port, http_port, metrics_port = free_ports(3)
    process = subprocess.Popen(
        [sys.executable, "-m", "ibisagent.cli", "serve", "--repository", str(sam_repository),
         "--server-env", str(SERVER_ENV), "--grpc-port", str(grpc_port), "--http-port", str(http_port),
         "--metrics-port", str(metrics_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = process.stdout.readline()
        assert ready.startswith(f"ready: Triton at 127.0.0.1:{grpc_port}"), ready + process.stderr.read()[-2000:]
        tool = TritonSamTool(f"127.0.0.1:{grpc_port}")
        assert tool.encode(demo_image).features.shape == (1, 256, 64, 64)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
        log = process.stderr.read()
        assert "successfully unloaded 'sam_decoder'" in log  # the server's log was forwarded
        with pytest.raises(ServerError):
            TritonSamTool(f"127.0.0.1:{grpc_port}", timeout=2, retries=0)
    finally:
        if process.poll() is None:
            process.kill()


# The policy MLLM: ibis_mllm (transformers, python backend) against the in-process hf policy.

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    from tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="module")
def full_server(sam_repository, triton_install, tiny_qwen, tmp_path_factory):
    """The sam models and ibis_mllm (on the tiny Qwen2.5-VL, given by environment variable)."""
    repository = tmp_path_factory.mktemp("full") / "triton_models"
    shutil.copytree(sam_repository, repository)
    copy_models(("ibis_mllm",), repository)
    log: list[str] = []
    server = start_server(repository, triton_install, (*SAM_MODELS, "ibis_mllm"),
                          env={"IBIS_MLLM_PATH": str(tiny_qwen)}, log=log)
    yield server, log
    server.stop()


def test_the_rendered_prompt_is_the_checkpoint_chat_template(tiny_qwen, demo_image):
    from transformers import AutoProcessor

    from ibisagent.policies.chat import split_images
    from ibisagent.serving.triton_policy import render_qwen_chat

    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You segment."}]},
        {"role": "user", "content": [{"type": "image", "image": demo_image}, {"type": "text", "text": "Liver?"}]},
    ]
    chat, _ = split_images(messages)
    expected = AutoProcessor.from_pretrained(tiny_qwen, local_files_only=True).apply_chat_template(
        chat, add_generation_prompt=True, tokenize=False)
    prompt, images = render_qwen_chat(messages)
    assert prompt == expected and len(images) == 1


def test_agent_with_triton_policy_and_tool_matches_hf_in_process(full_server, tiny_qwen, onnx_dir, demo_image):
    from ibisagent.tools.onnx_tool import OnnxSamTool

    server, log = full_server
    query = "Segment the liver."
    local = Agent(OnnxSamTool(onnx_dir), build_policy("hf", model_path=tiny_qwen, max_new_tokens=24),
                  max_turns=4, max_invalid=3).run(demo_image, query)
    served = Agent(TritonSamTool(server.grpc_url),
                   build_policy("triton", server=server.grpc_url, max_tokens=24, timeout=60),
                   max_turns=4, max_invalid=3).run(demo_image, query)
    assert served.error is None and served.status is local.status
    texts = [turn.raw_text for turn in served.turns]
    assert texts == [turn.raw_text for turn in local.turns] and any(texts)  # greedy: the same words, turn by turn
    assert np.array_equal(served.mask, local.mask)
    assert not any(query in line for line in log)  # request text never reaches the server's log


def test_policy_with_the_model_not_loaded_is_named(sam_server):
    from ibisagent.policies import PolicyError

    with pytest.raises(PolicyError, match=f"Triton at {sam_server.grpc_url}, model ibis_mllm: not ready"):
        build_policy("triton", server=sam_server.grpc_url, timeout=5)


def test_policy_server_killed_mid_session_is_a_bounded_policy_error(sam_repository, triton_install, tiny_qwen,
                                                                    tmp_path, demo_image, lite_tool):
    repository = copy_models(("ibis_mllm",), tmp_path / "triton_models")
    server = start_server(repository, triton_install, ("ibis_mllm",), env={"IBIS_MLLM_PATH": str(tiny_qwen)})
    try:
        policy = build_policy("triton", server=server.grpc_url, max_tokens=8, timeout=5, retries=1)
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        started = time.monotonic()
        result = Agent(lite_tool, policy).run(demo_image, "Segment the liver.")
        assert time.monotonic() - started < 20
        assert result.status is RunStatus.POLICY_ERROR and f"Triton at {server.grpc_url}, model ibis_mllm" in result.error
        assert result.turns == [] and not result.mask.any()
    finally:
        server.stop()


def test_the_vllm_variant_speaks_the_same_interface():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def interface(path: Path):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        return ({(t.name, t.data_type, tuple(t.dims), t.optional) for t in config.input},
                {(t.name, t.data_type, tuple(t.dims)) for t in config.output},
                config.model_transaction_policy.decoupled, config.backend)

    *python_io, python_backend = interface(REPO / "triton_models" / "ibis_mllm" / "config.pbtxt")
    *vllm_io, vllm_backend = interface(REPO / "triton_models_vllm" / "ibis_mllm" / "config.pbtxt")
    assert python_io == vllm_io and (python_backend, vllm_backend) == ("python", "vllm")
    assert "model" in json.loads((REPO / "triton_models_vllm" / "ibis_mllm" / "1" / "model.json").read_text())
    for name in SAM_MODELS:  # the GPU repository links the same sam models
        assert (REPO / "triton_models_vllm" / name).resolve() == (REPO / "triton_models" / name).resolve()


def test_serving_bench_reports_all_tables_and_restores_the_encoder(own_server):
    from ibisagent.serving.bench import run_serving_bench

    report = run_serving_bench(own_server.grpc_url, sessions=(1, 2), clicks=2)
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows if row.split("|")[1].strip() in ("1", "2")] == ["1", "2"]
    assert any(row.startswith("| resident (default) | ") for row in rows)
    assert any(row.startswith("| no dynamic batching | ") for row in rows)
    config = TritonSamTool(own_server.grpc_url).caller.model_config("sam_encoder")
    assert "dynamic_batching" in config  # reloaded as configured


def test_a_model_that_cannot_load_stops_the_start_with_its_reason(triton_install, tmp_path):
    repository = copy_models(("ibis_mllm",), tmp_path / "triton_models")
    started = time.monotonic()
    with pytest.raises(ServerError, match="load failed for model 'ibis_mllm'.*no checkpoint; set parameter model_path"):
        start_server(repository, triton_install, ("ibis_mllm",), env={"IBIS_MLLM_PATH": ""})
    assert time.monotonic() - started < 120
