"""Weights we train and ship (installed as the package `ibisagent.models`); each file has a model card beside it."""

from importlib import resources
from pathlib import Path

__all__ = ["shipped_weights", "shipped_click_decoder", "CLICK_DECODER_NAME"]

CLICK_DECODER_NAME = "lite_medsam_click_decoder.pt"


def shipped_weights(name: str) -> Path:
    """The path of a shipped weights file, found the same way in a checkout and in an installed wheel."""
    return Path(str(resources.files(__name__).joinpath(name)))


def shipped_click_decoder() -> Path:
    """Our click-tuned LiteMedSAM decoder (models/lite_medsam_click_decoder.md)."""
    path = shipped_weights(CLICK_DECODER_NAME)
    if not path.is_file():
        raise ValueError(f"the shipped click decoder {CLICK_DECODER_NAME} is missing from {path.parent}; "
                         "reinstall ibisagent, or use the tool lite-medsam-base")
    return path
