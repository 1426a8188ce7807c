"""The DICOM mutation fuzzer: every mutated input ends in a result or a one-line refusal.

Each case (see `dicom_mutations.py`) goes through what the commands do with
DICOM: `read_image` (`ibis segment FILE.dcm`), `read_series` (`ibis
segment-dicom`), for a series of several slices `volume_from_series` (`ibis
segment-volume`, `segment-dicom --whole-series`: the 3D geometry, every slice
shown, a mask taken back to the voxels) and, when the series reads,
`write_segmentation` with a mask that is then read back. A case fails when an exception other than the
refusals the CLI reports in one line (ValueError, OSError) escapes, a refusal
spans several lines, the case takes longer than the time bound (a worker
process is killed then), the worker dies (out of memory under its address
space limit, a crash), a refused write leaves files behind, a written SEG
does not read back as written, or a canary patient value shows up in a
message, a warning, a log record or the side-car.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import resource
import shutil
import subprocess
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dicom_mutations import CANARY, Case, Seed, make_case

__all__ = ["CaseOutcome", "DicomFuzzReport", "fuzz_dicom"]

_REFUSALS = (ValueError, OSError)  # what `ibis` reports as one line `ibis: error: ...`


@dataclass(frozen=True)
class CaseOutcome:
    index: int
    seed: str
    mutations: tuple[str, ...]
    step: str  # read_image, read_series, read_volume, write_seg, read_back, dciodvfy, or "case" (hangs, crashes)
    outcome: str  # result | refusal | failure
    detail: str  # one line: what happened (the refusal's message, the failure's cause)


@dataclass
class DicomFuzzReport:
    seed: int
    cases: int = 0
    steps: Counter = field(default_factory=Counter)  # (step, outcome) -> count
    mutations: Counter = field(default_factory=Counter)  # mutation -> cases using it
    failures: list[CaseOutcome] = field(default_factory=list)
    slowest_seconds: float = 0.0
    time_bound_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def inputs(self) -> int:
        """Reader and writer calls made (a case is read as a file and as a series, then written)."""
        return sum(self.steps.values())


# ----------------------------------------------------------------------------- inside the worker

class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a record whose arguments do not format is still a record
            self.messages.append(str(record.msg))


def _leak(texts: list[str]) -> str | None:
    for text in texts:
        for keyword, value in CANARY.items():
            if value in text:
                return f"{keyword} {value} in {text[:120]!r}"
    return None


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    frame = frames[-1] if frames else None
    return f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""


def _attempt(step: str, call, outcomes: list[tuple[str, str, str]], messages: list[str]):
    """Run one step; record result / refusal / failure; the value on success, else None."""
    try:
        value = call()
    except _REFUSALS as error:
        message = str(error)
        messages.append(message)
        if not message.strip() or "\n" in message.strip():
            outcomes.append((step, "failure", f"refusal not in one line: {message[:200]!r}"))
        else:
            outcomes.append((step, "refusal", message[:300]))
        return None
    except Exception as error:  # noqa: BLE001 - this is what the fuzzer looks for
        outcomes.append((step, "failure", f"{type(error).__name__} escaped{_where(error)}: {str(error)[:200]}"))
        return None
    outcomes.append((step, "result", ""))
    return value


def _check_rgb(rgb: np.ndarray) -> str | None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
            and min(rgb.shape[:2]) > 0):
        return f"not a display image: {getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}"
    return None


def _check_volume(volume) -> str | None:
    """Every slice shows as a display image and a display-frame mask goes back to the voxels' shape."""
    for index in range(volume.shape[0]):
        if problem := _check_rgb(volume.slice_rgb(index)):
            return f"slice {index}: {problem}"
    shown = volume.slice_rgb(0).shape[:2]
    back = volume.to_stored(np.ones((volume.shape[0], *shown), bool))
    if back.shape != volume.shape:
        return f"a display mask went back as {back.shape}, not the voxels' {volume.shape}"
    return None


