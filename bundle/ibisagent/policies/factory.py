"""Build a policy by name with keyword options (from the CLI or a bundle config)."""

from __future__ import annotations

from typing import Any

from .base import Policy

__all__ = ["LITE_POLICY_NAMES", "POLICY_NAMES", "build_policy"]

LITE_POLICY_NAMES = ("lite", "lite-one-click", "lite-no-confidence-stop")  # one network, played three ways
POLICY_NAMES = (*LITE_POLICY_NAMES, "scripted", "oracle", "hf", "openai", "triton")


def build_policy(name: str, **options: Any) -> Policy:
    """`oracle` needs `ground_truth`, `scripted` needs `responses`, `hf` a `model_path`, `openai` a `base_url` and `model`,
    `triton` a `server` (HOST:PORT, gRPC) and optionally a `model` (default ibis_mllm).

    `lite` (the embedded default) takes an optional `checkpoint`; `lite-one-click` is the same policy
    stopped after its first click (the no-refinement ablation); `lite-no-confidence-stop` the same
    policy without its stop on a falling tool estimate (that rule's ablation).
    """
    if name in LITE_POLICY_NAMES:
        from .lite import LitePolicy

        if name == "lite-one-click":
            options = {**options, "max_clicks": 1}
        if name == "lite-no-confidence-stop":
            options = {**options, "confidence_drop": None}
        return LitePolicy(**options)
    if name == "scripted":
        from .scripted import ScriptedPolicy

        return ScriptedPolicy(**options)
    if name == "oracle":
        from .oracle import OraclePolicy

        if options.get("ground_truth") is None:
            raise ValueError("the oracle policy needs a ground-truth mask (--ground-truth)")
        return OraclePolicy(**options)
    if name == "hf":
        from .hf import HFPolicy

        return HFPolicy(**options)
    if name == "openai":
        from .openai_policy import OpenAIPolicy

        return OpenAIPolicy(**options)
    if name == "triton":
        from ..serving.triton_policy import TritonMLLMPolicy

        return TritonMLLMPolicy(**options)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
