"""Faults injected into real processes: our servers stopped the way service managers stop things.

A trial starts `ibis serve` (Triton) or `ibis label-serve` (MONAI Label),
sends one signal while the server is starting or serving, and measures when
`ibis` exits and when the last process of the server's group (Triton and its
python-backend stubs; MONAI Label and the agent's worker) is gone.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..serving.lifetime import child_dies_with_parent
from .processes import group_members, read_line_until, wait_for_child, wait_gone
from .writers import check_output

__all__ = ["FullDiskTrial", "KillTrial", "SERVERS", "SessionTrial", "SignalTrial", "TrainingTrial",
           "frozen_server_mid_session", "full_disk_trials", "kill_while_writing", "killed_training_resumes",
           "label_serve_command", "restarted_server_mid_session", "serve_command", "serve_signal_trial", "small_disk"]

# Triton gets 10 s for in-flight requests (TritonServer.exit_timeout), MONAI Label 20 s, then the group is killed.
GONE_WITHIN_S = 40.0
# What the server process's command line holds, per command.
SERVERS = {"serve": "tritonserver", "label-serve": "monailabel.main"}


@dataclass(frozen=True)
class SignalTrial:
    command: str  # serve | label-serve
    signal: str  # SIGTERM, SIGINT, SIGHUP, SIGKILL
    moment: str  # "starting" (tritonserver runs, not ready yet) or "serving" (after the ready line)
    parent_exit: int | None  # the exit status of `ibis serve` (negative: killed by that signal)
    parent_seconds: float | None  # signal -> `ibis serve` exited
    server_seconds: float | None  # signal -> no process of Triton's group left; None: some outlived the limit
    leftover: tuple[int, ...]  # pids still running at the limit (then killed by the trial)

    @property
    def survived(self) -> bool:
        """Everything went down, within the limit."""
        return self.parent_seconds is not None and self.server_seconds is not None and not self.leftover


def serve_command(repository: Path, server_env: Path, tool: str, ports: tuple[int, int, int]) -> list[str]:
    grpc, http, metrics = ports
    return [sys.executable, "-m", "ibisagent.cli", "serve", "--repository", str(repository), "--server-env",
            str(server_env), "--tool", tool, "--grpc-port", str(grpc), "--http-port", str(http),
            "--metrics-port", str(metrics)]


def label_serve_command(studies: Path, app_dir: Path, label_env: Path, tool: str, port: int) -> list[str]:
    return [sys.executable, "-m", "ibisagent.cli", "label-serve", "--studies", str(studies), "--app-dir",
            str(app_dir), "--label-env", str(label_env), "--tool", tool, "--port", str(port)]


def serve_signal_trial(command: list[str], signum: int, moment: str, start_timeout: float = 600.0) -> SignalTrial:
    """Start `command` (`ibis serve` or `ibis label-serve`), signal it at `moment`, see what is left."""
    if moment not in ("starting", "serving"):
        raise ValueError(f"moment must be 'starting' or 'serving', not {moment!r}")
    name = signal.Signals(signum).name
    which = command[command.index("ibisagent.cli") + 1]
    marker = SERVERS[which]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                              preexec_fn=child_dies_with_parent())  # a trial cut short leaves no server
    server = None
    try:
        server = wait_for_child(parent.pid, marker, start_timeout)
        if server is None:
            raise RuntimeError(f"`ibis {which}` started no {marker} within {start_timeout:.0f} s")
        if moment == "serving" and read_line_until(parent.stdout, "ready:", start_timeout) is None:
            raise RuntimeError(f"`ibis {which}` printed no ready line within {start_timeout:.0f} s")
        sent = time.monotonic()
        parent.send_signal(signum)
        try:
            code = parent.wait(GONE_WITHIN_S)
            parent_seconds = time.monotonic() - sent
        except subprocess.TimeoutExpired:
            code, parent_seconds = None, None
        gone = wait_gone(server, max(0.0, GONE_WITHIN_S - (time.monotonic() - sent)))
        server_seconds = None if gone is None else time.monotonic() - sent
        leftover = tuple(group_members(server))
        return SignalTrial(which, name, moment, code, parent_seconds, server_seconds, leftover)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server is not None and group_members(server):
            os.killpg(server, signal.SIGKILL)  # the group this trial started
        parent.stdout.close()


@dataclass(frozen=True)
class KillTrial:
    kind: str  # run | seg | checkpoint (see writers.py)
    delay_s: float  # after the first complete output, how long the writer ran before SIGKILL
    completed: int  # the last output the writer reported complete
    found: int | None  # the output found afterwards
    problems: tuple[str, ...]  # partial, mixed or unreadable output; a complete output lost
    debris: tuple[str, ...]  # hidden temporaries left beside it (never mistaken for output)

    @property
    def survived(self) -> bool:
        return not self.problems


def kill_while_writing(kind: str, out: Path, rng: random.Random, max_delay: float = 1.5) -> KillTrial:
    """Let `writers.py` rewrite `out` for a random time after its first complete output, SIGKILL it, check."""
    writer = subprocess.Popen([sys.executable, "-m", "ibisagent.stress.writers", kind, str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
                              preexec_fn=child_dies_with_parent())  # it writes forever: never outlive us
    try:
        if read_line_until(writer.stdout, "1", 300) is None:
            raise RuntimeError(f"the {kind} writer wrote nothing within 300 s")
        delay = rng.uniform(0.0, max_delay)
        time.sleep(delay)
        writer.kill()
        writer.wait()
        printed = writer.stdout.read().decode().split()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer.stdout.close()
    completed = int(printed[-1]) if printed else 1
    found, problems = check_output(kind, out)
    if found is None or found < completed:
        problems = [*problems, f"output {completed} was complete, found {found}: a finished output was lost"]
    elif found > completed + 1:
        problems = [*problems, f"found output {found}, the writer had finished only {completed}"]
    hidden = sorted(p.name for p in (out.iterdir() if out.is_dir() else []) if p.name.startswith("."))
    hidden += sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))
    return KillTrial(kind, round(delay, 3), completed, found, tuple(problems), tuple(hidden))


@dataclass(frozen=True)
class FullDiskTrial:
    what: str  # the command or writer that met the full disk
    exit_status: int | None  # the command's (None for an in-process writer)
    message: str  # the one line it gave
    left: tuple[str, ...]  # files it left on the disk
    earlier_intact: bool  # what was there before is still there, readable

    @property
    def survived(self) -> bool:
        return (self.exit_status in (None, 2) and "no space left" in self.message.lower() and not self.left
                and self.earlier_intact)


@contextmanager
def small_disk(size_kib: int = 256) -> Iterator[Path]:
    """A small tmpfs, mounted for the duration (root only; OSError where mounting is refused)."""
    mount = Path(tempfile.mkdtemp(prefix="ibis-full-disk-"))
    try:
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                                                str(mount)], capture_output=True).returncode != 0:
            raise OSError("cannot mount a tmpfs here (root and mount permission are needed)")
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        shutil.rmtree(mount, ignore_errors=True)


_SCRIPT = ("<think>t</think><action>Positive Point (0.5000, 0.5000)</action>\n"
           "<think>t</think><action>Terminate</action>\n")


def full_disk_trials(disk: Path, tool: str) -> list[FullDiskTrial]:
    """`ibis segment` and `ibis segment-dicom` writing to a full disk, then a checkpoint save; an earlier
    output of each is on the disk first and must survive."""
    import torch
    from pydicom.data import get_testdata_file

    from ..outputs import save_torch_atomic

    responses = disk.parent / f".{disk.name}-responses.txt"
    responses.write_text(_SCRIPT)
    commands = {"ibis segment": ["segment", get_testdata_file("examples_overlay.dcm")],
                "ibis segment-dicom": ["segment-dicom", get_testdata_file("CT_small.dcm")]}
    earlier = disk / "last.pt"
    save_torch_atomic({"weights": torch.zeros(100)}, earlier)
    filler = disk / "filler"
    filler.write_bytes(bytes(max(0, shutil.disk_usage(disk).free - 8192)))  # full but for 8 KiB
    before = {"filler", "last.pt"}
    trials = []
    for what, arguments in commands.items():
        out = disk / what.split()[-1]
        finished = subprocess.run([sys.executable, "-m", "ibisagent.cli", *arguments, "--query", "Segment the liver.",
                                   "--policy", "scripted", "--responses", str(responses), "--tool", tool,
                                   "--out", str(out)], capture_output=True, text=True, timeout=900)
        lines = finished.stderr.strip().splitlines() or [""]
        left = tuple(sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if p.name not in before))
        named = f"cannot write {out}" in lines[-1]
        trials.append(FullDiskTrial(what, finished.returncode, lines[-1] if named else f"(names no output) {lines[-1]}",
                                    left, filler.is_file() and earlier.is_file()))
    try:
        save_torch_atomic({"weights": torch.zeros(1_000_000)}, earlier)
        message = "(no error)"
    except OSError as error:
        message = str(error)
    left = tuple(sorted(p.name for p in disk.iterdir() if p.name not in before))
    intact = torch.load(earlier, weights_only=True)["weights"].shape == (100,)
    trials.append(FullDiskTrial("save_torch_atomic (training checkpoints)", None, message, left, intact))
    responses.unlink()
    return trials


@dataclass(frozen=True)
class SessionTrial:
    fault: str  # what happened to the server while a client's session was open
    during: str  # what the session saw while it lasted
    after: str  # what the next run saw once the server was back
    seconds: float  # how long the session took to see it
    survived: bool  # a bounded, named error during, and the solo result after


def _oracle_run(tool, image, reference, embedding=None):
    from ..agent import Agent
    from ..policies import build_policy

    return Agent(tool, build_policy("oracle", ground_truth=reference, target_iou=0.99), max_turns=5).run(
        image, "Segment the target.", embedding=embedding)


def _same_run(result, solo) -> bool:
    import numpy as np

    return (result.status is solo.status and [t.action for t in result.turns] == [t.action for t in solo.turns]
            and np.array_equal(result.mask, solo.mask))


def restarted_server_mid_session(server, image, reference) -> SessionTrial:
    """Encode, restart Triton (its resident embeddings are gone), go on clicking: the session encodes again by
    itself and ends with the solo run's result."""
    from ..serving.triton_tool import TritonSamTool

    tool = TritonSamTool(server.grpc_url, timeout=60, retries=3)
    solo = _oracle_run(tool, image, reference)
    embedding = tool.encode(image)
    server.stop()
    server.start()
    started = time.monotonic()
    result = _oracle_run(tool, image, reference, embedding=embedding)
    seconds = time.monotonic() - started
    same = _same_run(result, solo)
    tool.caller.close()
    return SessionTrial("Triton restarted between a session's encoding and its clicks",
                        f"{result.status.value}, {len(result.clicks)} clicks", "the solo result" if same else
                        f"another result than solo ({result.error})", round(seconds, 2), same)