def _dciodvfy_errors(tool: str, path: Path) -> list[str]:
    """dciodvfy's "Error" lines (its other lines may quote patient data)."""
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _run_case(paths: list[str], is_series: bool, out_dir: str, validator: str | None) -> list[tuple[str, str, str]]:
    from ..dicom.seg_writer import segment_mask, write_segmentation
    from ..dicom.series import read_series
    from ..imaging.io import read_image
    from ..volume.readers import volume_from_series

    outcomes: list[tuple[str, str, str]] = []
    messages: list[str] = []
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    level, root.level = root.level, logging.DEBUG
    out = Path(out_dir)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not is_series:
                loaded = _attempt("read_image", lambda: read_image(paths[0]), outcomes, messages)
                if loaded is not None and (problem := _check_rgb(loaded.rgb)):
                    outcomes[-1] = ("read_image", "failure", problem)
            source = paths if is_series else paths[0]
            series = _attempt("read_series", lambda: read_series(source, slice_index=len(paths) // 2), outcomes,
                              messages)
            if series is not None and (problem := _check_rgb(series.rgb)):
                outcomes[-1] = ("read_series", "failure", problem)
            elif series is not None:
                if series.slice_count > 1:
                    volume = _attempt("read_volume", lambda: volume_from_series(series), outcomes, messages)
                    if volume is not None and (problem := _check_volume(volume)):
                        outcomes[-1] = ("read_volume", "failure", problem)
                rows, columns = int(series.source.Rows), int(series.source.Columns)
                mask = np.zeros((rows, columns), bool)
                mask[rows // 4: rows // 2 + 1, columns // 4: columns // 2 + 1] = True
                written = _attempt("write_seg", lambda: write_segmentation(
                    out / "seg.dcm", series.source, mask, "liver", frame_index=series.frame_index,
                    trajectory={"input": "fuzz case", "status": "terminated"}), outcomes, messages)
                left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
                if written is None and left and outcomes[-1][1] == "refusal":
                    outcomes[-1] = ("write_seg", "failure", f"refused, but left {left} behind")
                elif written is not None:
                    frame = None if series.frame_index is None else series.frame_index + 1
                    if left != ["seg.dcm", "seg.json"]:
                        outcomes[-1] = ("write_seg", "failure", f"wrote {left}, not seg.dcm and seg.json")
                    else:
                        back = _attempt("read_back", lambda: segment_mask(out / "seg.dcm", series.sop_instance_uid,
                                                                           frame_number=frame), outcomes, messages)
                        if back is not None and not np.array_equal(back, mask):
                            outcomes[-1] = ("read_back", "failure", "the SEG read back differs from the mask written")
                        elif back is None and outcomes[-1][1] == "refusal":  # we wrote what we cannot read
                            outcomes[-1] = ("read_back", "failure", f"the SEG written is refused: {outcomes[-1][2]}")
                        if validator:
                            errors = _dciodvfy_errors(validator, out / "seg.dcm")
                            outcomes.append(("dciodvfy", "failure" if errors else "result",
                                             f"{len(errors)} error(s), first: {errors[0][:200]}" if errors else ""))
                        messages.append((out / "seg.json").read_text())
        messages += [str(w.message) for w in caught] + collect.messages
    finally:
        root.removeHandler(collect)
        root.level = level
    leaked = _leak(messages)
    if leaked:
        outcomes.append(("case", "failure", f"patient data reached a message, log or side-car: {leaked}"))
    return outcomes


def _worker(connection, memory_limit: int) -> None:
    """Run cases sent over `connection` until it closes; an address space limit turns runaway allocations
    into MemoryError (a failure the report names) instead of the machine's OOM killer."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    from ..dicom import seg_writer, series  # noqa: F401 - imported before the first case's clock starts
    from ..imaging import io  # noqa: F401
    from ..volume import readers  # noqa: F401

    connection.send("ready")
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        connection.send(_run_case(*job))


# ----------------------------------------------------------------------------- the driver

class _Pool:
    """One worker process at a time, replaced when it hangs or dies."""

    def __init__(self, memory_limit: int):
        self.context = multiprocessing.get_context("spawn")
        self.memory_limit = memory_limit
        self.process = None
        self.connection = None

    def _start(self) -> None:
        parent, child = self.context.Pipe()
        self.process = self.context.Process(target=_worker, args=(child, self.memory_limit), daemon=True)
        self.process.start()
        child.close()
        self.connection = parent

    def run(self, job: tuple, limit: float) -> list[tuple[str, str, str]] | str:
        """The case's outcomes, or why the worker gave none ('hang ...', 'crash ...')."""
        if self.process is None or not self.process.is_alive():
            self._start()
            if not self.connection.poll(120):
                raise RuntimeError("the fuzzing worker did not start within 120 s")
            self.connection.recv()
        self.connection.send(job)
        if self.connection.poll(limit):
            try:
                return self.connection.recv()
            except EOFError:
                pass
        else:
            self.stop()
            return f"hang: no answer within {limit:.0f} s (worker killed)"
        self.process.join(5)
        code = self.process.exitcode
        self.stop()
        return f"crash: the worker died (exit {code})"

    def stop(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join()
            self.connection.close()
        self.process = None


def fuzz_dicom(seeds: list[Seed], count: int, seed: int = 22, time_limit: float = 30.0,
               memory_limit: int = 4 << 30, work_dir: Path | None = None, keep_failures: Path | None = None,
               validate: bool = True) -> DicomFuzzReport:
    """`count` cases, case i drawn with random.Random(seed * 1_000_003 + i): reproducible one by one.

    With `validate` (and dciodvfy installed), every SEG written is validated by dciodvfy too.
    """
    validator = shutil.which("dciodvfy") if validate else None
    if not seeds:
        raise ValueError("no seed inputs to mutate")
    report = DicomFuzzReport(seed, time_bound_seconds=time_limit)
    pool = _Pool(memory_limit)
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="ibis-dicom-fuzz-", dir=work_dir))
    try:
        for index in range(count):
            rng = random.Random(seed * 1_000_003 + index)
            chosen = seeds[rng.randrange(len(seeds))]
            folder = scratch / f"case_{index:05d}"
            case: Case = make_case(index, chosen, rng, folder / "input")
            (folder / "out").mkdir()
            case_started = time.monotonic()
            answer = pool.run(([str(p) for p in case.paths], case.is_series, str(folder / "out"), validator),
                              time_limit)
            report.slowest_seconds = max(report.slowest_seconds, time.monotonic() - case_started)
            outcomes = [("case", "failure", answer)] if isinstance(answer, str) else answer
            report.cases += 1
            report.mutations.update(case.mutations)
            for step, outcome, detail in outcomes:
                report.steps[(step, outcome)] += 1
                if outcome == "failure":
                    report.failures.append(CaseOutcome(index, case.seed, case.mutations, step, outcome, detail))
            if keep_failures is not None and any(o == "failure" for _, o, _ in outcomes):
                shutil.copytree(folder / "input", keep_failures / f"case_{index:05d}", dirs_exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        pool.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def report_json(report: DicomFuzzReport) -> dict:
    """The report as JSON-ready data (for `ibis stress` and the docs)."""
    return {"seed": report.seed, "cases": report.cases, "inputs": report.inputs,
            "steps": {f"{step} {outcome}": n for (step, outcome), n in sorted(report.steps.items())},
            "mutations": dict(sorted(report.mutations.items())), "slowest_seconds": round(report.slowest_seconds, 2),
            "time_bound_seconds": report.time_bound_seconds, "seconds": round(report.seconds, 1),
            "failures": [vars(f) | {"mutations": list(f.mutations)} for f in report.failures]}

