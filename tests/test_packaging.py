"""The package as setuptools builds it: every folder of the package named, so nothing is shipped by accident."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_in_the_packages_configuration():
    """A folder setuptools would find but is not told about builds with a warning and, later, is left out."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    configured = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    root = REPO / "bundle"
    folders = {".".join(path.relative_to(root).parts) for path in (root / "ibisagent").rglob("*")
               if path.is_dir() and path.name != "__pycache__" and any(p.is_file() for p in path.iterdir())}
    assert folders | {"ibisagent"} <= configured, sorted(folders - configured)


def test_what_the_bundle_run_writes_by_default_is_ignored_by_git():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for written in ("eval/summary.json", "demo_out/mask.png"):
        done = subprocess.run(["git", "check-ignore", "-q", written], cwd=REPO)
        assert done.returncode == 0, f"{written} is not ignored by git"
