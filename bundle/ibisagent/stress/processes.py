"""What the fault and security checks observe of the processes we start: groups, sockets, memory, lines."""

from __future__ import annotations

import os
import selectors
import time
from typing import IO

import psutil

__all__ = ["group_members", "listening_addresses", "read_line_until", "tree_rss", "wait_for_child", "wait_gone"]


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (a server and, for Triton, its python-backend stubs)."""
    members = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def wait_gone(pgid: int, timeout: float) -> float | None:
    """Seconds until no process of the group is left, or None when some still run after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not group_members(pgid):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def wait_for_child(pid: int, marker: str, timeout: float) -> int | None:
    """The pid of a descendant of `pid` whose command line contains `marker`, once it exists (None after timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                try:
                    if any(marker in part for part in child.cmdline()):
                        return child.pid
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue
        except psutil.NoSuchProcess:
            return None
        time.sleep(0.1)
    return None


def read_line_until(stream: IO[bytes], prefix: str, timeout: float) -> str | None:
    """Read a pipe (unbuffered: `bufsize=0`) until a line starts with `prefix` (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    pending = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                return None
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                return None
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if text.startswith(prefix):
                    return text
    return None


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket these processes listen on."""
    found = set()
    for pid in pids:
        try:
            for connection in psutil.Process(pid).net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add((connection.laddr.ip, connection.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total
