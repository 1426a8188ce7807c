"""The torch-free default path: graphs exported once and cached, and `ibis segment` running with no torch at all."""

import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibisagent.graph_cache import GraphCacheError, cached_graphs

REPO = Path(__file__).resolve().parents[1]
# What a lean deployment image lacks: importing any of these fails in the child process.
NO_TORCH = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'torchvision', 'transformers', 'sentence_transformers', 'timm'):\n"
            "            raise ImportError(f'{name} is not installed here')\n"
            "sys.meta_path.insert(0, NoTorch())\n")


def _slow_export(folder: Path) -> None:
    """An export that takes a while and records that it ran (for the concurrency test)."""
    time.sleep(1.0)
    (folder / "graph.onnx").write_text("graph")
    with open(folder.parent / "exports.log", "a") as log:
        log.write("exported\n")


def _export_in_a_process(weights: str) -> str:
    return str(cached_graphs("test", "1", [weights], _slow_export))


def test_entries_are_keyed_by_the_weights_and_exported_once(tmp_path, monkeypatch):
    monkeypatch.setenv("IBISAGENT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"weights v1")
    calls = []

    def export(folder: Path) -> None:
        calls.append(folder)
        (folder / "graph.onnx").write_text("graph")

    first = cached_graphs("test", "1", [weights], export)
    assert cached_graphs("test", "1", [weights], export) == first and len(calls) == 1
    assert (first / "graph.onnx").read_text() == "graph" and first.parent == tmp_path / "cache" / "graphs"
    weights.write_bytes(b"weights v2, retrained")  # new shipped weights: a new entry, exported again
    second = cached_graphs("test", "1", [weights], export)
    assert second != first and len(calls) == 2
    assert cached_graphs("test", "2", [weights], export) not in (first, second)  # a new export layout too

    def broken(folder: Path) -> None:
        (folder / "half.onnx").write_text("half")
        raise RuntimeError("killed mid-export")

    weights.write_bytes(b"weights v3, longer still")
    with pytest.raises(RuntimeError, match="killed"):
        cached_graphs("test", "1", [weights], broken)
    names = sorted(path.name for path in (tmp_path / "cache" / "graphs").iterdir())
    assert len(names) == 4 and not any(name.startswith(".") for name in names)  # 3 entries + sha256.json, no staging

    def needs_torch(folder: Path) -> None:
        raise ImportError("No module named 'torch'")

    with pytest.raises(GraphCacheError, match=r"not in .* and cannot be exported here .*ibis export-graphs"):
        cached_graphs("test", "1", [weights], needs_torch)


def test_two_processes_exporting_at_once_end_with_one_complete_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("IBISAGENT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"weights")
    with ProcessPoolExecutor(2) as pool:
        entries = list(pool.map(_export_in_a_process, [str(weights)] * 2))
    assert entries[0] == entries[1] and (Path(entries[0]) / "complete.json").is_file()
    assert (Path(entries[0]) / "graph.onnx").read_text() == "graph"
    assert sorted(p.name for p in (tmp_path / "cache" / "graphs").iterdir()) == sorted(
        [Path(entries[0]).name, "exports.log", "sha256.json"])  # the losing export's staging folder is gone


def test_the_default_tool_matches_torch(lite_tool, real_pairs):
    """The default tool (onnxruntime, cached graphs) gives torch's logits to 1e-3 and the same masks."""
    from ibisagent.clicks import next_click
    from ibisagent.tools.factory import build_tool
    from ibisagent.tools.onnx_tool import OnnxSamTool

    default = build_tool("lite-medsam")
    assert isinstance(default, OnnxSamTool) and default.encoder_key == lite_tool.encoder_key
    for pair in real_pairs[::3]:
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        target = np.asarray(Image.open(pair.mask).convert("L")) > 127
        ours, theirs = default.encode(image), lite_tool.encode(image)
        assert np.abs(ours.features - theirs.features).max() < 1e-3
        clicks, low_res, mask = [], None, np.zeros_like(target)
        for _ in range(3):
            click, _ = next_click(mask, target)
            if click is None:
                break
            clicks.append(click)
            a, b = default.predict(theirs, clicks, low_res), lite_tool.predict(theirs, clicks, low_res)
            assert np.abs(a.low_res_logits - b.low_res_logits).max() < 1e-3 and abs(a.iou - b.iou) < 1e-3
            assert (a.mask != b.mask).mean() < 1e-3
            low_res, mask = b.low_res_logits, b.mask


def test_lite_policy_acts_alike_on_both_backends(demo_image, lite_tool):
    from ibisagent.agent import Agent
    from ibisagent.policies.lite import LitePolicy
    from ibisagent.policies.query_encoder import QueryEncoder

    runs = {}
    for backend in ("onnxruntime", "torch"):
        policy = LitePolicy(backend=backend, query_encoder=QueryEncoder(backend))
        runs[backend] = Agent(lite_tool, policy).run(demo_image, "Which organ produces bile? Segment it.")
    ours, theirs = runs["onnxruntime"], runs["torch"]
    assert [t.action for t in ours.turns] == [t.action for t in theirs.turns] and ours.clicks
    assert np.array_equal(ours.mask, theirs.mask)
    texts = ["Segment the liver.", "Outline the organ that filters blood. " * 60]  # the long one is truncated
    assert np.abs(QueryEncoder("onnxruntime")(texts) - QueryEncoder("torch")(texts)).max() < 1e-5


def test_ibis_segment_runs_where_torch_cannot_be_imported(tmp_path, demo_image):
    """The lean path: with the graphs cached, `ibis segment` needs neither torch nor transformers."""
    warm = subprocess.run([sys.executable, "-m", "ibisagent.cli", "export-graphs"], capture_output=True, text=True,
                          timeout=1200)
    assert warm.returncode == 0, warm.stderr
    image = tmp_path / "mr.png"
    Image.fromarray(demo_image).save(image)
    outs = {}
    for name, prefix, backend in (("lean", NO_TORCH, []), ("torch", "", ["--backend", "torch"])):
        code = prefix + ("from ibisagent.cli import main\n"
                         "code = main(sys.argv[1:])\n"
                         "print('torch imported:', 'torch' in sys.modules)\n"
                         "sys.exit(code)\n")
        outs[name] = tmp_path / name
        done = subprocess.run([sys.executable, "-c", "import sys\n" + code, "segment", image, "--query",
                               "Segment the liver.", "--out", outs[name], *backend],
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("torch imported: False" in done.stdout) == (name == "lean"), done.stdout
    lean, torch_run = (json.loads((outs[name] / "trajectory.json").read_text()) for name in ("lean", "torch"))
    assert lean["tool"].startswith("onnx:") and torch_run["tool"].startswith("torch:")
    assert [c for c in lean["clicks"]] == [c for c in torch_run["clicks"]]
    masks = [np.asarray(Image.open(outs[name] / "mask.png")) > 0 for name in ("lean", "torch")]
    assert (masks[0] != masks[1]).mean() < 1e-3 and masks[0].any()
