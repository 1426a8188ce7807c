"""The agent's own process beside MONAI Label: requests in, label files and result JSON out.

MONAI Label 0.8.5 needs pydicom<3 and the agent's DICOM side (highdicom 0.28)
needs pydicom>=3, so the two cannot share an interpreter. The MONAI Label
process (`label/app.py`) starts this worker from the agent's environment and
talks to it over a socket pair: length-framed JSON, one request at a time.
The worker holds the tool, the policies and every session; it exits when
the socket closes, so it never outlives the server.

`AgentWorker` (the client side) uses the standard library only: it runs
inside the MONAI Label process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

__all__ = ["AgentWorker", "WorkerError", "main"]

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The worker could not be started or did not answer."""


class AgentWorker:
    """Start the worker (`python -m ibisagent.label.worker`) and call it; restarts it if it died."""

    def __init__(self, python: str, arguments: Sequence[str] = (), *, start_timeout: float = 300.0,
                 request_timeout: float = 600.0):
        self.python = python
        self.arguments = list(arguments)
        self.start_timeout = start_timeout
        self.request_timeout = request_timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self.ready: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        """Start the worker and wait for its ready message (what it serves: config, labels, version)."""
        with self._lock:
            return self._start()

    def _start(self) -> dict[str, Any]:
        self._stop()
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        try:
            self._process = subprocess.Popen(
                [self.python, "-m", "ibisagent.label.worker", "--fd", str(theirs.fileno()), *self.arguments],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        except OSError as error:
            ours.close()
            raise WorkerError(f"cannot start the agent worker with {self.python}: {error}") from None
        finally:
            theirs.close()
        self._connection = Connection(ours.detach())
        self.ready = self._receive(self.start_timeout, "starting")
        return self.ready

    def _receive(self, timeout: float, doing: str) -> dict[str, Any]:
        assert self._connection is not None and self._process is not None
        deadline = time.monotonic() + timeout
        while not self._connection.poll(0.5):
            if self._process.poll() is not None:
                raise WorkerError(f"the agent worker exited with status {self._process.returncode} while {doing}")
            if time.monotonic() > deadline:
                raise WorkerError(f"the agent worker gave no answer within {timeout:.0f} s while {doing}")
        try:
            return json.loads(self._connection.recv_bytes())
        except (EOFError, OSError) as error:
            raise WorkerError(f"the agent worker closed the connection while {doing}: {error}") from None

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request and its answer; a dead worker is started again first."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            assert self._connection is not None
            try:
                self._connection.send_bytes(json.dumps(message).encode("utf-8"))
            except OSError as error:
                raise WorkerError(f"cannot reach the agent worker: {error}") from None
            return self._receive(self.request_timeout, f"answering {message.get('op')}")

    def _stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            try:
                self._process.wait(10)  # it exits on its own once the socket closes
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()


# ---------------------------------------------------------------------------------------------- worker side

def _build_task(args: argparse.Namespace):
    from ..policies import build_policy
    from ..policies.query_encoder import shared_query_encoder
    from ..tools.factory import build_tool
    from .task import TASK_CONFIG, AgentLabelTask

    tool = build_tool(args.tool)
    policies = list(TASK_CONFIG["policy"])
    return AgentLabelTask(tool, build_policy, policies, args.root, session_bytes=args.session_mb << 20,
                          embedding_bytes=args.embedding_mb << 20, expiry_seconds=args.expiry,
                          query_encoder=shared_query_encoder)


def _describe(task) -> dict[str, Any]:
    from .. import __version__
    from ..dicom.codes import known_labels
    from .task import TASK_CONFIG

    return {"ready": True, "version": __version__, "config": dict(TASK_CONFIG), "labels": known_labels(),
            "tool": task.tool.name}


def _answer(task, message: dict[str, Any], out_root: Path) -> dict[str, Any]:
    from .task import LabelRequestError

    if message.get("op") == "series_image":
        try:
            path = task.series_image(message.get("image") or "", str(message.get("image_id") or ""), out_root)
        except LabelRequestError as error:
            return {"ok": False, "status": error.status, "error": str(error)}
        return {"ok": True, "path": str(path)}
    if message.get("op") != "infer":
        return {"ok": False, "status": 400, "error": f"unknown operation {message.get('op')!r}"}
    out_dir = Path(tempfile.mkdtemp(prefix="request-", dir=out_root))
    try:
        label, result = task.infer(message.get("image") or "", str(message.get("image_id") or ""),
                                   message.get("params") or {}, out_dir)
    except LabelRequestError as error:
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"ok": False, "status": error.status, "error": str(error)}
    except Exception as error:  # anything else is the server's fault: answered, logged, the worker goes on
        shutil.rmtree(out_dir, ignore_errors=True)
        log.exception("the label task failed")
        return {"ok": False, "status": 500, "error": f"the agent failed: {type(error).__name__}"}
    # The label file goes beside the request folder: MONAI Label deletes the file once sent; the folder (the SEG
    # and its side-car, when written) is the caller's to remove once stored.
    final = out_root / f"{out_dir.name}{label.name[len('label'):]}"
    os.replace(label, final)
    if "seg_file" not in result:
        shutil.rmtree(out_dir, ignore_errors=True)
    return {"ok": True, "label": str(final), "result": result}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ibisagent.label.worker")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the MONAI Label process")
    parser.add_argument("--root", action="append", required=True, help="a folder images may come from")
    parser.add_argument("--tool", default="lite-medsam")
    parser.add_argument("--session-mb", type=int, default=512)
    parser.add_argument("--embedding-mb", type=int, default=1024)
    parser.add_argument("--expiry", type=float, default=3600.0, help="idle seconds before a session is dropped")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[ibisagent worker] %(levelname)s %(message)s")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    connection = Connection(args.fd)
    task = _build_task(args)
    connection.send_bytes(json.dumps(_describe(task)).encode("utf-8"))
    with tempfile.TemporaryDirectory(prefix="ibisagent-label-") as out_root:
        while True:
            try:
                message = json.loads(connection.recv_bytes())
            except (EOFError, OSError):
                return 0  # the MONAI Label process is gone
            except ValueError:
                answer = {"ok": False, "status": 400, "error": "the request was not JSON"}
            else:
                answer = _answer(task, message, Path(out_root))
            connection.send_bytes(json.dumps(answer, default=str).encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
