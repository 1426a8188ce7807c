"""IBIS-lite as an agent policy: reads the tool's embedding, answers in the protocol's text.

The network (`lite_model`) picks the action; the `<think>` text says, from
the same quantities, what it saw and why: how much of the image the mask
covers, where the chosen click goes and how sure the policy is. The weights
ship in `ibisagent.models` and were trained on LiteMedSAM's image
embeddings, so the policy refuses a tool whose encoder differs.

The network runs on onnxruntime by default, from a graph exported from the
checkpoint on first use and cached (`graph_cache`, `lite_export`): the
policy then imports no torch. `backend="torch"` runs the checkpoint itself;
both read the same numpy state (`lite_state`), and their actions agree
(tests/test_lite.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..confidence import ConfidenceModel, MaskConfidence, calibration_path, tool_confidence
from ..protocol import Action, format_response
from .base import Message, Observation, Policy, PolicyError
from .lite_state import (LiteConfig, PolicyState, action_probabilities, decode_action, greedy_action,
                         pool_embedding_array, state_arrays, valid_region)
from .query_encoder import QueryEncoder, shared_query_encoder

__all__ = ["LitePolicy", "load_lite_checkpoint", "lite_config", "shipped_lite_policy", "rationale", "LITE_FORMAT",
           "LITE_BACKENDS"]

LITE_FORMAT = "ibisagent-lite-policy/1"
LITE_POLICY_NAME = "lite_policy.pt"
LITE_BACKENDS = ("onnxruntime", "torch")
LITE_GRAPH_FORMAT = "ibisagent-lite-onnx/1"  # the exported graph and its policy.json (lite_export.py)
LITE_GRAPH_INPUTS = ("pooled_embedding", "maps", "query", "step")


def shipped_lite_policy() -> Path:
    from ..models import shipped_weights

    return shipped_weights(LITE_POLICY_NAME)


def lite_config(fields: dict) -> LiteConfig:
    """A LiteConfig from a checkpoint's (or an export's) config mapping."""
    return LiteConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def load_lite_checkpoint(path: str | Path):
    """The network (`LitePolicyNet`, torch) and the checkpoint's metadata; a foreign or broken file is a clear error."""
    import torch

    from .lite_model import LitePolicyNet

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a foreign file fails in many ways (pickle, zip, EOF, OS): one clear error
        raise ValueError(f"cannot read lite policy {path}: {type(error).__name__}: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != LITE_FORMAT:
        raise ValueError(f"{path} is not an IBIS-lite policy checkpoint (format {LITE_FORMAT})")
    network = LitePolicyNet(lite_config(checkpoint["config"]))
    network.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    return network.eval(), {k: v for k, v in checkpoint.items() if k not in ("state_dict",)}


class _OnnxNetwork:
    """The checkpoint's network as its cached ONNX graph on onnxruntime."""

    def __init__(self, checkpoint: Path):
        import onnxruntime as ort

        from ..graph_cache import cached_graphs

        if not checkpoint.is_file():
            raise ValueError(f"lite policy {checkpoint}: no such file")

        def export(folder: Path) -> None:
            from .lite_export import export_lite_policy

            export_lite_policy(checkpoint, folder)

        folder = cached_graphs("lite-policy", LITE_GRAPH_FORMAT, [checkpoint], export)
        manifest = json.loads((folder / "policy.json").read_text())
        self.config = lite_config(manifest["config"])
        self.metadata = manifest["metadata"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(folder / "policy.onnx"), options, providers=["CPUExecutionProvider"])
        self.outputs = manifest["outputs"]

    def __call__(self, pooled: np.ndarray, maps: np.ndarray, query: np.ndarray, step: np.ndarray) -> dict:
        arrays = self.session.run(None, dict(zip(LITE_GRAPH_INPUTS, (pooled, maps, query, step))))
        return dict(zip(self.outputs, arrays))


class _TorchNetwork:
    """The checkpoint's network in torch."""

    def __init__(self, checkpoint: Path):
        self.network, self.metadata = load_lite_checkpoint(checkpoint)
        self.config = self.network.config

    def __call__(self, pooled: np.ndarray, maps: np.ndarray, query: np.ndarray, step: np.ndarray) -> dict:
        import torch

        with torch.inference_mode():
            outputs = self.network(*(torch.from_numpy(array) for array in (pooled, maps, query, step)))
        if isinstance(outputs, torch.Tensor):
            return {"actions": outputs.numpy()}
        return {field: value.numpy() for field, value in zip(outputs._fields, outputs) if value is not None}


def rationale(query: str, mask_fraction: float, n_clicks: int, kind: str, x: float, y: float,
              probability: float) -> str:
    """The `<think>` text: what the policy sees and why it acts, from its own numbers."""
    seen = ("There is no mask yet." if n_clicks == 0 else
            f"After {n_clicks} click{'s' if n_clicks > 1 else ''} the mask covers {100 * mask_fraction:.1f}% of the image.")
    if kind == "terminate":
        return (f"The request: \"{query}\". {seen} The mask matches what I look for; "
                f"I stop (confidence {probability:.2f}).")
    where = "part of the target is still missing" if kind == "positive" else "the mask spills outside the target"
    if n_clicks == 0:
        where = "the target is most likely"
    return (f"The request: \"{query}\". {seen} Around ({x:.2f}, {y:.2f}) {where}, so I place a {kind} point "
            f"there (confidence {probability:.2f}).")


CONFIDENCE_DROP = 0.1  # chosen on validation and real CT outside the test split (docs/lite.md, Confidence stop)


class LitePolicy(Policy):
    """Greedy IBIS-lite; `max_clicks=1` gives the one-click (no refinement) variant.

    `confidence_drop`: stop once the tool's own IoU estimate of the mask has
    fallen more than this below its best in the run (None: never). The
    network never sees that estimate; where it drifts (clicks that keep
    shrinking a mask it misreads), the tool's estimate falls first.
    """

    name = "lite"

    def __init__(self, checkpoint: str | Path | None = None, max_clicks: int | None = None,
                 query_encoder: QueryEncoder | None = None, confidence_drop: float | None = CONFIDENCE_DROP,
                 backend: str | None = None):
        backend = backend or "onnxruntime"
        if backend not in LITE_BACKENDS:
            raise ValueError(f"unknown backend {backend!r} for the lite policy; choose one of {', '.join(LITE_BACKENDS)}")
        self.checkpoint = Path(checkpoint) if checkpoint else shipped_lite_policy()
        self.network = (_OnnxNetwork if backend == "onnxruntime" else _TorchNetwork)(self.checkpoint)
        self.config, self.metadata = self.network.config, self.network.metadata
        self.backend = backend
        self.max_clicks = max_clicks
        self.confidence_drop = confidence_drop
        self.queries = query_encoder or shared_query_encoder(backend)
        calibration = calibration_path(self.checkpoint)
        self.confidence_model = ConfidenceModel.load(calibration, self.checkpoint) if calibration.is_file() else None
        if max_clicks == 1:
            self.name = "lite-one-click"
        elif confidence_drop is None:
            self.name = "lite-no-confidence-stop"

    def _pooled(self, observation: Observation) -> np.ndarray:
        """The network's embedding input for this observation; a foreign or absent embedding is a PolicyError."""
        embedding = observation.embedding
        if embedding is None:
            raise PolicyError("the lite policy needs the tool's image embedding (run it through the Agent)")
        pooled = _pooled_input(embedding.features)
        expected = self.metadata.get("encoder_key")
        frame = embedding.frame
        half = self.config.grid // 2
        if pooled.shape[1:] != (self.config.embedding_channels, half, half) or frame.input_size != self.config.frame_size:
            raise PolicyError(f"the lite policy was trained on {expected} embeddings; this tool's pooled embedding "
                              f"has shape {pooled.shape[1:]} at input {frame.input_size}")
        return pooled

    def _state(self, observation: Observation) -> PolicyState:
        """The observation as the network's state, in the tool's model-input frame."""
        frame = observation.embedding.frame
        scale_x, scale_y = frame.width * frame.scale, frame.height * frame.scale
        return PolicyState(frame.mask_to_input(observation.mask), valid_region(frame),
                           tuple((c.x * scale_x, c.y * scale_y, c.positive) for c in observation.clicks),
                           observation.turn)

    def act(self, observation: Observation, messages: list[Message]) -> str:
        pooled = self._pooled(observation)
        frame = observation.embedding.frame
        if self.max_clicks is not None and len(observation.clicks) >= self.max_clicks:
            return format_response(Action.terminate(), f"The request: \"{observation.query}\". "
                                   f"I was asked for at most {self.max_clicks} click(s); I stop.")
        estimates = observation.predicted_ious
        best_before = max(estimates[:-1], default=None)  # None until the second click
        if self.confidence_drop is not None and best_before is not None \
                and best_before - estimates[-1] > self.confidence_drop:
            return format_response(Action.terminate(), f"The request: \"{observation.query}\". The segmentation "
                                   f"tool's own estimate of the mask fell from {best_before:.2f} to "
                                   f"{estimates[-1]:.2f} after my last click; more clicks would likely make it "
                                   "worse, so I stop.")
        maps, step, blocked = state_arrays([self._state(observation)], self.config)
        outputs = self.network(pooled, maps, self.queries([observation.query]), step)
        probabilities = action_probabilities(outputs["actions"], blocked)
        # With no click yet there is nothing to stop on: the first action is always a click.
        index = greedy_action(probabilities, may_stop=bool(observation.clicks))
        kind, fx, fy = decode_action(index, self.config)
        scale_x, scale_y = frame.width * frame.scale, frame.height * frame.scale
        x, y = min(max(fx / scale_x, 0.0), 1.0), min(max(fy / scale_y, 0.0), 1.0)
        think = rationale(observation.query, float(observation.mask.mean()), len(observation.clicks), kind, x, y,
                          float(probabilities[0, index]))
        action = {"positive": Action.positive, "negative": Action.negative}.get(kind)
        return format_response(action(x, y) if action else Action.terminate(), think)

    def confidence_features(self, observation: Observation) -> dict[str, float]:
        """What the confidence reads of a final state (`confidence.py`): the tool's estimate of the mask, the share
        of the policy's first-turn belief (its positive-click distribution with no mask yet: where it thinks the
        requested target is) that lies inside the mask, its probability of stopping now, the mask's area."""
        pooled = self._pooled(observation)
        final = self._state(observation)
        first = PolicyState(np.zeros_like(final.valid), final.valid, (), 0)
        maps, step, blocked = state_arrays([first, final], self.config)
        query = self.queries([observation.query])
        outputs = self.network(np.repeat(pooled, 2, axis=0), maps, np.repeat(query, 2, axis=0), step)
        probabilities = action_probabilities(outputs["actions"], blocked)
        cells = self.config.grid ** 2
        belief = probabilities[0, :cells] / max(float(probabilities[0, :cells].sum()), 1e-12)
        return {"tool_iou": tool_confidence(observation.predicted_ious).value,  # clipped to [0, 1]
                "belief_inside": float(belief @ maps[1, 0].reshape(-1)),
                "stop_probability": float(probabilities[1, -1]), "mask_fraction": float(observation.mask.mean())}

    def confidence(self, observation: Observation) -> MaskConfidence:
        """The calibrated confidence in the final mask, fitted on validation for this checkpoint
        (`<checkpoint stem>.confidence.json`); without one, the tool's estimate (the policy's features recorded)."""
        features = self.confidence_features(observation)
        if self.confidence_model is None:
            return replace(tool_confidence(observation.predicted_ious), features=features)
        return self.confidence_model(features)


def _pooled_input(features) -> np.ndarray:
    """(1, C, G/2, G/2) float32: what the network reads, pooled here from an in-process embedding, or the one a
    served tool sent back once for the image (its embedding stays on the server)."""
    if isinstance(features, np.ndarray):
        return pool_embedding_array(features)
    pooled = getattr(features, "pooled", None)
    if pooled is None:
        raise PolicyError("the lite policy reads the image embedding; this tool keeps it on a server without "
                          "sending back the policy's pooled input")
    return np.asarray(pooled, np.float32)
