"""`ibis bench --server`: the Triton-served tool against the same ONNX graphs in process, in one run.

A session encodes one image and makes a fixed series of clicks (all clicks
so far and the previous logits each step, as the agent does). Sessions run
1, 4 and 16 at a time; each session's image differs by one pixel, so no
embedding is shared. Also measured: bytes and latency per click with the
embedding resident on the server or travelling with every click, and the
encoder with and without Triton's dynamic batching (the bench reloads
`sam_encoder` with batching off, then as configured: do not bench a server
in clinical use).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..tools.base import Click, SegmentationTool

__all__ = ["run_serving_bench"]

CLICKS = (Click(0.45, 0.5, True), Click(0.3, 0.6, True), Click(0.6, 0.4, False), Click(0.5, 0.7, True),
          Click(0.2, 0.3, False), Click(0.7, 0.6, True), Click(0.4, 0.3, True), Click(0.55, 0.55, False))


def _session(tool: SegmentationTool, image: np.ndarray, clicks: int) -> list[float]:
    """One image: encode, then `clicks` steps; the seconds of each click."""
    embedding = tool.encode(image)
    low_res, seconds = None, []
    for step in range(1, clicks + 1):
        started = time.perf_counter()
        low_res = tool.predict(embedding, CLICKS[:step], low_res).low_res_logits
        seconds.append(time.perf_counter() - started)
    return seconds


def _images(image: np.ndarray, count: int, offset: int) -> list[np.ndarray]:
    """`count` copies that differ in one pixel each: distinct content, distinct embedding keys."""
    copies = []
    for index in range(count):
        copy = image.copy()
        copy[0, 0, 0] = (int(copy[0, 0, 0]) + offset + index + 1) % 256
        copies.append(copy)
    return copies


def _concurrent(tool: SegmentationTool, images: list[np.ndarray], clicks: int) -> tuple[float, float]:
    """(median ms per click, images per second) with all `images` in flight at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(images)) as pool:
        per_session = list(pool.map(lambda image: _session(tool, image, clicks), images))
    elapsed = time.perf_counter() - started
    return statistics.median(s for seconds in per_session for s in seconds) * 1000.0, len(images) / elapsed


def _residency(server: str, image: np.ndarray, clicks: int) -> list[str]:
    from .triton_tool import TritonSamTool

    rows = []
    for label, resident in (("resident (default)", True), ("travelling", False)):
        tool = TritonSamTool(server, resident=resident)
        started = time.perf_counter()
        embedding = tool.encode(image)
        encode_ms = (time.perf_counter() - started) * 1000.0
        sent, received = tool.caller.bytes_sent, tool.caller.bytes_received
        encode_kib = (sent + received) / 1024
        low_res, seconds = None, []
        for step in range(1, clicks + 1):
            started = time.perf_counter()
            low_res = tool.predict(embedding, CLICKS[:step], low_res).low_res_logits
            seconds.append(time.perf_counter() - started)
        up = (tool.caller.bytes_sent - sent) / clicks / 1024
        down = (tool.caller.bytes_received - received) / clicks / 1024
        rows.append(f"| {label} | {encode_kib:.0f} | {encode_ms:.0f} | {up:.0f} | {down:.0f} | "
                    f"{statistics.median(seconds) * 1000:.1f} |")
    return rows


def _encoder_batching(server: str, image: np.ndarray, requests: int) -> list[str]:
    """Encoder images/s with `requests` concurrent single-image requests, batching off then as configured."""
    import json

    from .grpc_client import TritonCaller
    from .triton_tool import TritonSamTool

    caller = TritonCaller(server, timeout=600)
    configured = caller.model_config("sam_encoder")
    tool = TritonSamTool(server, resident=False, timeout=600)
    inputs = [tool.transform(copy)[0] for copy in _images(image, requests, 100)]

    def measure() -> tuple[float, float]:
        caller.infer("sam_encoder", {"image": inputs[0]}, ["image_embedding"])  # warm
        latencies: list[float] = []

        def one(model_input: np.ndarray) -> None:
            started = time.perf_counter()
            caller.infer("sam_encoder", {"image": model_input}, ["image_embedding"])
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        with ThreadPoolExecutor(requests) as pool:
            list(pool.map(one, inputs))
        return requests / (time.perf_counter() - started), statistics.median(latencies) * 1000.0

    unbatched = {key: value for key, value in configured.items() if key != "dynamic_batching"}
    caller.client.load_model("sam_encoder", config=json.dumps(unbatched))
    try:
        off = measure()
    finally:
        caller.client.load_model("sam_encoder", config=json.dumps(configured))
    on = measure()
    batching = configured.get("dynamic_batching", {})
    return [f"| dynamic batching ({batching.get('max_queue_delay_microseconds', 0)} us queue delay, "
            f"max batch {configured.get('max_batch_size')}) | {on[0]:.2f} | {on[1]:.0f} |",
            f"| no dynamic batching | {off[0]:.2f} | {off[1]:.0f} |",
            f"| ratio batching/none | {on[0] / off[0]:.2f} | {on[1] / off[1]:.2f} |"]


def run_serving_bench(server: str, tool_spec: str = "lite-medsam", sessions: Sequence[int] = (1, 4, 16),
                      clicks: int = 5, image_path: str | None = None) -> str:
    """The Markdown report; the in-process tool runs `tool_spec` exported to ONNX (what `ibis serve` serves)."""
    from ..imaging.io import read_image
    from ..tools.factory import build_tool
    from ..tools.onnx_export import export_onnx
    from ..tools.onnx_tool import OnnxSamTool
    from ..tools.torch_tool import TorchSamTool
    from .triton_tool import TritonSamTool

    if not 1 <= clicks <= len(CLICKS) or not sessions or min(sessions) < 1:
        raise ValueError(f"clicks must be 1..{len(CLICKS)} and sessions >= 1")
    if image_path is None:
        from pydicom.data import get_testdata_file

        image_path = get_testdata_file("examples_overlay.dcm")
    image = read_image(image_path).rgb
    served = TritonSamTool(server)
    source = build_tool(tool_spec, backend="torch")
    if not isinstance(source, TorchSamTool):
        raise ValueError(f"bench exports a torch tool to compare with the server; {tool_spec!r} is not one")
    lines = [f"Triton at {server} vs in-process onnxruntime on the same export of {source.name}; "
             f"image {image.shape[1]}x{image.shape[0]}; a session = encode + {clicks} clicks",
             "", "| sessions at once | in-process ms/click | Triton ms/click | ratio | in-process images/s | "
             "Triton images/s | ratio |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as directory:
        local = OnnxSamTool(export_onnx(source.parts, source.transform, directory))
        for tool in (local, served):  # warm-up: sessions, graphs, connections
            _session(tool, image, 1)
        for count in sessions:
            local_ms, local_rate = _concurrent(local, _images(image, count, 0), clicks)
            served_ms, served_rate = _concurrent(served, _images(image, count, 0), clicks)
            lines.append(f"| {count} | {local_ms:.1f} | {served_ms:.1f} | {served_ms / local_ms:.2f} | "
                         f"{local_rate:.2f} | {served_rate:.2f} | {served_rate / local_rate:.2f} |")
    lines += ["", "| embedding | KiB at encode (both ways) | encode ms | KiB up per click | KiB down per click | "
              "ms/click (1 session) |", "|---|---|---|---|---|---|",
              *_residency(server, image, clicks)]
    lines += ["", f"| sam_encoder, {max(sessions)} concurrent requests | images/s | median ms/request |",
              "|---|---|---|", *_encoder_batching(server, image, max(sessions))]
    return "\n".join(lines)
