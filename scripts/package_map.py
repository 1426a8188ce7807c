"""Build the MONAI Application Package (a Docker image) of `ibis deploy`, on this host, offline.

    python scripts/package_map.py [--tag ibisagent-map:0.1.0] [--context build/map]

Steps (each reported with its seconds); every step keeps what an earlier run made and is still
valid, so a run stopped anywhere continues, and a code change rebuilds only the image's last layer:
1. the base image `ibisagent-map-base:bookworm`, once: Debian bookworm by debootstrap (minbase +
   python3), trimmed, then `docker import` (no registry is reachable here);
2. deps/: the runtime's wheels (`pip download` of map/requirements*.txt with this host's pip
   configuration; a container sees none of it), downloaded again only when those files change;
3. models/: the graph cache (`ibis export-graphs` with the cache there; torch runs here, on the
   build host, never in the image), exported afresh only when the weights changed;
4. app/: the MAP tree: /opt/holoscan/app (app.yaml, targets.yaml, rules.json, the ibisagent
   package in lib/), /etc/holoscan/app.json and pkg.json, /var/holoscan/input|output|logs and
   app.yaml (holoscan refuses to start without the file HOLOSCAN_CONFIG_PATH names);
5. `docker build -f map/Dockerfile` (classic builder; three layers on top of the base: the venv,
   the graphs, the application).
Needs root (debootstrap), docker and the project's venv (torch, for the export).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "ibisagent-map-base:bookworm"
MIRROR = "http://deb.debian.org/debian"
ENTRYPOINT = ["/opt/holoscan/venv/bin/python", "-m", "ibisagent.deploy"]  # as in map/Dockerfile
TRIM = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists",
        "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log"]


def _run(command: list[str], **options) -> subprocess.CompletedProcess:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, **options)


def _step(name: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.1f} s] {name}", flush=True)


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def build_base(work: Path) -> None:
    """Debian bookworm minbase with python3, imported as BASE_IMAGE (skipped when it exists)."""
    if _image_exists(BASE_IMAGE):
        return
    rootfs = work / "rootfs"
    if not (rootfs / "usr/bin/python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        _run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
              str(rootfs), MIRROR], stdout=subprocess.DEVNULL)
    for relative in TRIM:
        target = rootfs / relative
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    _run(["docker", "import", "--change", "ENV LANG=C.UTF-8", "-", BASE_IMAGE], stdin=tar.stdout)
    tar.wait()


def manifests(version: str, models: dict[str, str]) -> tuple[dict, dict]:
    """app.json and pkg.json, with the fields and paths the MAP specification gives."""
    environment = {"HOLOSCAN_APPLICATION": "/opt/holoscan/app", "HOLOSCAN_INPUT_PATH": "/var/holoscan/input/",
                   "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output/", "HOLOSCAN_WORKDIR": "/var/holoscan/",
                   "HOLOSCAN_MODEL_PATH": "/opt/holoscan/models/", "HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml",
                   "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
                   "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json", "HOLOSCAN_DOCS_PATH": "/opt/holoscan/docs",
                   "HOLOSCAN_LOGS_PATH": "/var/holoscan/logs", "IBISAGENT_CACHE": "/opt/holoscan/models"}
    app = {"apiVersion": "1.0.0", "command": json.dumps(ENTRYPOINT),
           "environment": environment, "input": {"path": "input/", "formats": ["file"]},
           "output": {"path": "output/", "formats": ["file"]}, "liveness": None, "readiness": None,
           "sdk": "monai-deploy", "sdkVersion": _installed("monai-deploy-app-sdk"), "timeout": 0,
           "version": version, "workingDirectory": "/var/holoscan/"}
    pkg = {"apiVersion": "1.0.0", "applicationRoot": "/opt/holoscan/app", "modelRoot": "/opt/holoscan/models/",
           "models": models, "resources": {"cpu": 2, "gpu": 0, "memory": "4Gi"}, "version": version,
           "platformConfig": "cpu"}
    return app, pkg


def _installed(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def _digest(paths: list[Path]) -> str:
    """sha256 over the names and bytes of files (folders: every file inside, in order)."""
    digest = hashlib.sha256()
    for path in paths:
        for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
            digest.update(str(file.relative_to(path.parent)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def source_digest() -> str:
    """sha256 of what the image is built from (the package, its weights, map/), as tracked by git: the image's
    `ibisagent.source` label, so a test can tell an image built from other code (tests/test_map.py)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "bundle", "models", "map", "pyproject.toml"],
                            capture_output=True, text=True, check=True).stdout.split()
    return _digest([REPO / name for name in sorted(listed) if (REPO / name).is_file()])


