"""Faults injected into real processes: servers stopped by signals, processes killed while writing, full disks.

The long versions run in `ibis stress` (docs/reliability.md); these are the quick ones.
"""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")

from test_triton import SERVER_ENV, copy_models, free_ports  # noqa: E402

from ibisagent.serving.environment import ServerError, find_triton  # noqa: E402
from ibisagent.serving.repository import SAM_MODELS, prepare_repository  # noqa: E402
from ibisagent.stress.faults import serve_command, serve_signal_trial  # noqa: E402


@pytest.fixture(scope="module")
def serve_args(tmp_path_factory, onnx_dir):
    """What `ibis serve` needs to start on the conftest's graphs without exporting anything."""
    try:
        find_triton(SERVER_ENV)
    except ServerError as error:
        pytest.skip(f"no Triton server here: {error}")
    repository = copy_models(SAM_MODELS, tmp_path_factory.mktemp("faults") / "triton_models")
    assert prepare_repository(repository, f"onnx:{onnx_dir}")
    return repository, SERVER_ENV, f"onnx:{onnx_dir}"


@pytest.mark.parametrize("signum, moment", [(signal.SIGTERM, "serving"), (signal.SIGHUP, "serving"),
                                            (signal.SIGTERM, "starting"), (signal.SIGKILL, "serving")])
def test_ibis_serve_takes_triton_down_with_it(serve_args, signum, moment):
    """systemd, docker stop and Kubernetes send SIGTERM; a closed terminal SIGHUP; the OOM killer SIGKILL.
    Whichever, and whether Triton is still loading or serving, no process of Triton's group outlives `ibis serve`."""
    trial = serve_signal_trial(serve_command(*serve_args, tuple(free_ports(3))), signum, moment)
    assert trial.survived, trial
    if signum == signal.SIGKILL:
        assert trial.parent_exit == -signal.SIGKILL  # no handler ran: the kernel's parent-death signal did it
    else:
        assert trial.parent_exit == (0 if moment == "serving" else 130), trial
