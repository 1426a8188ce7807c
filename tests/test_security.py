"""Security: every server we start listens on loopback unless told otherwise (one test per server), requests
are bounded, and no patient attribute reaches any log, trajectory or side-car of a whole run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")

from conftest import SHARED_DATA  # noqa: E402
from ibisagent.label.client import get  # noqa: E402
from test_triton import (REPO, SERVER_ENV, copy_models, free_ports, start_server,  # noqa: E402,F401
                         tiny_qwen, triton_install)

from ibisagent.serving.environment import ServerError  # noqa: E402
from ibisagent.serving.repository import SAM_MODELS, prepare_repository  # noqa: E402
from ibisagent.stress.security import exposed_addresses, leaks, non_loopback_address, reachable_from  # noqa: E402

OTHER_ADDRESS = non_loopback_address()  # what another machine would connect to


def assert_loopback_only(pgid: int, ports: list[int]) -> None:
    found, exposed = exposed_addresses(pgid)
    assert {port for _, port in found} >= set(ports), found  # it does listen: the check sees its sockets
    assert exposed == set(), f"listening beyond loopback: {sorted(exposed)}"
    if OTHER_ADDRESS:
        assert not any(reachable_from(OTHER_ADDRESS, port) for port in ports)


@pytest.fixture(scope="module")
def sam_repository(tmp_path_factory, onnx_dir):
    repository = copy_models(SAM_MODELS, tmp_path_factory.mktemp("security") / "triton_models")
    assert prepare_repository(repository, f"onnx:{onnx_dir}")
    return repository


def test_triton_listens_on_loopback_unless_told_otherwise(sam_repository, triton_install):
    server = start_server(sam_repository, triton_install)
    try:
        assert_loopback_only(server.process.pid, [server.grpc_port, server.http_port, server.metrics_port])
        bounded_requests_are_refused_and_the_server_keeps_serving(server)
    finally:
        server.stop()
    if OTHER_ADDRESS is None:
        pytest.skip("this machine has no address besides loopback: --host cannot be shown to take effect")
    ports = free_ports(3)
    from ibisagent.serving.server import TritonServer

    told = TritonServer(sam_repository, SAM_MODELS, host="0.0.0.0", grpc_port=ports[0], http_port=ports[1],
                        metrics_port=ports[2], install=triton_install, log=lambda line: None).start()
    try:  # told otherwise: reachable, which also shows the check above could fail
        assert ports[0] in {port for _, port in exposed_addresses(told.process.pid)[1]}  # on 0.0.0.0 or ::
        assert reachable_from(OTHER_ADDRESS, ports[0])
    finally:
        told.stop()


def bounded_requests_are_refused_and_the_server_keeps_serving(server) -> None:
    """Point counts, key sizes and batches are bounded: each request beyond them is one clear error, and an
    ordinary request after them is answered."""
    from ibisagent.stress.security import bounded_requests

    rows = bounded_requests(server.grpc_url)
    assert [what for what, _, refused in rows if not refused] == [], rows


def test_the_policy_model_refuses_requests_beyond_its_bounds(sam_repository, triton_install, tiny_qwen, tmp_path):
    from ibisagent.serving.grpc_client import TritonCaller

    repository = tmp_path / "triton_models"
    copy_models(("ibis_mllm",), repository)
    from ibisagent.serving.server import TritonServer

    ports = free_ports(3)
    server = TritonServer(repository, ("ibis_mllm",), grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2],
                          install=triton_install, env={"IBIS_MLLM_PATH": str(tiny_qwen)},
                          log=lambda line: None).start(600)  # the policy model loads slowly on a busy machine
    try:
        caller = TritonCaller(server.grpc_url, timeout=60, retries=0)

        def ask(prompt: str, sampling: str, images: int = 0) -> None:
            inputs = {"text_input": np.array([prompt.encode()], dtype=np.object_),
                      "sampling_parameters": np.array([sampling.encode()], dtype=np.object_)}
            if images:
                inputs["image"] = np.array([b"x"] * images, dtype=np.object_)
            caller.infer_decoupled("ibis_mllm", inputs, ["text_output"])

        with pytest.raises(ServerError, match="max_tokens must be in 1..4096"):
            ask("hello", '{"max_tokens": 100000000}')
        with pytest.raises(ServerError, match="at most 200000 prompt characters and 32 images"):
            ask("x" * 200_001, '{"max_tokens": 2}')
        with pytest.raises(ServerError, match="at most 200000 prompt characters and 32 images"):
            ask("hello", '{"max_tokens": 2}', images=33)
        ask("hello", '{"max_tokens": 2, "temperature": 0}')  # still serving
    finally:
        server.stop()


@pytest.fixture(scope="module")
def label_env():
    from ibisagent.label.environment import label_env_path

    env = label_env_path(REPO / ".venv-label")
    if not (env / "bin" / "monailabel").is_file():
        pytest.skip(f"no MONAI Label environment at {env}: run `ibis label-serve --setup`")
    return env


@pytest.fixture(scope="module")
def label_server(label_env, med2d_manifest, tmp_path_factory):
    from ibisagent.label.server import LabelServer

    folder = tmp_path_factory.mktemp("label-security")
    studies = folder / "inside" / "studies"
    studies.mkdir(parents=True)
    shutil.copy(med2d_manifest.parent / "images" / "imis-btcv" / "ABD_035_51.png", studies)
    server = LabelServer(studies, folder / "app", port=free_ports(1)[0], label_env=label_env, log=lambda line: None)
    server.start(900)
    yield server, studies
    server.stop()


def test_monai_label_listens_on_loopback_only(label_server):
    server, _ = label_server
    assert_loopback_only(server.process.pid, [server.port])  # the server and the agent's worker


@pytest.mark.parametrize("image, filename, tag", [
    ("../../escaped", "x.png", None),  # the image id names a path
    ("", "..", None),  # no id: MONAI Label takes it from the file name
    ("ABD_035_51", "label.png", "../../escaped"),  # the label tag names a path
    ("..", "x.png", None),
])
def test_monai_label_uploads_cannot_leave_the_studies_folder(label_server, image, filename, tag):
    """MONAI Label joins image ids and label tags to its folder as given: `../../escaped` wrote outside it."""
    from ibisagent.label.client import put_image, put_label

    server, studies = label_server

    def outside() -> list[Path]:  # everything near the studies folder but in it or the app folder
        kept = (studies, server.app_dir)
        return sorted(p for p in studies.parent.parent.rglob("*") if not any(p == k or k in p.parents for k in kept))

    before = outside()
    png = (studies / "ABD_035_51.png").read_bytes()
    answer = put_label(server.url, image, png, filename, tag) if tag else put_image(server.url, image, png, filename)
    assert answer.status == 400, answer.body[:300]
    assert "may hold letters" in answer.json()["detail"]
    assert outside() == before
    assert get(server.url, "/info/").status == 200


def test_monai_label_still_takes_plain_uploads(label_server):
    from ibisagent.label.client import put_image, put_label

    server, studies = label_server
    png = (studies / "ABD_035_51.png").read_bytes()
    assert put_image(server.url, "copy_of_abd", png, "copy.png").status == 200
    assert (studies / "copy_of_abd.png").is_file()
    assert put_label(server.url, "copy_of_abd", png, "label.png", "final").status == 200
    assert (studies / "labels" / "final" / "copy_of_abd.png").is_file()


def test_orthanc_in_the_tests_refuses_other_machines(tmp_path):
    """Orthanc 1.10 has no bind address: it listens on every interface; RemoteAccessAllowed false refuses
    every client but loopback (401), which is what the label tests rely on."""
    import json
    import time

    executable, plugin = shutil.which("Orthanc"), "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
    if executable is None or not Path(plugin).is_file():
        pytest.skip("Orthanc with its DICOMweb plugin is absent (apt-get install orthanc orthanc-dicomweb)")
    if OTHER_ADDRESS is None:
        pytest.skip("this machine has no address besides loopback to connect from")
    port = free_ports(1)[0]
    config = {"Name": "ibisagent-security", "StorageDirectory": str(tmp_path / "storage"),
              "IndexDirectory": str(tmp_path / "index"), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [plugin]}
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([executable, str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(120):
            if reachable_from("127.0.0.1", port):
                break
            time.sleep(0.5)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=10).status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{OTHER_ADDRESS}:{port}/system", timeout=10)
        assert refused.value.code in (401, 403)  # Orthanc 1.10 answers 401 Unauthorized
    finally:
        process.terminate()
        process.wait(20)


def test_the_tests_own_chat_server_listens_on_loopback_only(tmp_path):
    port = free_ports(1)[0]
    process = subprocess.Popen([sys.executable, str(REPO / "tests" / "chat_server.py"), str(port),
                                str(tmp_path / "log.jsonl")], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        assert_loopback_only(process.pid, [port])
    finally:
        process.terminate()
        process.wait(10)


# ---------------------------------------------------------------------------------------------- patient data

def test_no_patient_attribute_in_any_output_or_log_of_a_whole_run(tmp_path, onnx_dir):
    from ibisagent.stress.security import canary_run

    source = SHARED_DATA / "dicom" / "dcmqi-ct-3slice"
    if not source.is_dir():
        pytest.skip(f"real DICOM absent: {source}")
    run = canary_run(source, tmp_path, tool=f"onnx:{onnx_dir}")
    assert run.seg_keeps_patient and run.log_records > 0 and run.files_scanned >= 8  # there was something to scan
    assert run.leaks == ()
