"""Run a real MONAI Label server with our app: start, wait until `/info/` answers, stop cleanly.

`ibis label-serve`, the tests and `ibis bench --label` use this same code.
The server binds 127.0.0.1 unless told otherwise; the app folder it is given
holds only a `main.py` that imports `ibisagent.label.app` (MONAI Label also
writes its logs and empty model/lib/bin folders there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Callable, Mapping

from ..serving.lifetime import child_dies_with_parent, signals_deferred
from .environment import LabelServerError, monailabel_python

__all__ = ["LabelServer", "write_app_folder"]

_MAIN_PY = '''"""MONAI Label loads this file: the app is ibisagent.label.app.IbisAgentApp (by `ibis label-serve`)."""

from ibisagent.label.app import IbisAgentApp  # noqa: F401
'''


def write_app_folder(app_dir: str | Path) -> Path:
    """The folder `monailabel start_server --app` takes: a main.py that imports our app."""
    app_dir = Path(app_dir).absolute()
    app_dir.mkdir(parents=True, exist_ok=True)
    main = app_dir / "main.py"
    if not main.is_file() or main.read_text() != _MAIN_PY:
        main.write_text(_MAIN_PY)
    return app_dir


def _stderr_sink(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LabelServer:
    """One `monailabel start_server` process. Use as a context manager, or call `start` and `stop`."""

    def __init__(self, studies: str | Path, app_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
                 label_env: str | Path | None = None, conf: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, log: Callable[[str], None] = _stderr_sink):
        text = str(studies)
        self.studies = text if text.startswith(("http://", "https://")) else str(Path(text).absolute())
        self.app_dir = write_app_folder(app_dir)
        self.host, self.port = host, port
        self.python = monailabel_python(label_env)
        self.conf = dict(conf or {})
        self.extra_env = dict(env or {})
        self.log = log
        self.process: subprocess.Popen | None = None
        self._tail: deque[str] = deque(maxlen=30)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        conf = [arg for key, value in self.conf.items() for arg in ("--conf", key, str(value))]
        return [str(self.python), "-m", "monailabel.main", "start_server", "--app", str(self.app_dir),
                "--studies", self.studies,
                "--host", self.host, "--port", str(self.port), "--uvicorn_app", "ibisagent.label.asgi:app", *conf]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["IBIS_AGENT_PYTHON"] = sys.executable  # the agent's worker runs in this environment
        env.update(self.extra_env)
        return env

    def _forward_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            self.log(line)

    def start(self, timeout: float = 600.0) -> LabelServer:
        """Start and wait until `/info/` lists our task; raise LabelServerError otherwise."""
        self.process = subprocess.Popen(self.command(), env=self._environment(), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                        errors="replace", start_new_session=True,
                                        preexec_fn=child_dies_with_parent())  # no orphan if we are killed
        self._reader = threading.Thread(target=self._forward_log, name="monailabel-log", daemon=True)
        self._reader.start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def info(self, timeout: float = 10.0) -> dict:
        with urllib.request.urlopen(f"{self.url}/info/", timeout=timeout) as response:
            return json.loads(response.read())

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise LabelServerError(f"monailabel exited with status {self.process.returncode} while starting on "
                                       f"{self.url}: {self.last_error()}")
            try:
                if "ibisagent" in self.info(timeout=2).get("models", {}):
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.5)
        raise LabelServerError(f"monailabel on {self.url} not ready after {timeout:.0f} s: {self.last_error()}")

    def last_error(self) -> str:
        lines = [line for line in self._tail if "error" in line.lower() or "exception" in line.lower()]
        return (lines or list(self._tail) or ["no log"])[-1].strip()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL what is left of its process group (the agent's worker included);
        further stop signals wait until it is done."""
        if self.process is None:
            return None
        with signals_deferred():
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.process.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
        return code

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
