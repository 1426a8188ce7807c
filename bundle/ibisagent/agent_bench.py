"""`ibis bench --agent`: whole-agent wall time per image (encoder included) for a policy, in one run.

Each image runs the full loop as `ibis segment` does: encode, then policy
and tool turns until the policy stops. Medians over images after a warm-up,
split into encoder, policy and tool time, for the policy on the torch tool
and on the same tool exported to onnxruntime, with the ratio between the
two measured side by side (the only comparison a busy machine allows).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .agent import Agent
from .imaging.io import read_image
from .policies import build_policy
from .tools.base import SegmentationTool

__all__ = ["run_agent_bench"]


def _bench_images(manifest: str | None, count: int) -> list[tuple[np.ndarray, str]]:
    """The demo MR (the liver), then test-split images taken from each source in turn, with their labels."""
    from pydicom.data import get_testdata_file

    images = [(read_image(get_testdata_file("examples_overlay.dcm")).rgb, "Segment the liver.")]
    if not manifest:
        return images
    from .evaluation import read_manifest

    by_source: dict[str, list] = {}
    for pair in sorted(read_manifest(manifest, "test"), key=lambda p: (str(p.image), p.label)):
        group = by_source.setdefault(pair.source, [])
        if not group or group[-1].image != pair.image:  # one target per image
            group.append(pair)
    queue = [pair for round_ in zip(*by_source.values()) for pair in round_]
    for pair in queue[:count - 1]:
        images.append((read_image(pair.image).rgb, f"Segment the {pair.label}."))
    return images


def _time_agent(tool: SegmentationTool, policy_name: str, images: list[tuple[np.ndarray, str]], max_turns: int,
                warmup: int) -> dict:
    policy = build_policy(policy_name)
    agent = Agent(tool, policy, max_turns=max_turns)
    for image, query in images[:warmup]:
        agent.run(image, query)
    totals, encoders, policy_turns, tool_turns, turns = [], [], [], [], []
    for image, query in images:
        started = time.perf_counter()
        result = agent.run(image, query)
        totals.append(time.perf_counter() - started)
        encoders.append(result.encode_seconds)
        policy_turns += [t.policy_seconds for t in result.turns]
        tool_turns += [t.tool_seconds for t in result.turns if t.mask_area is not None]
        turns.append(len(result.turns))
    return {"total_s": statistics.median(totals), "encoder_ms": 1000 * statistics.median(encoders),
            "policy_ms": 1000 * statistics.median(policy_turns), "tool_ms": 1000 * statistics.median(tool_turns),
            "turns": statistics.median(turns)}


def run_agent_bench(policies: list[str], tool_spec: str = "lite-medsam", manifest: str | None = None,
                    images: int = 12, max_turns: int = 10, warmup: int = 2) -> str:
    """A markdown table: per policy and backend, median agent seconds per image and its parts."""
    chosen = _bench_images(manifest, images)  # input errors before the models load
    from .tools.factory import build_tool
    from .tools.onnx_export import export_onnx
    from .tools.onnx_tool import OnnxSamTool
    from .tools.torch_tool import TorchSamTool

    torch_tool = build_tool(tool_spec, backend="torch")
    if not isinstance(torch_tool, TorchSamTool):
        raise ValueError(f"the agent bench compares torch with onnxruntime: give a torch tool spec, not {tool_spec!r}")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        export_onnx(torch_tool.parts, torch_tool.transform, directory)
        onnx_tool = OnnxSamTool(directory)
        for name in policies:
            measured = {backend: _time_agent(tool, name, chosen, max_turns, warmup)
                        for backend, tool in (("torch", torch_tool), ("onnxruntime", onnx_tool))}
            for backend, m in measured.items():
                rows.append(f"| {name} | {backend} | {m['total_s']:.2f} | {m['encoder_ms']:.0f} | {m['policy_ms']:.1f} | "
                            f"{m['tool_ms']:.1f} | {m['turns']:.0f} |")
            ratio = measured["onnxruntime"]["total_s"] / measured["torch"]["total_s"]
            rows.append(f"| {name} | ratio onnxruntime/torch | {ratio:.2f} | | | | |")
    which = (f"the demo MR + {len(chosen) - 1} test-split image(s) of {manifest}" if manifest else
             "the demo MR only; --manifest adds test-split images")
    header = [f"tool {torch_tool.name}; {len(chosen)} image(s) ({which}), medians per image "
              f"after {warmup} warm-up runs, at most {max_turns} turns", "",
              "| policy | backend | agent s/image | encoder ms | policy ms/turn | tool ms/click | turns |",
              "|---|---|---|---|---|---|---|"]
    return "\n".join(header + rows)
