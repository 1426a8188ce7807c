"""`ibis stress`: the long versions of the fuzzers, the load, the faults and the security checks.

Each section's result is written to its own JSON file in a results folder as
soon as it is done, and a section whose file is there is not run again: the
run can be cut into jobs (one or a few sections each) and resumed after a
stop. It starts its own servers (Triton from `.venv-triton`, MONAI Label from
`.venv-label` when present) on loopback ports, on a scratch copy of the model
repository holding a fresh export of the default tool; `report.py` turns the
results into docs/reliability.md. A section that cannot run here (no server
environment, no data) records why.
"""

from __future__ import annotations

import itertools
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["SECTIONS", "StressSettings", "free_ports", "pair_name", "reference_pairs", "run_stress", "section_file"]

Progress = Callable[[str], None]


@dataclass
class StressSettings:
    seed: int = 22
    protocol_examples: int = 2000  # per property
    dicom_cases: int = 2000
    dicom_time_bound: float = 60.0  # seconds per case
    load_sessions: int = 8
    load_seconds: float = 180.0
    load_images: int = 80  # more than the 64 embeddings the server keeps: the cache must evict
    kill_trials: int = 30  # per kind of output
    signal_repeats: int = 1
    label_trials: bool = True
    repository: Path = Path("triton_models")
    shared_data: Path = Path("../shared/data")
    server_env: Path | None = None
    label_env: Path | None = None
    sections: tuple[str, ...] = ("protocol", "dicom", "load", "label_load", "signals", "kills", "training", "disk",
                                 "sessions", "security")


LABEL_LOAD_STUDIES = 8  # images the annotators go round on MONAI Label


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (servers we start are told these)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


class _Servers:
    """The scratch repository, the ONNX export and the Triton server the sections share, made when first asked."""

    def __init__(self, settings: StressSettings, scratch: Path, progress: Progress):
        self.settings, self.scratch, self.progress = settings, scratch, progress
        self.server = None
        self._prepared = False

    def prepare(self) -> None:
        from ..serving.environment import find_triton, server_env_path
        from ..serving.repository import SAM_MODELS, prepare_repository
        from ..tools.factory import build_tool
        from ..tools.onnx_export import export_onnx

        if self._prepared:
            return
        self.install = find_triton(self.settings.server_env)
        self.server_env = server_env_path(self.settings.server_env)
        self.progress("exporting the default tool's ONNX graphs")
        tool = build_tool("lite-medsam", backend="torch")  # the torch weights are what is exported
        self.onnx = export_onnx(tool.parts, tool.transform, self.scratch / "onnx")
        self.repository = self.scratch / "triton_models"
        for name in SAM_MODELS:
            shutil.copytree(self.settings.repository / name, self.repository / name,
                            ignore=shutil.ignore_patterns("*.onnx", "tool.json", "__pycache__"))
        prepare_repository(self.repository, f"onnx:{self.onnx}")
        self._prepared = True

    @property
    def tool_spec(self) -> str:
        self.prepare()
        return f"onnx:{self.onnx}"

    def triton(self):
        from ..serving.repository import SAM_MODELS
        from ..serving.server import TritonServer

        if self.server is None or not self.server.running():
            self.prepare()
            grpc, http, metrics = free_ports(3)
            self.server = TritonServer(self.repository, SAM_MODELS, grpc_port=grpc, http_port=http,
                                       metrics_port=metrics, install=self.install, log=lambda line: None).start()
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def pair_name(pair) -> str:
    """A test pair's name in reports: source, image and label (images of several targets have several pairs)."""
    return f"{pair.source}/{pair.image.name} ({pair.label})"


def _test_pairs(settings: StressSettings, one_per_image: bool = False):
    """The med2d test split's pairs, sources taken in turn (optionally one target per image)."""
    from ..evaluation import read_manifest

    manifest = settings.shared_data / "med2d" / "manifest.csv"
    by_source: dict[str, list] = {}
    images = set()
    for pair in sorted(read_manifest(manifest, "test"), key=lambda p: (p.source, str(p.image), p.label)):
        if not (one_per_image and pair.image in images):
            images.add(pair.image)
            by_source.setdefault(pair.source, []).append(pair)
    position = 0
    while any(position < len(v) for v in by_source.values()):
        yield from (pairs[position] for pairs in by_source.values() if position < len(pairs))
        position += 1


def reference_pairs(settings: StressSettings, count: int,
                    one_per_image: bool = False) -> list[tuple[str, object, object]]:
    """`count` med2d test-split pairs with references (name, RGB, mask), sources taken in turn; with
    `one_per_image`, `count` distinct images (the load needs more images than the server's cache holds)."""
    from ..imaging.io import read_image, read_mask

    loaded = []
    for pair in itertools.islice(_test_pairs(settings, one_per_image), count):
        image = read_image(pair.image).rgb
        loaded.append((pair_name(pair), image, read_mask(pair.mask, image.shape[:2])))
    return loaded


