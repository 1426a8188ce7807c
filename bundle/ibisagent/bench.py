"""`ibis bench`: torch vs onnxruntime for the embedded models, warm and from a cold start, in one run.

Warm: encoder ms/image and decoder ms/click of the tool, IBIS-lite's ms/turn
and the query encoder's ms per new query; medians over repeated runs after
warm-up. Cold start: `ibis segment` as a user runs it, a fresh process per
run, timed from process start to its first turn and to its written mask;
medians over runs that alternate between the backends. Each table ends with
the onnxruntime/torch ratio, because only numbers measured side by side on
the same (busy) machine compare.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .imaging.io import read_image
from .tools.base import Click, SegmentationTool

__all__ = ["run_bench", "median_ms", "cold_start"]

BACKENDS = ("torch", "onnxruntime")
QUERY = "Segment the liver."


def median_ms(call: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


def _time_tool(tool: SegmentationTool, image: np.ndarray, runs: int, warmup: int) -> tuple[float, float]:
    embedding = tool.encode(image)
    first = tool.predict(embedding, [Click(0.5, 0.5, True)])
    clicks = [Click(0.5, 0.5, True), Click(0.3, 0.4, False)]
    encoder = median_ms(lambda: tool.encode(image), runs, warmup)
    decoder = median_ms(lambda: tool.predict(embedding, clicks, first.low_res_logits), runs, warmup)
    return encoder, decoder


def _time_policy(backend: str, tool: SegmentationTool, image: np.ndarray, runs: int,
                 warmup: int) -> tuple[float, float]:
    """IBIS-lite's ms per turn (one click so far, the query already encoded) and the query encoder's ms per query."""
    from .policies.base import Observation
    from .policies.lite import LitePolicy
    from .policies.query_encoder import QueryEncoder

    encoder = QueryEncoder(backend)
    policy = LitePolicy(backend=backend, query_encoder=encoder)
    embedding = tool.encode(image)
    click = Click(0.5, 0.5, True)
    output = tool.predict(embedding, [click])
    observation = Observation(image, image, output.mask, QUERY, 1, (click,), embedding, (output.iou,))
    turn = median_ms(lambda: policy.act(observation, []), runs, warmup)
    texts = iter(f"Segment the structure number {n}." for n in range(runs + warmup))
    query = median_ms(lambda: encoder([next(texts)]), runs, warmup)  # a new text each time: no cache hit
    return turn, query


def cold_start(image_path: str, backend: str, out_dir: Path) -> tuple[float, float]:
    """Seconds from starting `ibis segment` to its first turn line, and to its exit with the mask written."""
    command = [sys.executable, "-m", "ibisagent.cli", "segment", str(image_path), "--query", QUERY, "--out",
               str(out_dir), "--backend", backend]
    started = time.perf_counter()
    first_turn = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stdout:
            if first_turn is None and line.startswith("turn  1:"):
                first_turn = time.perf_counter() - started
        error = process.stderr.read()
    finished = time.perf_counter() - started
    if process.returncode != 0 or first_turn is None or not (out_dir / "mask.png").is_file():
        raise RuntimeError(f"ibis segment --backend {backend} failed: {error.strip()[-500:]}")
    return first_turn, finished


def _table(title: str, header: list[str], rows: dict[str, list[float]], digits: int) -> list[str]:
    ratio = [o / t for o, t in zip(rows["onnxruntime"], rows["torch"])]
    return [title, "| backend | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|",
            *(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in values) + " |" for name, values in rows.items()),
            "| ratio onnxruntime/torch | " + " | ".join(f"{r:.2f}" for r in ratio) + " |"]


def run_bench(tool_spec: str = "lite-medsam", runs: int = 20, warmup: int = 3, image_path: str | None = None,
              cold_runs: int = 3) -> str:
    """Markdown tables: the warm figures, then the cold start, for torch and onnxruntime."""
    if runs < 1 or warmup < 0 or cold_runs < 1:
        raise ValueError("runs and cold runs must be >= 1 and warmup >= 0")
    if image_path is None:
        from pydicom.data import get_testdata_file

        image_path = get_testdata_file("examples_overlay.dcm")
    image = read_image(image_path).rgb
    from .tools.factory import build_tool
    from .tools.torch_tool import TorchSamTool

    tools = {backend: build_tool(tool_spec, backend=backend) for backend in BACKENDS}  # exports graphs if absent
    if not isinstance(tools["torch"], TorchSamTool):
        raise ValueError(f"bench compares torch with onnxruntime: give a LiteMedSAM or sam: spec, not {tool_spec!r}")
    warm = {backend: [*_time_tool(tool, image, runs, warmup), *_time_policy(backend, tool, image, runs, warmup)]
            for backend, tool in tools.items()}
    samples: dict[str, list[tuple[float, float]]] = {backend: [] for backend in BACKENDS}
    with tempfile.TemporaryDirectory() as directory:
        for round_ in range(cold_runs + 1):  # round 0 warms the file cache (and exports nothing: done above)
            for backend in BACKENDS:
                timing = cold_start(image_path, backend, Path(directory) / f"{backend}_{round_}")
                if round_:
                    samples[backend].append(timing)
    cold = {backend: [statistics.median(t[i] for t in samples[backend]) for i in (0, 1)] for backend in BACKENDS}
    lines = [f"tool {tools['torch'].name}, policy IBIS-lite; image {image.shape[1]}x{image.shape[0]} "
             f"({Path(image_path).name}), query {QUERY!r}", ""]
    lines += _table(f"Warm: medians of {runs} runs after {warmup} warm-up",
                    ["encoder ms/image", "decoder ms/click", "policy ms/turn", "query encoder ms/query"], warm, 1)
    lines += [""] + _table(f"Cold start of `ibis segment` (a new process; medians of {cold_runs} runs, backends "
                           "alternating, after one run each)", ["s to the first turn", "s to the written mask"],
                           cold, 2)
    return "\n".join(lines)
