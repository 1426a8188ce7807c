"""Put the tool's ONNX graphs where the Triton model repository expects them.

The graphs are build outputs (tens of MB), never committed: `ibis serve`
exports them into `sam_encoder/1/` and `sam_decoder/1/` when absent or made
from other weights, from the same tool spec the in-process path uses, so
both run the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DEFAULT_REPOSITORY", "SAM_MODELS", "MLLM_MODEL", "prepare_repository", "exported_source"]

DEFAULT_REPOSITORY = Path("triton_models")
SAM_MODELS = ("sam_encoder", "sam_decoder")
MLLM_MODEL = "ibis_mllm"


def _targets(repository: Path) -> dict[str, Path]:
    """Where each exported file goes; the manifest last, so it marks a complete set."""
    return {
        "encoder.onnx": repository / "sam_encoder" / "1" / "encoder.onnx",
        "decoder.onnx": repository / "sam_decoder" / "1" / "decoder.onnx",
        "tool.json": repository / "sam_encoder" / "1" / "tool.json",
    }


def exported_source(repository: str | Path) -> str | None:
    """The `source` of the graphs in the repository, or None when they are not all there."""
    targets = _targets(Path(repository))
    if not all(path.is_file() for path in targets.values()):
        return None
    return json.loads(targets["tool.json"].read_text()).get("source")


def prepare_repository(repository: str | Path = DEFAULT_REPOSITORY, tool_spec: str = "lite-medsam",
                       force: bool = False) -> bool:
    """Put `tool_spec`'s graphs into the repository unless the ones there came from it; True when it wrote them.

    A torch tool spec is exported; `onnx:DIR` (an `ibis export-onnx` folder) is
    copied as it is. Graphs whose manifest names another source are replaced:
    the shipped decoder's source carries its sha256, so an upgrade cannot
    leave the server on older weights than the in-process tool. Each file is
    written in full before it replaces the old one.
    """
    from ..tools.factory import build_tool, parse_tool_spec
    from ..tools.onnx_export import export_onnx
    from ..tools.torch_tool import TorchSamTool

    repository = Path(repository)
    targets = _targets(repository)
    for path in targets.values():
        if not path.parent.is_dir():
            raise ValueError(f"{repository} is not an ibisagent model repository ({path.parent} missing)")
    config = parse_tool_spec(tool_spec)
    tool = None
    if config["kind"] == "onnx":
        folder = Path(config["path"])
        absent = [name for name in targets if not (folder / name).is_file()]
        if absent:
            raise ValueError(f"{folder} is not an `ibis export-onnx` folder: no {', '.join(absent)}")
        wanted = json.loads((folder / "tool.json").read_text()).get("source")
    else:
        tool = build_tool(config)
        if not isinstance(tool, TorchSamTool):
            raise ValueError(f"serving exports a torch tool to ONNX; {tool_spec!r} is not one")
        wanted = tool.parts.source
    if not force and exported_source(repository) == wanted:
        return False
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=repository.parent))
    try:
        source = folder if tool is None else export_onnx(tool.parts, tool.transform, staging)
        targets["tool.json"].unlink(missing_ok=True)
        for name, target in targets.items():
            part = target.with_name(f".{name}.partial")
            shutil.copyfile(source / name, part)
            os.replace(part, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
