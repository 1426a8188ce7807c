"""Slices as the tool sees them, each encoded once, only when propagation (or a person) reaches it.

The encoder is the expensive step (about a second per slice on a CPU), so a
volume of 155 slices must never be encoded whole up front, nor any slice
twice. Embeddings are kept in memory as float16 and, with `cache_dir`, on
disk keyed by the slice's display pixels and the tool's `encoder_key`, so a
rerun, another strategy or another target in the same volume reuses them. A
fresh embedding goes through the same float16 rounding as a cached one, so
results do not depend on whether the cache was warm.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..tools.base import ImageEmbedding, SegmentationTool
from .volume import Volume

__all__ = ["SliceEncoder"]


class SliceEncoder:
    """Display RGB and the tool's embedding of each slice of one volume, computed on first use."""

    def __init__(self, tool: SegmentationTool, volume: Volume, cache_dir: str | Path | None = None):
        self.tool = tool
        self.volume = volume
        self.directory = None
        if cache_dir is not None:
            key = hashlib.sha1(tool.encoder_key.encode()).hexdigest()[:12]
            self.directory = Path(cache_dir).expanduser() / key
            self.directory.mkdir(parents=True, exist_ok=True)
        self._features: dict[int, np.ndarray] = {}
        self._frames: dict[int, object] = {}
        self.encoded: list[int] = []  # slices the encoder ran on, in order (a slice appears at most once)
        self.loaded: list[int] = []  # slices read from the disk cache
        self.encode_seconds = 0.0

    def rgb(self, index: int) -> np.ndarray:
        return self.volume.slice_rgb(index)

    def embedding(self, index: int) -> ImageEmbedding:
        index = self.volume.check_slice(index)
        if index not in self._features:
            rgb = self.rgb(index)
            features, frame = self._cached(rgb)
            if features is None:
                started = time.perf_counter()
                fresh = self.tool.encode(rgb)
                self.encode_seconds += time.perf_counter() - started
                features, frame = fresh.features[0].astype(np.float16), fresh.frame
                self._store(rgb, features)
                self.encoded.append(index)
            else:
                self.loaded.append(index)
            self._features[index], self._frames[index] = features, frame
        return ImageEmbedding(self._features[index][None].astype(np.float32), self._frames[index])

    def is_encoded(self, index: int) -> bool:
        return index in self._features

    # ------------------------------------------------------------------ disk cache
    def _path(self, rgb: np.ndarray) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha1(f"{rgb.shape}".encode() + rgb.tobytes()).hexdigest()
        return self.directory / f"{digest}.npy"

    def _cached(self, rgb: np.ndarray):
        path = self._path(rgb)
        if path is None or not path.is_file():
            return None, None
        from ..imaging.transform import Frame

        try:
            features = np.load(path)
        except (OSError, ValueError):  # a damaged entry is recomputed, never trusted
            return None, None
        return features, Frame(rgb.shape[0], rgb.shape[1], self.tool.transform.input_size)

    def _store(self, rgb: np.ndarray, features: np.ndarray) -> None:
        path = self._path(rgb)
        if path is None:
            return
        handle, temporary = tempfile.mkstemp(suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, features)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
