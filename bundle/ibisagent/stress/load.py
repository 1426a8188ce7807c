"""Load: N concurrent agent sessions against the Triton models for a fixed time, checked against solo runs.

Each session is its own client (its own gRPC channel) running the oracle
agent on real images, one after another, round the list from its own
offset, so sessions work on different images at once. Every run must give
exactly the actions, predicted IoUs and mask of the same image's solo run
(no embedding mixed up between sessions or images, none lost); every
request must be answered; the server's memory (its whole process tree) is
sampled throughout: it must stay within its resident-embedding bound.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..agent import Agent, AgentResult
from ..policies import build_policy
from ..serving.grpc_client import ServerError
from ..serving.triton_tool import NOT_RESIDENT, TritonSamTool, embedding_key
from .processes import tree_rss

__all__ = ["LoadReport", "percentiles", "resident_count", "run_load", "run_sessions", "server_memory_mb"]

_MAX_TURNS = 5


@dataclass
class LoadReport:
    sessions: int
    seconds: float  # the load phase's length
    images: int  # distinct images (embeddings) among the pairs
    runs: int = 0
    mismatches: list[str] = field(default_factory=list)  # runs whose result differs from the solo run
    errors: list[str] = field(default_factory=list)  # requests that failed, and runs that did not complete
    requests: dict[str, int] = field(default_factory=dict)  # encode / decode -> requests answered
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # encode / decode / run -> percentiles
    server_rss_mb: dict[str, float] = field(default_factory=dict)  # before, after warm-up, max, end
    rss_samples: int = 0
    resident_after: int | None = None  # how many of the images' embeddings the server still holds at the end

    @property
    def lost(self) -> int:
        return len(self.errors)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "p50": round(statistics.median(ordered), 1), "p90": round(at(0.9), 1),
            "p99": round(at(0.99), 1), "max": round(ordered[-1], 1)}


class _Timed:
    """Wraps a tool's `_encode`/`_decode` to time and count every request (re-encodes after eviction too)."""

    def __init__(self, tool: TritonSamTool, sink: dict[str, list[float]], errors: list[str], lock: threading.Lock):
        self.sink, self.errors, self.lock = sink, errors, lock
        for name in ("_encode", "_decode"):
            setattr(tool, name, self._wrap(getattr(tool, name), name.strip("_")))

    def _wrap(self, call, kind: str):
        def timed(*args):
            started = time.perf_counter()
            try:
                value = call(*args)
            except Exception as error:
                with self.lock:
                    self.errors.append(f"{kind}: {error}")
                raise
            with self.lock:
                self.sink[kind].append(1000 * (time.perf_counter() - started))
            return value
        return timed


def _run(tool: TritonSamTool, image: np.ndarray, reference: np.ndarray) -> AgentResult:
    policy = build_policy("oracle", ground_truth=reference, target_iou=0.99)
    return Agent(tool, policy, max_turns=_MAX_TURNS).run(image, "Segment the target.")


def _same(result: AgentResult, solo: AgentResult) -> str | None:
    if result.status is not solo.status:
        return f"status {result.status.value} (solo {solo.status.value}): {result.error}"
    if [t.action for t in result.turns] != [t.action for t in solo.turns]:
        return "other actions than the solo run"
    if [t.predicted_iou for t in result.turns] != [t.predicted_iou for t in solo.turns]:
        return "other predicted IoUs than the solo run"
    if not np.array_equal(result.mask, solo.mask):
        return f"another mask than the solo run ({int((result.mask != solo.mask).sum())} pixels differ)"
    return None


def _keys(tool: TritonSamTool, images: list[np.ndarray]) -> set[str]:
    """The server's keys of these images' embeddings (one per distinct image)."""
    return {embedding_key(np.ascontiguousarray(tool.transform(image)[0], np.float32)) for image in images}


def resident_count(tool: TritonSamTool, images: list[np.ndarray]) -> int:
    """How many of these images' embeddings the server holds: a decode by key alone answers or says not resident.

    An image listed twice (two targets on one image) is one embedding, counted once.
    """
    held = 0
    for key in sorted(_keys(tool, images)):
        try:
            tool.caller.infer(tool.decoder_model, {"image_key": np.array([[key.encode()]], dtype=np.object_),
                                                   "point_coords": np.zeros((1, 1, 2), np.float32),
                                                   "point_labels": np.ones((1, 1), np.float32)}, ["iou_predictions"])
            held += 1
        except ServerError as error:
            if NOT_RESIDENT not in str(error):
                raise
    return held


