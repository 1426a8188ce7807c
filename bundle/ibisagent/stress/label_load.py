"""Load on a real MONAI Label server: N annotators at once, each in sessions of its own, checked against solo runs.

Each session is one client (`client_id`) going round the studies from its own
offset: on each image the agent's pass from the text prompt (`reset_state`,
a fresh session), then one foreground point of the person's. Every answer
must equal the same image's solo answers (the label pixels, the clicks with
their origins), the person's point must re-encode nothing (the session kept
the embedding, whatever other clients did meanwhile), and every request must
be answered. The server's memory (MONAI Label, the agent's worker and their
children) is sampled throughout.
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..clicks import next_click, normalised_to_pixel
from ..label.client import infer
from .load import percentiles, run_sessions, server_memory_mb
from .processes import tree_rss

__all__ = ["LabelLoadReport", "LabelStudy", "run_label_load"]


@dataclass(frozen=True)
class LabelStudy:
    image_id: str  # the datastore's id of a 2D image
    prompt: str
    point: tuple[int, int]  # the person's foreground point, (column, row) as the clients send for 2D images

    @classmethod
    def for_target(cls, image_id: str, label: str, reference: np.ndarray) -> LabelStudy:
        """The referring prompt for `label` and the simulated annotator's first click on the reference mask."""
        click, _ = next_click(np.zeros_like(reference), reference)
        row, col = normalised_to_pixel(click.x, click.y, reference.shape)
        point = (col, row)
        return cls(image_id, f"Segment the {label}.", point)


@dataclass
class LabelLoadReport:
    sessions: int
    seconds: float
    studies: int
    runs: int = 0  # prompt + point pairs completed under load
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # requests not answered with a label, re-encodes on a point
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # prompt / point -> percentiles
    server_rss_mb: dict[str, float] = field(default_factory=dict)
    rss_samples: int = 0

    @property
    def lost(self) -> int:
        return len(self.errors)


@dataclass(frozen=True)
class _Answer:
    label: np.ndarray
    clicks: tuple[tuple, ...]  # (x, y, positive, origin) per click
    encoded: bool


def _ask(url: str, study: LabelStudy, params: dict, timeout: float) -> _Answer:
    answer = infer(url, study.image_id, params, timeout=timeout)
    if answer.status != 200:
        raise RuntimeError(f"HTTP {answer.status}: {answer.body[:200]!r}")
    parts = answer.parts()
    result = json.loads(parts["params"])
    label = np.asarray(Image.open(io.BytesIO(parts["image"])))
    clicks = tuple((c["x"], c["y"], c["positive"], c["origin"]) for c in result["clicks"])
    return _Answer(label, clicks, bool(result["encoded"]))


def _pair(url: str, study: LabelStudy, client: str, timeout: float,
          times: dict[str, list[float]] | None = None) -> tuple[_Answer, _Answer]:
    """The agent's pass from the prompt in a fresh session, then the person's point in the same session."""
    params = {"prompt": study.prompt, "client_id": client, "reset_state": True}
    answers = []
    for kind, extra in (("prompt", {}), ("point", {"foreground": [list(study.point)], "reset_state": False})):
        started = time.perf_counter()
        answers.append(_ask(url, study, {**params, **extra}, timeout))
        if times is not None:
            times[kind].append(1000 * (time.perf_counter() - started))
    return answers[0], answers[1]


def _differs(got: tuple[_Answer, _Answer], solo: tuple[_Answer, _Answer]) -> str | None:
    for kind, mine, theirs in zip(("prompt", "point"), got, solo):
        if mine.clicks != theirs.clicks:
            return f"{kind}: other clicks than the solo run"
        if mine.label.shape != theirs.label.shape or not np.array_equal(mine.label, theirs.label):
            return f"{kind}: another label than the solo run"
    return None


def run_label_load(url: str, studies: list[LabelStudy], sessions: int, seconds: float,
                   server_pid: int | None = None, timeout: float = 600.0) -> LabelLoadReport:
    """`sessions` concurrent annotators for `seconds` over `studies` on the MONAI Label server at `url`."""
    if sessions < 1 or seconds <= 0 or not studies:
        raise ValueError("sessions >= 1, seconds > 0 and at least one study are required")
    if len({s.image_id for s in studies}) != len(studies):
        raise ValueError("every study needs an image of its own (runs are compared with the solo run of the image)")
    report = LabelLoadReport(sessions, seconds, len(studies))
    before = tree_rss(server_pid) if server_pid else 0
    solo = {s.image_id: _pair(url, s, "solo", timeout) for s in studies}  # also the warm-up
    warmed = tree_rss(server_pid) if server_pid else 0
    lock = threading.Lock()
    times: dict[str, list[float]] = {"prompt": [], "point": []}
    deadline = time.monotonic() + seconds

    def session(number: int) -> None:
        position = number
        while time.monotonic() < deadline:
            study = studies[position % len(studies)]
            position += 1
            mine: dict[str, list[float]] = {"prompt": [], "point": []}
            try:
                got = _pair(url, study, f"annotator-{number}", timeout, mine)
            except Exception as error:  # noqa: BLE001 - a lost request is what the load counts
                with lock:
                    report.errors.append(f"session {number}, {study.image_id}: {error}")
                continue
            with lock:
                report.runs += 1
                for kind in times:
                    times[kind] += mine[kind]
                if got[1].encoded:
                    report.errors.append(f"session {number}, {study.image_id}: the person's point encoded again")
                problem = _differs(got, solo[study.image_id])
                if problem:
                    report.mismatches.append(f"session {number}, {study.image_id}: {problem}")

    report.seconds, rss = run_sessions(session, sessions, server_pid, "label-session")
    report.latency_ms = {kind: percentiles(values) for kind, values in times.items()}
    if server_pid:
        report.server_rss_mb = server_memory_mb(server_pid, before, warmed, rss)
        report.rss_samples = len(rss)
    return report
