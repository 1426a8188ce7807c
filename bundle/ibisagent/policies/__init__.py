"""Policies: who decides the next click. All answer in the protocol's text."""

from .base import Observation, Policy, PolicyError
from .factory import LITE_POLICY_NAMES, POLICY_NAMES, build_policy

__all__ = ["Observation", "Policy", "PolicyError", "LITE_POLICY_NAMES", "POLICY_NAMES", "build_policy"]
