"""Put the tool's ONNX graphs where the Triton model repository expects them.

The graphs are build outputs (tens of MB), never committed: `ibis serve`
copies them into `sam_encoder/1/` and `sam_decoder/1/` when absent or made
from other weights, from the same graph cache the in-process default tool
runs, so both run the same files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..tools.onnx_tool import BOX_DECODER_NAME, MANIFEST_NAME

__all__ = ["DEFAULT_REPOSITORY", "SAM_MODELS", "MLLM_MODEL", "prepare_repository", "exported_source"]

DEFAULT_REPOSITORY = Path("triton_models")
SAM_MODELS = ("sam_encoder", "sam_decoder")
MLLM_MODEL = "ibis_mllm"


def _targets(repository: Path) -> dict[str, Path]:
    """Where each exported file goes (the box decoder only when the export has one); the manifest last."""
    return {
        "encoder.onnx": repository / "sam_encoder" / "1" / "encoder.onnx",
        "decoder.onnx": repository / "sam_decoder" / "1" / "decoder.onnx",
        BOX_DECODER_NAME: repository / "sam_decoder" / "1" / BOX_DECODER_NAME,
        MANIFEST_NAME: repository / "sam_encoder" / "1" / MANIFEST_NAME,
    }


def _graphs(manifest: dict) -> list[str]:
    return ["encoder.onnx", "decoder.onnx", *([BOX_DECODER_NAME] if manifest.get("box_decoder") else [])]


def exported_source(repository: str | Path) -> str | None:
    """The `source` of the graphs in the repository, or None when they are not all there."""
    targets = _targets(Path(repository))
    if not targets[MANIFEST_NAME].is_file():
        return None
    manifest = json.loads(targets[MANIFEST_NAME].read_text())
    if not all(targets[name].is_file() for name in _graphs(manifest)):
        return None
    return manifest.get("source")


def prepare_repository(repository: str | Path = DEFAULT_REPOSITORY, tool_spec: str = "lite-medsam",
                       force: bool = False) -> bool:
    """Put `tool_spec`'s graphs into the repository unless the ones there came from it; True when it wrote them.

    A spec built from torch weights gives its cached graphs (`tools.factory.tool_graphs`: the very files the
    in-process default tool runs, exported on first use); `onnx:DIR` (an `ibis export-onnx` folder) is copied
    as it is. Graphs whose manifest names another source are replaced: the shipped decoder's source carries
    its sha256, so an upgrade cannot leave the server on older weights than the in-process tool. Each file is
    written in full before it replaces the old one.
    """
    from ..tools.factory import parse_tool_spec, tool_graphs

    repository = Path(repository)
    targets = _targets(repository)
    for path in targets.values():
        if not path.parent.is_dir():
            raise ValueError(f"{repository} is not an ibisagent model repository ({path.parent} missing)")
    config = parse_tool_spec(tool_spec)
    if config["kind"] == "onnx":
        source = Path(config["path"])
        if not (source / MANIFEST_NAME).is_file():
            raise ValueError(f"{source} is not an `ibis export-onnx` folder: no {MANIFEST_NAME}")
    else:
        source = tool_graphs(config)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    if not force and exported_source(repository) == manifest.get("source"):
        return False
    names = _graphs(manifest)
    absent = [name for name in names if not (source / name).is_file()]
    if absent:
        raise ValueError(f"{source} is not a complete `ibis export-onnx` folder: no {', '.join(absent)}")
    targets[MANIFEST_NAME].unlink(missing_ok=True)
    targets[BOX_DECODER_NAME].unlink(missing_ok=True)
    for name in (*names, MANIFEST_NAME):
        part = targets[name].with_name(f".{name}.partial")
        shutil.copyfile(source / name, part)
        os.replace(part, targets[name])
    return True
