"""Faults injected into real processes: servers stopped by signals, processes killed while writing, full disks.

The long versions run in `ibis stress` (docs/reliability.md); these are the quick ones.
"""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")

from conftest import MED2D  # noqa: E402
from test_triton import REPO, SERVER_ENV, copy_models, free_ports  # noqa: E402

from ibisagent.serving.environment import ServerError, find_triton  # noqa: E402
from ibisagent.serving.repository import SAM_MODELS, prepare_repository  # noqa: E402
from ibisagent.stress.faults import label_serve_command, serve_command, serve_signal_trial  # noqa: E402


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


@pytest.fixture(scope="module")
def label_args(tmp_path_factory, med2d_manifest, onnx_dir):
    """What `ibis label-serve` needs: its environment, a studies folder with one real image, an app folder."""
    import shutil

    from ibisagent.label.environment import label_env_path

    env = label_env_path(REPO / ".venv-label")
    if not (env / "bin" / "monailabel").is_file():
        pytest.skip(f"no MONAI Label environment at {env}: run `ibis label-serve --setup`")
    studies = tmp_path_factory.mktemp("label-studies")
    shutil.copy(MED2D / "images" / "imis-btcv" / "ABD_035_51.png", studies)
    return studies, tmp_path_factory.mktemp("label-app"), env, f"onnx:{onnx_dir}"


@pytest.mark.parametrize("signum, moment", [(signal.SIGHUP, "serving"), (signal.SIGKILL, "serving")])
def test_ibis_label_serve_takes_monailabel_down_with_it(label_args, signum, moment):
    """The same for MONAI Label and the agent's worker it runs."""
    trial = serve_signal_trial(label_serve_command(*label_args, free_ports(1)[0]), signum, moment)
    assert trial.survived, trial
    assert trial.parent_exit == (-signal.SIGKILL if signum == signal.SIGKILL else 0), trial