# ----------------------------------------------------------------------------------------- sections

def _protocol(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .protocol_fuzz import fuzz_protocol

    results = fuzz_protocol(settings.protocol_examples, settings.seed)
    return {"seed": settings.seed, "properties": [asdict(r) for r in results]}


def _dicom(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from pydicom.data import get_testdata_files

    from .dicom_fuzz import fuzz_dicom, report_json
    from .dicom_mutations import seeds_from

    data = settings.shared_data / "dicom"
    folders = sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    seeds = seeds_from(folders, [Path(p) for p in get_testdata_files("*")])
    report = fuzz_dicom(seeds, settings.dicom_cases, settings.seed, time_limit=settings.dicom_time_bound)
    return {"seeds": len(seeds), "seed_folders": [f.name for f in folders], **report_json(report)}


def _load(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .load import run_load

    pairs = reference_pairs(settings, settings.load_images, one_per_image=True)
    server = servers.triton()
    progress(f"load: {settings.load_sessions} sessions x {settings.load_seconds:.0f} s over {len(pairs)} images")
    report = run_load(server.grpc_url, pairs, settings.load_sessions, settings.load_seconds, server.process.pid)
    return {**asdict(report), "resident_capacity": 64}


def _label_load(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from ..imaging.io import read_mask
    from ..label.server import LabelServer
    from .label_load import LabelStudy, run_label_load

    label_env = _label_env(settings)
    if label_env is None:
        return {"error": "MONAI Label: no .venv-label here (ibis label-serve --setup)"}
    with tempfile.TemporaryDirectory(prefix="ibis-stress-label-load-") as folder:
        studies_dir = Path(folder) / "studies"
        studies_dir.mkdir()
        studies = []
        for pair in itertools.islice(_test_pairs(settings, one_per_image=True), LABEL_LOAD_STUDIES):
            name = f"{pair.source}_{pair.image.stem}"  # a session is (client, image, label): one target per image
            shutil.copy(pair.image, studies_dir / f"{name}{pair.image.suffix}")
            studies.append(LabelStudy.for_target(name, pair.label, read_mask(pair.mask)))
        server = LabelServer(studies_dir, Path(folder) / "app", port=free_ports(1)[0], label_env=label_env,
                             log=lambda line: None, conf={"tool": servers.tool_spec})
        server.start(900)
        try:
            progress(f"label load: {settings.load_sessions} annotators x {settings.load_seconds:.0f} s over "
                     f"{len(studies)} images")
            report = run_label_load(server.url, studies, settings.load_sessions, settings.load_seconds,
                                    server.process.pid)
        finally:
            server.stop()
    return asdict(report)


def _signals(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .faults import label_serve_command, serve_command, serve_signal_trial

    trials = []
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL)
    servers.prepare()  # the repository and the graphs the trials serve
    for _ in range(settings.signal_repeats):
        for signum in signals:
            for moment in ("starting", "serving"):
                command = serve_command(servers.repository, servers.server_env, servers.tool_spec,
                                        tuple(free_ports(3)))
                trials.append(asdict(serve_signal_trial(command, signum, moment)))
                progress(f"signal trial: {trials[-1]}")
    label_env = _label_env(settings)
    skipped = None
    if settings.label_trials and label_env is not None:
        with tempfile.TemporaryDirectory(prefix="ibis-stress-label-") as folder:
            studies = _studies(settings, Path(folder))
            for signum in signals:
                command = label_serve_command(studies, Path(folder) / "app", label_env, servers.tool_spec,
                                              free_ports(1)[0])
                trials.append(asdict(serve_signal_trial(command, signum, "serving")))
                progress(f"signal trial: {trials[-1]}")
    else:
        skipped = "MONAI Label: no .venv-label here (ibis label-serve --setup)" if label_env is None else "not asked"
    return {"trials": trials, "label_skipped": skipped}


def _label_env(settings: StressSettings) -> Path | None:
    from ..label.environment import label_env_path

    env = label_env_path(settings.label_env)
    return env if (env / "bin" / "monailabel").is_file() else None


def _studies(settings: StressSettings, folder: Path) -> Path:
    studies = folder / "studies"
    studies.mkdir()
    shutil.copy(settings.shared_data / "med2d" / "images" / "imis-btcv" / "ABD_035_51.png", studies)
    return studies


def _kills(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .faults import kill_while_writing
    from .writers import KINDS

    rng = random.Random(settings.seed)
    trials = []
    with tempfile.TemporaryDirectory(prefix="ibis-stress-kill-") as folder:
        for kind in KINDS:
            for attempt in range(settings.kill_trials):
                trial = kill_while_writing(kind, Path(folder) / f"{kind}{attempt}" / "out", rng)
                trials.append(asdict(trial))
            progress(f"kill trials ({kind}): {sum(t['problems'] == () for t in trials if t['kind'] == kind)} of "
                     f"{settings.kill_trials} survived")
    return {"trials": trials}


def _training(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .faults import killed_training_resumes

    with tempfile.TemporaryDirectory(prefix="ibis-stress-training-") as folder:
        trial = killed_training_resumes(settings.shared_data.absolute(), Path(folder), random.Random(settings.seed),
                                        repo=settings.repository.absolute().parent)
    return asdict(trial) | {"survived": trial.survived}


def _disk(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .faults import full_disk_trials, small_disk

    with small_disk() as disk:
        return {"trials": [asdict(t) for t in full_disk_trials(disk, servers.tool_spec)]}


def _sessions(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from .faults import frozen_server_mid_session, restarted_server_mid_session

    name, image, reference = reference_pairs(settings, 1)[0]
    server = servers.triton()
    trials = [restarted_server_mid_session(server, image, reference),
              frozen_server_mid_session(server, image, reference)]
    return {"image": name, "trials": [asdict(t) for t in trials]}


def _security(settings: StressSettings, servers: _Servers, progress: Progress) -> dict:
    from ..label.server import LabelServer
    from .security import bounded_requests, canary_run, exposed_addresses, non_loopback_address, reachable_from

    other = non_loopback_address()
    server = servers.triton()
    binds = []

    def bind_row(name: str, pgid: int, ports: list[int]) -> None:
        found, exposed = exposed_addresses(pgid)
        binds.append({"server": name, "listening": sorted(f"{ip}:{port}" for ip, port in found),
                      "beyond_loopback": sorted(f"{ip}:{port}" for ip, port in exposed),
                      "reachable_from": other, "reachable": bool(other) and any(reachable_from(other, p) for p in ports)})

    bind_row("Triton (ibis serve's TritonServer)", server.process.pid,
             [server.grpc_port, server.http_port, server.metrics_port])
    label_env = _label_env(settings)
    if label_env is not None:
        with tempfile.TemporaryDirectory(prefix="ibis-stress-bind-") as folder:
            port = free_ports(1)[0]
            label = LabelServer(_studies(settings, Path(folder)), Path(folder) / "app", port=port,
                                label_env=label_env, log=lambda line: None, conf={"tool": servers.tool_spec})
            label.start(900)
            try:
                bind_row("MONAI Label (ibis label-serve) and the agent's worker", label.process.pid, [port])
            finally:
                label.stop()
    bounds = [{"request": what, "answer": answer, "refused": ok} for what, answer, ok in
              bounded_requests(server.grpc_url)]
    series = settings.shared_data / "dicom" / "dcmqi-ct-3slice"
    with tempfile.TemporaryDirectory(prefix="ibis-stress-canary-") as folder:
        canary = asdict(canary_run(series, Path(folder), servers.tool_spec))
    return {"binds": binds, "bounds": bounds, "canary": canary}


SECTIONS = {"protocol": _protocol, "dicom": _dicom, "load": _load, "label_load": _label_load, "signals": _signals,
            "kills": _kills,
            "training": _training, "disk": _disk, "sessions": _sessions, "security": _security}


def _machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average": [round(v, 1) for v in os.getloadavg()], "commit": commit}


def section_file(results: Path, name: str) -> Path:
    return results / f"{name}.json"


def run_stress(settings: StressSettings, results: Path, command: str, again: bool = False,
               progress: Progress = print) -> list[str]:
    """Every section asked for, in order, each written to `results`/NAME.json once done; a section already
    there is skipped unless `again`. A section that fails is recorded with its reason, the others run.
    Returns the sections run now."""
    from ..outputs import write_json_atomic

    ran = []
    scratch = Path(tempfile.mkdtemp(prefix="ibis-stress-"))
    servers = _Servers(settings, scratch, progress)
    try:
        for name in settings.sections:
            path = section_file(results, name)
            if path.is_file() and not again:
                progress(f"== {name}: done earlier ({path}), skipped")
                continue
            progress(f"== {name}")
            entry = {"command": command, "settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in asdict(settings).items()},
                     "machine_at_start": _machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            section_started = time.monotonic()
            try:
                entry["result"] = SECTIONS[name](settings, servers, progress)
            except Exception as error:  # the report says which section could not run, and why
                entry["result"] = {"error": f"{type(error).__name__}: {error}",
                                   "where": traceback.format_exc(limit=-2).strip().splitlines()[-3:]}
            entry["seconds"] = round(time.monotonic() - section_started, 1)
            entry["machine_at_end"] = _machine()
            write_json_atomic(path, entry)
            ran.append(name)
            progress(f"   {name}: {entry['seconds']} s -> {path}")
    finally:
        servers.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return ran