def build_deps(deps: Path) -> None:
    """deps/wheels and the two requirements files; downloaded again only when the requirements change."""
    sources = [REPO / "map/requirements.txt", REPO / "map/requirements-nodeps.txt"]
    stamp = _digest(sources)
    if (deps / "stamp").is_file() and (deps / "stamp").read_text() == stamp:
        return
    shutil.rmtree(deps, ignore_errors=True)
    wheels = deps / "wheels"
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--only-binary", ":all:",
          "-r", str(sources[0])])
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
          "--only-binary", ":all:", "-r", str(sources[1])])
    for source in sources:
        shutil.copy(source, deps / source.name)
    (deps / "stamp").write_text(stamp)


def _export_graphs(models: Path, tool: str) -> set[str]:
    """`ibis export-graphs` into the cache `models` (what is cached already is kept); the entries after it."""
    _run([sys.executable, "-m", "ibisagent.cli", "export-graphs", "--tool", tool],
         env={**os.environ, "IBISAGENT_CACHE": str(models)})
    (models / "graphs/sha256.json").unlink(missing_ok=True)  # the build host's paths; the image hashes its own
    return {p.name for p in (models / "graphs").iterdir() if p.is_dir()}


def build_models(models: Path, tool: str) -> dict[str, str]:
    """models/graphs: the graph cache of the default models, exported on the host.

    The folder is a graph cache itself, so unchanged weights export nothing;
    when an export adds entries (new weights), it is exported afresh, so the
    image never ships stale graphs. Returns the manifest's models: each entry
    by its kind, at its path in the image.
    """
    graphs = models / "graphs"
    before = {p.name for p in graphs.iterdir() if p.is_dir()} if graphs.is_dir() else set()
    after = _export_graphs(models, tool)
    if before and after != before:
        shutil.rmtree(models)
        after = _export_graphs(models, tool)
    return {name.rsplit("-", 1)[0]: f"/opt/holoscan/models/graphs/{name}" for name in sorted(after)}


def build_app(app_tree: Path, models: dict[str, str]) -> str:
    """app/: the MAP tree with the ibisagent package (no dependencies) in /opt/holoscan/app/lib."""
    from ibisagent import __version__

    shutil.rmtree(app_tree, ignore_errors=True)
    app = app_tree / "opt/holoscan/app"
    shutil.rmtree(REPO / "build/lib", ignore_errors=True)  # setuptools would keep modules deleted since
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
          str(app / "lib"), str(REPO)])
    shutil.rmtree(app / "lib/bin", ignore_errors=True)  # the `ibis` script: the MAP runs `python -m`
    for source in (REPO / "map/app.yaml", REPO / "bundle/ibisagent/deploy/targets.yaml",
                   REPO / "bundle/ibisagent/deploy/rules.json"):
        shutil.copy(source, app / source.name)
    app_json, pkg_json = manifests(__version__, models)
    (app_tree / "etc/holoscan").mkdir(parents=True)
    (app_tree / "etc/holoscan/app.json").write_text(json.dumps(app_json, indent=2) + "\n")
    (app_tree / "etc/holoscan/pkg.json").write_text(json.dumps(pkg_json, indent=2) + "\n")
    for folder in ("var/holoscan/input", "var/holoscan/output", "var/holoscan/logs", "opt/holoscan/docs"):
        (app_tree / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "map/app.yaml", app_tree / "var/holoscan/app.yaml")  # HOLOSCAN_CONFIG_PATH: holoscan reads it
    shutil.copy(REPO / "docs/deploy.md", app_tree / "opt/holoscan/docs/deploy.md")
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="image name (default ibisagent-map:VERSION)")
    parser.add_argument("--context", default=str(REPO / "build/map"), help="build context folder")
    parser.add_argument("--base-work", default="/var/tmp/ibisagent-map-base", help="where debootstrap builds")
    parser.add_argument("--tool", default="lite-medsam", help="the LiteMedSAM tool spec whose graphs the MAP runs")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        raise SystemExit("package_map: docker is not installed (apt-get install docker.io; see docs/deploy.md)")
    started = time.monotonic()
    context = Path(args.context)
    for stale in ("wheels", "fs"):  # the layout of earlier versions of this script
        shutil.rmtree(context / stale, ignore_errors=True)
    build_base(Path(args.base_work))
    _step(f"base image {BASE_IMAGE}", started)
    build_deps(context / "deps")
    _step("deps/: the runtime's wheels", started)
    models = build_models(context / "models", args.tool)
    _step(f"models/: graphs {', '.join(models)}", started)
    version = build_app(context / "app", models)
    _step("app/: the MAP tree and the ibisagent package", started)
    tag = args.tag or f"ibisagent-map:{version}"
    _run(["docker", "build", "--build-arg", f"BASE={BASE_IMAGE}", "--label", f"ibisagent.source={source_digest()}",
          "-t", tag, "-f", str(REPO / "map/Dockerfile"), str(context)])
    _step(f"image {tag}", started)
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                          text=True, check=True).stdout.strip()
    print(f"built {tag}: {int(size) / 1e6:.0f} MB")
    _run(["docker", "history", "--format", "{{.Size}}\t{{.CreatedBy}}", tag])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
