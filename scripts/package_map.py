"""Build the MONAI Application Package (a Docker image) of `ibis deploy`, on this host, offline.

    python scripts/package_map.py [--tag ibisagent-map:0.1.0] [--context build/map]

Steps (each reported with its seconds):
1. the base image `ibisagent-map-base:bookworm`, once: Debian bookworm by debootstrap (minbase +
   python3), trimmed, then `docker import` (no registry is reachable here);
2. the build stage on the host: the tool's ONNX graphs (`ibis export-onnx`) into the MAP's
   models folder, the runtime wheels (`pip download -r map/requirements.txt`, this host's pip
   configuration; a container sees none of it) and the ibisagent wheel;
3. the MAP tree: /opt/holoscan/app (app.yaml, targets.yaml, rules.json), /opt/holoscan/models,
   /etc/holoscan/app.json and pkg.json, /var/holoscan/input|output;
4. `docker build -f map/Dockerfile` (classic builder; two stages, one layer on top of the base).
Needs root (debootstrap), docker and the project's venv (torch, for the export).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "ibisagent-map-base:bookworm"
MIRROR = "http://deb.debian.org/debian"
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


def manifests(version: str) -> tuple[dict, dict]:
    """app.json and pkg.json, with the fields and paths the MAP specification gives."""
    environment = {"HOLOSCAN_APPLICATION": "/opt/holoscan/app", "HOLOSCAN_INPUT_PATH": "/var/holoscan/input/",
                   "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output/", "HOLOSCAN_WORKDIR": "/var/holoscan/",
                   "HOLOSCAN_MODEL_PATH": "/opt/holoscan/models/", "HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml",
                   "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
                   "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json", "HOLOSCAN_DOCS_PATH": "/opt/holoscan/docs",
                   "HOLOSCAN_LOGS_PATH": "/var/holoscan/logs"}
    app = {"apiVersion": "1.0.0",
           "command": '["/opt/holoscan/venv/bin/python", "-m", "ibisagent.deploy", "--tool", '
                      '"onnx:/opt/holoscan/models/lite-medsam-onnx"]',
           "environment": environment, "input": {"path": "input/", "formats": ["file"]},
           "output": {"path": "output/", "formats": ["file"]}, "liveness": None, "readiness": None,
           "sdk": "monai-deploy", "sdkVersion": _installed("monai-deploy-app-sdk"), "timeout": 0,
           "version": version, "workingDirectory": "/var/holoscan/"}
    pkg = {"apiVersion": "1.0.0", "applicationRoot": "/opt/holoscan/app", "modelRoot": "/opt/holoscan/models/",
           "models": {"lite-medsam-onnx": "/opt/holoscan/models/lite-medsam-onnx"},
           "resources": {"cpu": 2, "gpu": 0, "memory": "4Gi"}, "version": version, "platformConfig": "cpu"}
    return app, pkg


def _installed(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def build_context(context: Path, tool: str) -> str:
    """wheels/ and fs/ for map/Dockerfile; returns the ibisagent version."""
    from ibisagent import __version__

    shutil.rmtree(context, ignore_errors=True)
    wheels, fs = context / "wheels", context / "fs"
    models = fs / "opt/holoscan/models/lite-medsam-onnx"
    _run([sys.executable, "-m", "ibisagent.cli", "export-onnx", "--tool", tool, "--out", str(models)])
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--only-binary", ":all:",
          "-r", str(REPO / "map/requirements.txt")])
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO)])
    shutil.copy(REPO / "map/requirements.txt", wheels / "requirements.txt")
    app = fs / "opt/holoscan/app"
    app.mkdir(parents=True)
    for source in (REPO / "map/app.yaml", REPO / "bundle/ibisagent/deploy/targets.yaml",
                   REPO / "bundle/ibisagent/deploy/rules.json"):
        shutil.copy(source, app / source.name)
    app_json, pkg_json = manifests(__version__)
    (fs / "etc/holoscan").mkdir(parents=True)
    (fs / "etc/holoscan/app.json").write_text(json.dumps(app_json, indent=2) + "\n")
    (fs / "etc/holoscan/pkg.json").write_text(json.dumps(pkg_json, indent=2) + "\n")
    for folder in ("var/holoscan/input", "var/holoscan/output", "var/holoscan/logs", "opt/holoscan/docs"):
        (fs / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "docs/deploy.md", fs / "opt/holoscan/docs/deploy.md")
    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="image name (default ibisagent-map:VERSION)")
    parser.add_argument("--context", default=str(REPO / "build/map"), help="build context folder (replaced)")
    parser.add_argument("--base-work", default="/var/tmp/ibisagent-map-base", help="where debootstrap builds")
    parser.add_argument("--tool", default="lite-medsam", help="the torch tool whose graphs the MAP runs")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        raise SystemExit("package_map: docker is not installed (apt-get install docker.io; see docs/deploy.md)")
    started = time.monotonic()
    build_base(Path(args.base_work))
    _step(f"base image {BASE_IMAGE}", started)
    version = build_context(Path(args.context), args.tool)
    _step("build stage on the host: graphs, wheels, MAP tree", started)
    tag = args.tag or f"ibisagent-map:{version}"
    _run(["docker", "build", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, "-f", str(REPO / "map/Dockerfile"),
          args.context])
    _step(f"image {tag}", started)
    size = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                          text=True, check=True).stdout.strip()
    print(f"built {tag}: {int(size) / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