def frozen_server_mid_session(server, image, reference, timeout: float = 3.0) -> SessionTrial:
    """Triton frozen (SIGSTOP on its group) while a session clicks: each request meets its deadline, the run ends
    with a tool error naming server and model, in bounded time; thawed, the next run is the solo run."""
    from ..agent import RunStatus
    from ..serving.triton_tool import TritonSamTool

    tool = TritonSamTool(server.grpc_url, timeout=timeout, retries=1)
    solo = _oracle_run(TritonSamTool(server.grpc_url, timeout=120), image, reference)
    embedding = TritonSamTool(server.grpc_url, timeout=120).encode(image)
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        frozen = _oracle_run(tool, image, reference, embedding=embedding)
        seconds = time.monotonic() - started
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
    after = _oracle_run(TritonSamTool(server.grpc_url, timeout=120), image, reference)
    named = frozen.status is RunStatus.TOOL_ERROR and f"Triton at {server.grpc_url}, model sam_decoder" in (
        frozen.error or "")
    bounded = seconds < (timeout + 2) * 2 + 5  # two attempts, each within its deadline, plus the backoff
    same = _same_run(after, solo)
    return SessionTrial(f"Triton frozen (SIGSTOP) mid-session, {timeout:g} s deadline",
                        f"{frozen.status.value}: {(frozen.error or '')[:120]}",
                        "the solo result" if same else "another result than solo", round(seconds, 2),
                        named and bounded and same)


