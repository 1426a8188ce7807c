"""`ibis bench`: encoder ms/image and decoder ms/click for torch and onnxruntime, in one run.

Medians over repeated runs after warm-up, and the onnxruntime/torch ratio,
because only numbers measured side by side on the same busy machine compare.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Callable

from .imaging.io import read_image
from .tools.base import Click, SegmentationTool
from .tools.factory import build_tool
from .tools.onnx_export import export_onnx
from .tools.onnx_tool import OnnxSamTool
from .tools.torch_tool import TorchSamTool

__all__ = ["run_bench", "median_ms"]


def median_ms(call: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(samples)


def _time_tool(tool: SegmentationTool, image, runs: int, warmup: int) -> tuple[float, float]:
    embedding = tool.encode(image)
    first = tool.predict(embedding, [Click(0.5, 0.5, True)])
    clicks = [Click(0.5, 0.5, True), Click(0.3, 0.4, False)]
    encoder = median_ms(lambda: tool.encode(image), runs, warmup)
    decoder = median_ms(lambda: tool.predict(embedding, clicks, first.low_res_logits), runs, warmup)
    return encoder, decoder


def run_bench(tool_spec: str = "lite-medsam", runs: int = 20, warmup: int = 3, image_path: str | None = None) -> str:
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    if image_path is None:
        from pydicom.data import get_testdata_file

        image_path = get_testdata_file("examples_overlay.dcm")
    image = read_image(image_path).rgb
    torch_tool = build_tool(tool_spec)
    if not isinstance(torch_tool, TorchSamTool):
        raise ValueError(f"bench compares torch with onnxruntime: give a torch tool spec, not {tool_spec!r}")
    with tempfile.TemporaryDirectory() as directory:
        export_onnx(torch_tool.parts, torch_tool.transform, directory)
        onnx_tool = OnnxSamTool(directory)
        results = {"torch": _time_tool(torch_tool, image, runs, warmup),
                   "onnxruntime": _time_tool(onnx_tool, image, runs, warmup)}
    (t_enc, t_dec), (o_enc, o_dec) = results["torch"], results["onnxruntime"]
    lines = [
        f"tool {torch_tool.name}; image {image.shape[1]}x{image.shape[0]}; medians of {runs} runs after {warmup} warm-up",
        "| backend | encoder ms/image | decoder ms/click |",
        "|---|---|---|",
        f"| torch | {t_enc:.1f} | {t_dec:.1f} |",
        f"| onnxruntime | {o_enc:.1f} | {o_dec:.1f} |",
        f"| ratio onnxruntime/torch | {o_enc / t_enc:.2f} | {o_dec / t_dec:.2f} |",
    ]
    return "\n".join(lines)
