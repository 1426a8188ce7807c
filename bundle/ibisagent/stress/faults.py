"""Faults injected into real processes: `ibis serve` stopped the way service managers stop things.

A trial starts `ibis serve`, sends one signal while Triton is starting or
serving, and measures when `ibis` exits and when the last process of
Triton's group (the server and its python-backend stubs) is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import group_members, read_line_until, wait_for_child, wait_gone

__all__ = ["SignalTrial", "serve_command", "serve_signal_trial"]

# Triton gets 10 s for in-flight requests (TritonServer.exit_timeout), then its group is killed.
GONE_WITHIN_S = 30.0


@dataclass(frozen=True)
class SignalTrial:
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


def serve_signal_trial(command: list[str], signum: int, moment: str, start_timeout: float = 180.0) -> SignalTrial:
    """Start `command` (an `ibis serve`), signal it at `moment`, see what is left."""
    if moment not in ("starting", "serving"):
        raise ValueError(f"moment must be 'starting' or 'serving', not {moment!r}")
    name = signal.Signals(signum).name
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    server = None
    try:
        server = wait_for_child(parent.pid, "tritonserver", start_timeout)
        if server is None:
            raise RuntimeError(f"`ibis serve` started no tritonserver within {start_timeout:.0f} s")
        if moment == "serving" and read_line_until(parent.stdout, "ready:", start_timeout) is None:
            raise RuntimeError(f"`ibis serve` printed no ready line within {start_timeout:.0f} s")
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
        return SignalTrial(name, moment, code, parent_seconds, server_seconds, leftover)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if server is not None and group_members(server):
            os.killpg(server, signal.SIGKILL)  # the group this trial started
        parent.stdout.close()