@dataclass(frozen=True)
class TrainingTrial:
    killed_after: str  # what the last complete checkpoint held when the trainer was killed
    resumed_exit: int  # `--resume`'s exit status
    epochs: tuple[int, ...]  # imitation epochs in the final summary, in order
    iterations: tuple[int, ...]  # GRPO iterations in the final summary, in order
    expected: tuple[int, int]  # (epochs, iterations) the config asks for

    @property
    def survived(self) -> bool:
        epochs, iterations = self.expected
        return (self.resumed_exit == 0 and self.epochs == tuple(range(1, epochs + 1))
                and self.iterations == tuple(range(1, iterations + 1)))


def killed_training_resumes(shared_data: Path, work: Path, rng: random.Random, repo: Path = Path("."),
                            epochs: int = 3, iterations: int = 3) -> TrainingTrial:
    """IBIS-lite trained by the bundle config (configs/train_lite.yaml, small settings), SIGKILLed at a random
    moment after its first checkpoint, then run again with resume: it must finish from the last complete
    checkpoint, every epoch and iteration in its record once."""
    import json

    import torch

    manifest, queries = shared_data / "med2d" / "manifest.csv", shared_data / "med2d" / "queries.json"
    trajectories, out, cache = work / "trajectories.jsonl", work / "run", work / "cache"
    subprocess.run([sys.executable, "-m", "ibisagent.cli", "trajectories", "--manifest", str(manifest), "--split",
                    "train", "--per-source", "1", "--limit", "6", "--max-steps", "3", "--queries", str(queries),
                    "--out", str(trajectories), "--cache-dir", str(cache)], check=True, capture_output=True,
                   timeout=1800)
    overrides = {"manifest": manifest, "queries": queries, "lite_training#trajectories": f"['{trajectories}']",
                 "lite_training#out_dir": out, "lite_training#cache_dir": cache, "lite_training#sft_epochs": epochs,
                 "lite_training#sft_batch_size": 4, "lite_training#dagger_rounds": 0,
                 "lite_training#grpo_iterations": iterations, "lite_training#grpo_batch_size": 2,
                 "lite_training#grpo_group_size": 4, "lite_training#grpo_max_steps": 2,
                 "lite_training#val_per_source": 1, "lite_training#val_max_turns": 2,
                 "lite_training#validate_every": 1}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(repo / "configs" / "train_lite.yaml"),
               *[part for key, value in overrides.items() for part in (f"--{key}", str(value))]]
    trainer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=repo,
                               preexec_fn=child_dies_with_parent())
    try:
        deadline = time.monotonic() + 1800
        while not (out / "last.pt").is_file() and trainer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(rng.uniform(0.0, 3.0))
    finally:
        trainer.kill()
        trainer.wait()
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["state"]
    killed_after = f"epoch {state['sft_epoch']}, iteration {state['grpo_iteration']}"
    resumed = subprocess.run([*command, "--lite_training#resume", "True"], capture_output=True, text=True,
                             timeout=3600, cwd=repo)
    summary_path = out / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"history": [], "grpo_log": []}
    epochs_done = tuple(entry["epoch"] for entry in summary["history"] if "epoch" in entry)  # GRPO's have none
    return TrainingTrial(killed_after, resumed.returncode, epochs_done,
                         tuple(entry["iteration"] for entry in summary["grpo_log"]), (epochs, iterations))
