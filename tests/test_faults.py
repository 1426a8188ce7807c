"""Faults injected into real processes: servers stopped by signals, processes killed while writing, full disks.

The long versions run in `ibis stress` (docs/reliability.md); these are the quick ones.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")

from conftest import MED2D  # noqa: E402
from test_triton import REPO, SERVER_ENV, copy_models, free_ports, triton_install  # noqa: E402,F401

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


# ---------------------------------------------------------------------------------------------- killed while writing

@pytest.mark.parametrize("kind", ["run", "seg", "checkpoint"])
def test_a_writer_killed_at_any_moment_leaves_one_complete_output(tmp_path, kind):
    """SIGKILL while a run folder, a SEG with its side-car, or a training checkpoint is rewritten: what is there is
    the last complete output or the next one, never a mix (a run folder once mixed two runs; a SEG once sat beside
    the previous run's side-car). The next write clears what the killed one left hidden."""
    import random

    from ibisagent.stress.faults import kill_while_writing
    from ibisagent.stress.writers import check_output

    rng = random.Random(22)
    for attempt in range(3):
        out = tmp_path / f"try{attempt}" / "out"
        trial = kill_while_writing(kind, out, rng, max_delay=1.0)
        assert trial.survived, trial
    if kind == "run":  # a staging folder of the killed writer goes with the next write
        from ibisagent.stress.writers import _write_run

        _write_run(out, 99, np.full((192, 192, 3), 90, np.uint8))
        assert check_output("run", out) == (99, [])
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------- a full disk

def test_a_full_disk_is_one_clear_error_and_leaves_nothing(onnx_dir):
    """ibis segment and segment-dicom on a full disk: exit 2, one line naming the output and the cause, nothing
    written, the earlier outputs intact; a checkpoint save names its file (torch alone says 'unexpected pos')."""
    from ibisagent.stress.faults import full_disk_trials, small_disk

    try:
        with small_disk() as disk:
            trials = full_disk_trials(disk, f"onnx:{onnx_dir}")
    except OSError as error:
        pytest.skip(str(error))
    for trial in trials:
        assert trial.survived, trial


# ---------------------------------------------------------------------------------------------- a server that
# restarts or freezes while a session is open

@pytest.fixture()
def faulty_server(serve_args, triton_install):
    from test_triton import start_server

    server = start_server(serve_args[0], triton_install)
    yield server
    server.stop()


def test_a_session_survives_triton_restarting_between_its_clicks(faulty_server, demo_image, demo_reference):
    from ibisagent.stress.faults import restarted_server_mid_session

    trial = restarted_server_mid_session(faulty_server, demo_image, demo_reference)
    assert trial.survived, trial


def test_a_frozen_triton_is_a_bounded_named_error_and_serves_again_when_thawed(faulty_server, demo_image,
                                                                               demo_reference):
    from ibisagent.stress.faults import frozen_server_mid_session

    trial = frozen_server_mid_session(faulty_server, demo_image, demo_reference)
    assert trial.survived, trial