def run_sessions(session: Callable[[int], None], sessions: int, server_pid: int | None = None,
                 name: str = "load-session") -> tuple[float, list[int]]:
    """`session(n)` for n in 0..sessions-1, each in its own thread, while the server's process-tree memory is
    sampled every 0.25 s (with `server_pid`); returns the wall seconds and the samples (bytes)."""
    rss: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.25):
            rss.append(tree_rss(server_pid))

    sampler = threading.Thread(target=sample, daemon=True) if server_pid else None
    if sampler:
        sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=session, args=(n,), name=f"{name}-{n}") for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = round(time.monotonic() - started, 1)
    sampling.set()
    if sampler:
        sampler.join()
    return seconds, rss


def server_memory_mb(server_pid: int, before: int, warmed: int, rss: list[int]) -> dict[str, int]:
    """The server's memory in MB: before the runs, after the solo runs, the most under load, and now."""
    mb = 1 / 2**20
    return {"before": round(before * mb), "after_solo_runs": round(warmed * mb),
            "max": round(max(rss, default=warmed) * mb), "end": round(tree_rss(server_pid) * mb)}


def run_load(server: str, pairs: list[tuple[str, np.ndarray, np.ndarray]], sessions: int, seconds: float,
             server_pid: int | None = None, timeout: float = 120.0) -> LoadReport:
    """`sessions` concurrent sessions for `seconds` over (name, image, reference) pairs on `server` (HOST:PORT).

    Each name must be unique: a run is compared with the solo run of its name.

    With `server_pid`, the server's process-tree memory is sampled every 0.25 s.
    """
    if sessions < 1 or seconds <= 0 or not pairs:
        raise ValueError("sessions >= 1, seconds > 0 and at least one image are required")
    names = [name for name, _, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # runs are checked against the solo run of their name: one name, one (image, reference)
        raise ValueError(f"every pair needs a name of its own (an image with two references is two names): "
                         f"{', '.join(repeated[:3])} repeated")
    report = LoadReport(sessions, seconds, len(pairs))
    lock = threading.Lock()
    before = tree_rss(server_pid) if server_pid else 0
    solo_tool = TritonSamTool(server, timeout=timeout)
    report.images = len(_keys(solo_tool, [image for _, image, _ in pairs]))
    solo = {name: _run(solo_tool, image, reference) for name, image, reference in pairs}  # also the warm-up
    warmed = tree_rss(server_pid) if server_pid else 0
    for name, result in solo.items():
        if not result.status.completed:
            report.errors.append(f"solo run of {name} ended with {result.status.value}: {result.error}")
    latencies: dict[str, list[float]] = {"encode": [], "decode": [], "run": []}
    deadline = time.monotonic() + seconds

    def session(number: int) -> None:
        tool = TritonSamTool(server, timeout=timeout)  # a client of its own, as separate users have
        _Timed(tool, latencies, report.errors, lock)
        position = number
        while time.monotonic() < deadline:
            name, image, reference = pairs[position % len(pairs)]
            position += 1
            started = time.perf_counter()
            result = _run(tool, image, reference)
            with lock:
                latencies["run"].append(1000 * (time.perf_counter() - started))
                report.runs += 1
                problem = _same(result, solo[name])
                if problem:
                    report.mismatches.append(f"session {number}, {name}: {problem}")
        tool.caller.close()

    report.seconds, rss = run_sessions(session, sessions, server_pid, "load-session")
    report.requests = {kind: len(latencies[kind]) for kind in ("encode", "decode")}
    report.resident_after = resident_count(solo_tool, [image for _, image, _ in pairs])
    report.latency_ms = {kind: percentiles(values) for kind, values in latencies.items()}
    if server_pid:
        report.server_rss_mb = server_memory_mb(server_pid, before, warmed, rss)
        report.rss_samples = len(rss)
    solo_tool.caller.close()
    return report
