"""Where `tritonserver` comes from, and the Python its python backend runs our models in.

The python backend of the tritonserver 2.51 shipped in the `nvidia-pytriton`
wheel returns empty outputs under numpy 2, and this package runs on numpy 2.
So the server gets its own small virtual environment (`.venv-triton`): numpy<2
and nvidia-pytriton, with this environment's site-packages appended through a
`.pth` file for onnxruntime, torch and transformers. Measured here: ~20 s and
370 MB to create, against ~2 min and 6 GB for a full second copy of torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_SERVER_ENV", "SERVER_ENV_VARIABLE", "ServerError", "TritonInstall", "find_triton",
           "server_env_path", "setup_server_env"]

DEFAULT_SERVER_ENV = Path(".venv-triton")
SERVER_ENV_VARIABLE = "IBIS_TRITON_ENV"
SERVER_REQUIREMENTS = ("numpy<2", "nvidia-pytriton==0.7.0")
_PTH_NAME = "zz_ibisagent_main_env.pth"
_STUB = "triton_python_backend_stub"


class ServerError(RuntimeError):
    """Triton could not be found, set up, started or reached."""


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs at run time."""

    executable: Path
    backend_dir: Path
    path_prefix: tuple[str, ...]  # put first on PATH: the stub runs the first `python3` it finds
    library_path: tuple[str, ...]


def server_env_path(path: str | Path | None = None) -> Path:
    """The server environment: the argument, else $IBIS_TRITON_ENV, else ./.venv-triton."""
    return Path(path or os.environ.get(SERVER_ENV_VARIABLE) or DEFAULT_SERVER_ENV).absolute()


def _run(command: list[str]) -> str:
    try:
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise ServerError(f"{' '.join(command[:4])} ... failed: {detail.strip().splitlines()[-1] if detail.strip() else error}") from None


def _env_python(env: Path) -> Path:
    return env / "bin" / "python"


def _pytriton_dir(env: Path) -> tuple[Path, Path]:
    """(site-packages, site-packages/pytriton/tritonserver) of a server environment."""
    site = Path(_run([str(_env_python(env)), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"]).strip())
    return site, site / "pytriton" / "tritonserver"


def setup_server_env(path: str | Path | None = None) -> Path:
    """Create (or repair) the server environment; idempotent."""
    env = server_env_path(path)
    if not _env_python(env).exists():
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(env)])
    _run([str(_env_python(env)), "-m", "pip", "install", "--quiet", *SERVER_REQUIREMENTS])
    site, triton_dir = _pytriton_dir(env)
    main_site = sysconfig.get_paths()["purelib"]
    (site / _PTH_NAME).write_text(f"import site; site.addsitedir({main_site!r})\n")
    version = _run([str(_env_python(env)), "-c", "import sys;print(f'{sys.version_info[0]}.{sys.version_info[1]}')"]).strip()
    stub = triton_dir / "python_backend_stubs" / version / _STUB
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton ships no python-backend stub for Python {version} ({stub})")
    shutil.copy2(stub, triton_dir / "backends" / "python" / _STUB)
    return env


def find_triton(server_env: str | Path | None = None) -> TritonInstall:
    """`tritonserver` on PATH (NVIDIA's container), else the one in the server environment's nvidia-pytriton."""
    on_path = shutil.which("tritonserver")
    if on_path:
        executable = Path(on_path).resolve()
        return TritonInstall(executable, executable.parent.parent / "backends", (), ())
    env = server_env_path(server_env)
    if not _env_python(env).exists():
        raise ServerError(f"no tritonserver on PATH and no server environment at {env}; run `ibis serve --setup`")
    site, triton_dir = _pytriton_dir(env)
    executable = triton_dir / "bin" / "tritonserver"
    if not executable.is_file():
        raise ServerError(f"{env} has no nvidia-pytriton tritonserver; run `ibis serve --setup`")
    if not (triton_dir / "backends" / "python" / _STUB).is_file():
        raise ServerError(f"the python-backend stub is missing in {triton_dir}/backends/python; run `ibis serve --setup`")
    libdir = _run([str(_env_python(env)), "-c", "import sysconfig;print(sysconfig.get_config_var('LIBDIR'))"]).strip()
    # Without the interpreter's own lib dir the stub links the system libpython against another standard library.
    return TritonInstall(executable, triton_dir / "backends", (str(env / "bin"),),
                         (str(site / "nvidia_pytriton.libs"), libdir))
