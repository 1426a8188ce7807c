"""MONAI Label's own Python environment (`.venv-label`), made by `ibis label-serve --setup`.

monailabel 0.8.5 imports pydicom-seg, which fails under pydicom 3, and this
package's DICOM side (highdicom 0.28) needs pydicom 3. So MONAI Label gets
a virtual environment of its own: monailabel and its dependencies with
pydicom<3, and this environment's site-packages appended through a `.pth`
file, so torch and the other large wheels are not installed twice. It also
gets its own copy of monai: the main environment's monai folder may hold
`monai.deploy` (the MONAI Deploy SDK), which monai imports at start-up and
which needs pydicom 3. The agent itself never runs there (`label/worker.py`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..serving.environment import ServerError

__all__ = ["DEFAULT_LABEL_ENV", "LABEL_ENV_VARIABLE", "LabelServerError", "label_env_path", "monailabel_python",
           "setup_label_env"]

DEFAULT_LABEL_ENV = Path(".venv-label")
LABEL_ENV_VARIABLE = "IBIS_LABEL_ENV"
MONAILABEL_REQUIREMENT = "monailabel==0.8.5"
_PTH_NAME = "zz_ibisagent_main_env.pth"


class LabelServerError(ServerError):
    """MONAI Label could not be set up, found, started or reached."""


def label_env_path(path: str | Path | None = None) -> Path:
    """The MONAI Label environment: the argument, else $IBIS_LABEL_ENV, else ./.venv-label."""
    return Path(path or os.environ.get(LABEL_ENV_VARIABLE) or DEFAULT_LABEL_ENV).absolute()


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = (getattr(error, "stderr", "") or str(error)).strip().splitlines()
        raise LabelServerError(f"{' '.join(command[:5])} ... failed: {detail[-1] if detail else error}") from None


def _installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        raise LabelServerError(f"{name} is not installed in this environment ({sys.prefix})") from None


def setup_label_env(path: str | Path | None = None) -> Path:
    """Create (or complete) the MONAI Label environment; idempotent."""
    env = label_env_path(path)
    python = env / "bin" / "python"
    if not python.exists():
        _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(env)])
    _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", "setuptools", "wheel"])
    site = subprocess.run([str(python), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / _PTH_NAME).write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        # pydicom<3 for pydicom-seg; this environment's torch, so nothing pulls a second one
        constraints.write(f"pydicom<3\ntorch=={_installed('torch')}\n")
    # sam2 (a monailabel dependency) is an sdist whose build imports torch: build it against the torch already
    # here (no build isolation) and without its CUDA extension.
    build_env = {**os.environ, "SAM2_BUILD_CUDA": "0"}
    try:
        _run([str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation", MONAILABEL_REQUIREMENT,
              "pydicom<3", "-c", constraints.name], env=build_env)
    finally:
        os.unlink(constraints.name)
    _run([str(python), "-m", "pip", "install", "--quiet", "--ignore-installed", "--no-deps",
          f"monai=={_installed('monai')}"])
    _run([str(python), "-c", "import monailabel.endpoints.infer, ibisagent.label.app"])
    return env


def monailabel_python(path: str | Path | None = None) -> Path:
    """The environment's python (its `monailabel` script runs whichever python is first on PATH)."""
    env = label_env_path(path)
    python = env / "bin" / "python"
    if not python.is_file() or not (env / "bin" / "monailabel").is_file():
        raise LabelServerError(f"no MONAI Label environment at {env}; run `ibis label-serve --setup`")
    return python
