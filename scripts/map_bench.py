"""The MAP's image size and cold start, against `ibis deploy` in this process's venv, in one run.

    python scripts/map_bench.py STUDY_DIR [--image ibisagent-map:0.1.0] [--runs 3] [--rules R] [--targets T]

Cold start: seconds from `docker run` (a fresh container, network off) to the first file in the
output folder, and to the process's exit; and `docker run` of /bin/true in the same image, what
starting a container costs before Python runs (with vfs: copying the image). The baseline is the
same study through `python -m ibisagent.deploy` on this host (a fresh process each run, the same
rules and targets, the image's own graphs as its cache), so the ratio is what the container costs.
Prints medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(command: list[str], out: Path, env: dict | None = None) -> tuple[float, float]:
    """(seconds to the first output file, seconds to exit) of one run; a failed run is an error."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a long log must not block the run
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        first = None
        while process.poll() is None:
            if first is None and any(p.name in ("seg.dcm", "sr.dcm", "run.json") for p in out.iterdir()):
                first = time.monotonic() - started
            time.sleep(0.05)
        total = time.monotonic() - started
        if process.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{command[0]} failed ({process.returncode}): {log.read()[-2000:]}")
    return (first if first is not None else total), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--image", default="ibisagent-map:0.1.0")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rules", help="a rules file (default: the packaged one)")
    parser.add_argument("--targets", help="a targets file (default: the packaged one)")
    args = parser.parse_args(argv)
    study = Path(args.study).absolute()
    inspect = json.loads(subprocess.run(["docker", "image", "inspect", args.image], capture_output=True, text=True,
                                        check=True).stdout)[0]
    site_args: list[str] = []
    mounts: list[str] = []
    local_site: list[str] = []
    for option, value in (("--rules", args.rules), ("--targets", args.targets)):
        if value:
            path = Path(value).absolute()
            mounts += ["-v", f"{path}:/site/{path.name}:ro"]
            site_args += [option, f"/site/{path.name}"]
            local_site += [option, str(path)]
    docker_run = ["docker", "run", "--rm", "--network", "none", "--ulimit", "stack=33554432"]
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "cache"
        name = f"ibis-map-bench-{int(time.time())}"
        subprocess.run(["docker", "create", "--name", name, args.image], check=True, capture_output=True)
        subprocess.run(["docker", "cp", f"{name}:/opt/holoscan/models", str(cache)], check=True)
        subprocess.run(["docker", "rm", name], check=True, capture_output=True)
        container, local, bare = [], [], []
        for run in range(args.runs):
            started = time.monotonic()
            subprocess.run([*docker_run, "--entrypoint", "/bin/true", args.image], check=True)
            bare.append(time.monotonic() - started)
            out = Path(scratch) / f"map{run}"
            out.mkdir()
            container.append(_timed([*docker_run, "-v", f"{study}:/var/holoscan/input:ro",
                                     "-v", f"{out}:/var/holoscan/output", *mounts, args.image, *site_args], out))
            out = Path(scratch) / f"local{run}"
            out.mkdir()
            local.append(_timed([sys.executable, "-m", "ibisagent.deploy", "-i", str(study), "-o", str(out),
                                 *local_site], out, {**os.environ, "IBISAGENT_CACHE": str(cache)}))
    first = statistics.median(t[0] for t in container)
    total = statistics.median(t[1] for t in container)
    base_first = statistics.median(t[0] for t in local)
    base_total = statistics.median(t[1] for t in local)
    print(f"image {args.image}: {inspect['Size'] / 1e6:.0f} MB, {len(inspect['RootFS']['Layers'])} layers")
    print(f"runs: {args.runs} each, medians")
    print(f"container start alone (docker run /bin/true): {statistics.median(bare):.1f} s")
    print(f"MAP (docker run, network off): first output {first:.1f} s, exit {total:.1f} s")
    print(f"in process (python -m ibisagent.deploy, host venv): first output {base_first:.1f} s, "
          f"exit {base_total:.1f} s")
    print(f"ratio MAP / host: first output {first / base_first:.2f}x, exit {total / base_total:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
