"""Faults injected into real processes: our servers stopped the way service managers stop things.

A trial starts `ibis serve` (Triton) or `ibis label-serve` (MONAI Label),
sends one signal while the server is starting or serving, and measures when
`ibis` exits and when the last process of the server's group (Triton and its
python-backend stubs; MONAI Label and the agent's worker) is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..serving.lifetime import child_dies_with_parent
from .processes import group_members, read_line_until, wait_for_child, wait_gone

__all__ = ["SERVERS", "SignalTrial", "label_serve_command", "serve_command", "serve_signal_trial"]

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
