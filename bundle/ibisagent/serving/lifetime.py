"""Servers we start go down with their parent, however the parent goes.

Service managers stop a service with SIGTERM (systemd, `docker stop`,
Kubernetes), a closed terminal sends SIGHUP, Ctrl-C SIGINT; the OOM killer or
`kill -9` sends SIGKILL, which no handler sees. A child server therefore gets
two guards: the kernel sends it SIGTERM when its parent dies
(`PR_SET_PDEATHSIG`, Linux), and while the parent serves, SIGTERM and SIGHUP
raise `StopRequested` (a KeyboardInterrupt) in its main thread, so every
signal takes the Ctrl-C path that stops the child and waits for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

__all__ = ["STOP_SIGNALS", "StopRequested", "child_dies_with_parent", "serve_until_stopped", "signals_deferred",
           "stop_signals_interrupt"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


class StopRequested(KeyboardInterrupt):
    """A stop signal arrived; the code that started a server stops it on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signum)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise StopRequested in the main thread for the duration (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Stop signals are recorded, not raised, for the duration: a second Ctrl-C cannot cut a clean stop short.

    Only the main thread can change handlers; elsewhere this does nothing.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def child_dies_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets SIGTERM when this process dies (SIGKILL included).

    The kernel watches the thread that forks, so the guard is set only when
    the main thread starts the child (whose end is the process's end); None
    elsewhere and off Linux.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: keep it tiny
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the guard was set
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Stoppable(Protocol):
    def running(self) -> bool: ...

    def stop(self) -> int | None: ...


def serve_until_stopped(server: Stoppable, ready: Callable[[], None] = lambda: None) -> int | None:
    """Call `ready` (the ready line), then wait while the server runs. A stop signal (under
    `stop_signals_interrupt`) stops it: None, even while the ready line is still being written. A server that
    exits on its own is reaped: its exit status, for the caller's error."""
    try:
        ready()
        while server.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        server.stop()
        return None
    return server.stop()
