"""How sure a run is of its final mask, and when the result is flagged unreliable.

Every completed run gets a `MaskConfidence`: a score in [0, 1] for its final
mask and the threshold below which the run is flagged `unreliable` (the CLI
warns on stderr; trajectory.json, the SEG's side-car and the bundle's summary
carry the flag and the score). Two estimates exist:

- `tool`: the segmentation tool's predicted IoU of its last mask. It judges
  the mask but never reads the request, so a clean mask of the wrong organ
  can score high. Any policy without an estimate of its own gets this one.
- `lite`: IBIS-lite's calibrated estimate, a logistic model of the chance
  that the mask's IoU is at least 0.5, fitted on the validation split
  (scripts/calibrate_confidence.py) from the tool's estimate and from the
  policy's own numbers: how much of its first-turn belief (where it would
  click first, i.e. where it thinks the requested target is) lies inside the
  final mask, and how sure it is that it should stop now. The fit lives in
  a JSON file beside the checkpoint (`<checkpoint stem>.confidence.json`),
  bound to that checkpoint by its sha256.

Both thresholds were chosen on the validation split (docs/lite.md,
"Confidence"); the test figures are in docs/results.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["MaskConfidence", "ConfidenceModel", "tool_confidence", "calibration_path", "TOOL_CONFIDENCE_THRESHOLD",
           "CONFIDENCE_FORMAT", "FEATURE_TRANSFORMS", "transformed"]

CONFIDENCE_FORMAT = "ibisagent-confidence/1"
# The tool's predicted IoU below which a run is unreliable: the largest Youden J on IBIS-lite's validation runs
# (scripts/calibrate_confidence.py, docs/lite.md "Confidence").
TOOL_CONFIDENCE_THRESHOLD = 0.79
# How each feature enters the logistic model (values are clipped away from 0 and 1 first).
FEATURE_TRANSFORMS = ("identity", "logit", "log")
_EPSILON = 1e-4


@dataclass(frozen=True)
class MaskConfidence:
    value: float  # the score of the final mask, in [0, 1]; higher is better
    threshold: float  # below it the result is unreliable
    source: str  # what estimated it: "tool" (the tool's predicted IoU) or a policy's name ("lite")
    features: Mapping[str, float] = field(default_factory=dict)  # what the estimate read (for calibration)

    def __post_init__(self) -> None:
        if not (0.0 <= self.value <= 1.0 and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"confidence {self.value} and threshold {self.threshold} must lie in [0, 1]")

    @property
    def unreliable(self) -> bool:
        return self.value < self.threshold

    def to_dict(self) -> dict:
        return {"value": round(self.value, 4), "threshold": self.threshold, "source": self.source,
                "unreliable": self.unreliable, "features": {k: round(v, 4) for k, v in self.features.items()}}

    def warning(self) -> str:
        """The line a person reading the output must see."""
        return (f"the result is unreliable: confidence {self.value:.2f} is below {self.threshold:.2f} "
                f"({self.source} estimate); check the mask before using it")


def tool_confidence(predicted_ious: Sequence[float]) -> MaskConfidence:
    """The tool's own IoU estimate of the last mask (0 when no click made a mask)."""
    value = min(max(float(predicted_ious[-1]), 0.0), 1.0) if predicted_ious else 0.0
    return MaskConfidence(value, TOOL_CONFIDENCE_THRESHOLD, "tool", {"tool_iou": value})


def calibration_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's confidence calibration lies: beside it, `<stem>.confidence.json`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.confidence.json")


def transformed(value: float, kind: str) -> float:
    """A feature value as the logistic model reads it (`FEATURE_TRANSFORMS`)."""
    if kind == "identity":
        return value
    clipped = min(max(value, _EPSILON), 1.0 - _EPSILON)
    return math.log(clipped / (1.0 - clipped)) if kind == "logit" else math.log(clipped)


@dataclass(frozen=True)
class ConfidenceModel:
    """A logistic model over named features, fitted for one checkpoint (validated when built)."""

    features: tuple[str, ...]
    transforms: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    threshold: float
    checkpoint_sha256: str
    source: str = "lite"
    notes: Mapping[str, object] = field(default_factory=dict)  # how it was fitted, validation figures

    def __post_init__(self) -> None:
        if not self.features or not len(self.features) == len(self.transforms) == len(self.coefficients):
            raise ValueError("a confidence model needs one transform and one coefficient per feature")
        unknown = set(self.transforms) - set(FEATURE_TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown feature transform(s) {sorted(unknown)}; use {', '.join(FEATURE_TRANSFORMS)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the threshold {self.threshold} must lie in [0, 1]")

    def __call__(self, values: Mapping[str, float]) -> MaskConfidence:
        missing = [name for name in self.features if name not in values]
        if missing:
            raise ValueError(f"the confidence model needs the feature(s) {missing}")
        score = self.intercept + sum(c * transformed(float(values[n]), t)
                                     for n, t, c in zip(self.features, self.transforms, self.coefficients))
        value = 1.0 / (1.0 + math.exp(-min(max(score, -50.0), 50.0)))
        return MaskConfidence(value, self.threshold, self.source, dict(values))

    def to_dict(self) -> dict:
        return {"format": CONFIDENCE_FORMAT, "features": list(self.features), "transforms": list(self.transforms),
                "coefficients": list(self.coefficients), "intercept": self.intercept, "threshold": self.threshold,
                "checkpoint_sha256": self.checkpoint_sha256, "source": self.source, "notes": dict(self.notes)}

    @classmethod
    def load(cls, path: str | Path, checkpoint: str | Path) -> ConfidenceModel:
        """The calibration at `path`, refused (ValueError) when foreign, broken or fitted for another checkpoint."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != CONFIDENCE_FORMAT:
                raise ValueError(f"format is not {CONFIDENCE_FORMAT}")
            model = cls(tuple(data["features"]), tuple(data["transforms"]), tuple(map(float, data["coefficients"])),
                        float(data["intercept"]), float(data["threshold"]), str(data["checkpoint_sha256"]),
                        str(data.get("source", "lite")), data.get("notes", {}))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"cannot read the confidence calibration {path}: {error}") from None
        digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
        if digest != model.checkpoint_sha256:
            raise ValueError(f"the confidence calibration {path} was fitted for another checkpoint than {checkpoint} "
                             "(sha256 differs); refit it with scripts/calibrate_confidence.py or remove it")
        return model
