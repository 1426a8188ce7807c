"""IBIS-lite's network as an ONNX graph, exported (with torch, once) from whatever checkpoint is loaded.

The graph takes the network's own inputs (the pooled embedding, the state
maps, the query vector, the step feature) with a dynamic batch, and its
shapes come from the checkpoint's `LiteConfig`, so a retrained or wider
network exports the same way. A network that returns several outputs (a
named tuple, e.g. extra heads) gets one graph output per non-empty field,
named after it; a plain tensor is the output `actions`. `policy.json` beside
the graph holds the config and the checkpoint's metadata, so the onnxruntime
policy needs neither torch nor the checkpoint file's pickle.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .lite import LITE_GRAPH_FORMAT, LITE_GRAPH_INPUTS, load_lite_checkpoint
from .lite_state import STATE_CHANNELS

__all__ = ["export_lite_policy"]

OPSET = 17


class _NamedOutputs(nn.Module):
    """The network with its named-tuple output flattened to the fields that hold a tensor."""

    def __init__(self, network: nn.Module, fields: list[str]):
        super().__init__()
        self.network, self.fields = network, fields

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.network(*inputs)
        return tuple(getattr(outputs, field) for field in self.fields)


def export_lite_policy(checkpoint: str | Path, folder: str | Path) -> None:
    """Write `policy.onnx` and `policy.json` for the checkpoint into `folder`."""
    folder = Path(folder)
    network, metadata = load_lite_checkpoint(checkpoint)
    config = network.config
    half = config.grid // 2
    example = (torch.zeros(1, config.embedding_channels, half, half), torch.zeros(1, STATE_CHANNELS, config.grid,
               config.grid), torch.zeros(1, config.query_dim), torch.zeros(1, 1))
    with torch.no_grad():
        sample = network(*example)
    if isinstance(sample, torch.Tensor):
        exported, names = network, ["actions"]
    else:
        names = [field for field, value in zip(sample._fields, sample) if value is not None]
        exported = _NamedOutputs(network, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported.eval(), example, folder / "policy.onnx", dynamo=False, opset_version=OPSET,
                          input_names=list(LITE_GRAPH_INPUTS), output_names=names,
                          dynamic_axes={name: {0: "batch"} for name in (*LITE_GRAPH_INPUTS, *names)})
    manifest = {"format": LITE_GRAPH_FORMAT, "config": config.to_dict(), "outputs": names,
                "metadata": {key: value for key, value in metadata.items() if key != "config"}}
    (folder / "policy.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
