"""Weights we train and ship (installed as the package `ibisagent.models`); each file has a model card beside it."""

from importlib import resources
from pathlib import Path

__all__ = ["shipped_weights"]


def shipped_weights(name: str) -> Path:
    """The path of a shipped weights file, found the same way in a checkout and in an installed wheel."""
    return Path(str(resources.files(__name__).joinpath(name)))
