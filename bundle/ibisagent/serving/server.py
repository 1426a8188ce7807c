"""Run a tritonserver process on a model repository: start, wait until ready, stop cleanly.

`ibis serve` and the integration tests use this same code. The server binds
127.0.0.1 unless told otherwise, loads only the models named (explicit model
control), its log is forwarded line by line to a callback, and it dies with
the process that started it (see `lifetime.py`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .environment import ServerError, TritonInstall, find_triton
from .lifetime import child_dies_with_parent, signals_deferred

__all__ = ["TritonServer", "ServerError"]

LogSink = Callable[[str], None]


def _stderr_sink(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class TritonServer:
    """One tritonserver process. Use as a context manager, or call `start` and `stop`."""

    def __init__(self, repository: str | Path, models: Sequence[str], *, host: str = "127.0.0.1",
                 grpc_port: int = 8001, http_port: int = 8000, metrics_port: int = 8002,
                 install: TritonInstall | None = None, env: Mapping[str, str] | None = None,
                 log: LogSink = _stderr_sink, exit_timeout: int = 10):
        self.repository = Path(repository).absolute()
        if not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        missing = [name for name in models if not (self.repository / name / "config.pbtxt").is_file()]
        if missing:
            raise ServerError(f"model repository {self.repository} has no model {', '.join(missing)}")
        if not models:
            raise ServerError("name at least one model to load")
        self.models = list(models)
        self.host, self.grpc_port, self.http_port, self.metrics_port = host, grpc_port, http_port, metrics_port
        self.install = install
        self.extra_env = dict(env or {})
        self.log = log
        self.exit_timeout = exit_timeout
        self.process: subprocess.Popen | None = None
        self._tail: deque[str] = deque(maxlen=20)
        self._reader: threading.Thread | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        install = self.install or find_triton()
        return [
            str(install.executable), f"--model-repository={self.repository}",
            f"--backend-directory={install.backend_dir}", "--model-control-mode=explicit",
            *[f"--load-model={name}" for name in self.models],
            f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout}", "--log-verbose=0",
        ]

    def _environment(self) -> dict[str, str]:
        install = self.install or find_triton()
        env = dict(os.environ)
        env.update(self.extra_env)
        if install.path_prefix:
            env["PATH"] = os.pathsep.join([*install.path_prefix, env.get("PATH", "")])
        if install.library_path:
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*install.library_path, env.get("LD_LIBRARY_PATH", "")])
        env.pop("PYTHONPATH", None)  # the stub ignores it; the server environment's .pth decides
        return env

    def _forward_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            self.log(line)

    def start(self, timeout: float = 180.0) -> TritonServer:
        """Start and wait until the server and every named model are ready; raise ServerError otherwise."""
        if self.install is None:
            self.install = find_triton()
        self.process = subprocess.Popen(self.command(), env=self._environment(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace",
                                        start_new_session=True,  # its own group: our signal handler decides
                                        preexec_fn=child_dies_with_parent())
        self._reader = threading.Thread(target=self._forward_log, name="tritonserver-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    time.sleep(0.2)  # let the log reader catch the last lines
                    raise ServerError(f"tritonserver exited with status {self.process.returncode} while starting "
                                      f"on {self.grpc_url}: {self.last_error()}")
                try:
                    if client.is_server_ready(client_timeout=2) and all(
                            client.is_model_ready(name, client_timeout=2) for name in self.models):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.25)
        finally:
            client.close()
        raise ServerError(f"tritonserver on {self.grpc_url} not ready after {timeout:.0f} s (models "
                          f"{', '.join(self.models)}): {self.last_error()}")

    def last_error(self) -> str:
        """The server's last error line (or last line): what a failure message quotes."""
        errors = [line for line in self._tail if " E" in line[:3] or "error" in line.lower()]
        return (errors or list(self._tail) or ["no log"])[-1].strip()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait for in-flight requests (up to the exit timeout), then SIGKILL what is left of the group.

        Further stop signals wait until it is done: a second Ctrl-C must not leave the server running.
        """
        if self.process is None:
            return None
        timeout = self.exit_timeout + 10 if timeout is None else timeout
        with signals_deferred():
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:  # python-backend stubs are in the server's group; none may outlive it
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
        return code

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
