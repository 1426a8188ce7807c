"""Build a policy by name with keyword options (from the CLI or a bundle config)."""

from __future__ import annotations

from typing import Any

from .base import Policy

__all__ = ["POLICY_NAMES", "build_policy"]

POLICY_NAMES = ("scripted", "oracle", "hf", "openai")


def build_policy(name: str, **options: Any) -> Policy:
    """`oracle` needs `ground_truth`, `scripted` needs `responses`, `hf` a `model_path`, `openai` a `base_url` and `model`."""
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
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
