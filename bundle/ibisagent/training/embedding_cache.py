"""Image embeddings computed once and kept on disk: the encoder is frozen during decoder training.

Entries are float16 `.npy` files keyed by the image file's content (sha1 of
its bytes) and the encoder's identity (`SegmentationTool.encoder_key`:
encoder and preprocessing, not backend or decoder), written atomically, so a
rerun, a resumed training or another stage reuses them, a changed image or
encoder never reads a stale one, and a dataset copied or provisioned again
(new paths, new modification times) keeps its entries.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..imaging.transform import Frame
from ..tools.base import ImageEmbedding, SegmentationTool

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    def __init__(self, directory: str | Path, tool: SegmentationTool):
        self.tool = tool
        self.directory = Path(directory).expanduser() / hashlib.sha1(tool.encoder_key.encode()).hexdigest()[:12]
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, image_path: Path) -> Path:
        return self.directory / f"{hashlib.sha1(image_path.read_bytes()).hexdigest()}.npy"

    def get(self, image_path: str | Path) -> np.ndarray:
        """The (C, h, w) float16 embedding of an image file, computed on first use."""
        image_path = Path(image_path)
        path = self._path(image_path)
        if path.is_file():
            return np.load(path)
        image = np.asarray(Image.open(image_path).convert("RGB"))
        features = self.tool.encode(image).features[0].astype(np.float16)
        handle, temporary = tempfile.mkstemp(suffix=".npy", dir=self.directory)
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, features)
        os.replace(temporary, path)
        return features

    def embedding(self, image_path: str | Path) -> ImageEmbedding:
        """The cached embedding with its frame, ready for the tool's `predict`."""
        features = self.get(image_path)
        with Image.open(image_path) as image:
            width, height = image.size
        frame = Frame(height, width, self.tool.transform.input_size)
        return ImageEmbedding(features[None].astype(np.float32), frame)
