"""Prompt wording, loaded from a YAML file so a checkpoint's own wording can be used."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["PromptSet", "load_prompts"]

_FIELDS = ("system", "first_turn", "refinement_turn")


@dataclass(frozen=True)
class PromptSet:
    system: str
    first_turn: str
    refinement_turn: str
    source: str = "default"

    def first(self, query: str) -> str:
        return self.first_turn.format(query=query)

    def refinement(self, query: str) -> str:
        return self.refinement_turn.format(query=query)

    def user_text(self, query: str, turn: int) -> str:
        """The text of turn `turn` (0-based): the first-turn wording, then the refinement wording."""
        return self.first(query) if turn == 0 else self.refinement(query)


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Load a prompt file; None gives the packaged default wording."""
    if path is None:
        text = resources.files("ibisagent").joinpath("prompts/default.yaml").read_text(encoding="utf-8")
        source = "default"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"cannot read prompt file {path}: {error.strerror}") from None
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"prompt file {source} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"prompt file {source} must be a mapping with keys {', '.join(_FIELDS)}")
    missing = [key for key in _FIELDS if not isinstance(data.get(key), str)]
    if missing:
        raise ValueError(f"prompt file {source} lacks text for: {', '.join(missing)}")
    for key in ("first_turn", "refinement_turn"):
        try:
            data[key].format(query="q")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"prompt file {source}: {key} may only use the placeholder {{query}} ({error})") from None
    return PromptSet(data["system"], data["first_turn"], data["refinement_turn"], source)
