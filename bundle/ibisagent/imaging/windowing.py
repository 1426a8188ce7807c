"""Intensity windows that turn modality values (HU for CT, arbitrary for MR) into display uint8."""

from __future__ import annotations

import numpy as np

__all__ = ["CT_WINDOWS", "apply_window", "default_window", "percentile_window", "to_display"]

# (center, width) in Hounsfield units: the usual radiology presets.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window to uint8: center - width/2 maps to 0, center + width/2 to 255."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    scaled = (values.astype(np.float64) - low) / width
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Window between two percentiles: the usual choice for MR, ultrasound and unknown scales."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return apply_window(np.nan_to_num(values, nan=lo), (lo + hi) / 2.0, hi - lo)


def default_window(modality: str | None) -> str:
    """The abdomen preset for CT, percentiles otherwise.

    The abdomen preset serves the default tool best on CT (docs/results.md,
    "CT display window"); MR, ultrasound and unknown scales have no fixed units.
    """
    return "abdomen" if modality == "CT" else "percentile"


def to_display(values: np.ndarray, modality: str | None = None, window: str | None = None) -> np.ndarray:
    """Pick a window: a named CT preset, else percentiles; uint8 input passes through."""
    if window is not None:
        if window == "percentile":
            return percentile_window(values)
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose one of {', '.join([*CT_WINDOWS, 'percentile'])}")
        return apply_window(values, *CT_WINDOWS[window])
    if values.dtype == np.uint8:
        return values
    return to_display(values, window=default_window(modality))
