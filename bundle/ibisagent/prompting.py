"""Prompt wording, loaded from a YAML file so a checkpoint's own wording can be used."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Formatter

import yaml

from .protocol import protocol_tag

__all__ = ["MAX_QUERY_CHARS", "PromptSet", "clean_query", "load_prompts"]

MAX_QUERY_CHARS = 2000
# Control tokens of ChatML-style formats (Qwen's <|im_start|> and <|image_pad|>, Llama 3's <|eot_id|>, ...).
_CHAT_CONTROL = re.compile(r"<\|[^<>|\s]{1,64}\|>")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

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


def clean_query(query: object) -> str:
    """A clinician's request as it may enter a prompt, stripped; a ValueError says why one cannot.

    Chat-format control tokens (`<|im_start|>`, `<|image_pad|>`, ...) would
    let the text rewrite the conversation or misalign the images, protocol
    tags would corrupt the policy's answer, control characters break servers,
    and a request needs no more than MAX_QUERY_CHARS characters.
    """
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"the query is {len(query)} characters long; at most {MAX_QUERY_CHARS} are accepted")
    markup = _CHAT_CONTROL.search(query)
    found = markup.group(0) if markup else protocol_tag(query)
    if found:
        raise ValueError(f"the query contains {found!r}: chat or protocol markup has no place in a request")
    if _CONTROL_CHARACTERS.search(query):
        raise ValueError("the query contains control characters (below U+0020, other than tab and line breaks)")
    return query.strip()


def _check_template(source: str, key: str, template: str) -> None:
    """`{query}` at least once, and no other field, conversion or format (they could print objects or
    allocate without bound); no chat control tokens."""
    try:
        fields = [(name, conversion, spec) for _, name, spec, conversion in Formatter().parse(template)
                  if name is not None]
    except ValueError as error:
        raise ValueError(f"prompt file {source}: {key} is not a valid template ({error})") from None
    if any((name, conversion, spec) != ("query", None, "") for name, conversion, spec in fields):
        raise ValueError(f"prompt file {source}: {key} may only use the placeholder {{query}}, as it is")
    if not fields:
        raise ValueError(f"prompt file {source}: {key} lacks the placeholder {{query}}: each turn the policy "
                         "sees only the system prompt and that turn's text, so it would never see the request")


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
    for key in _FIELDS:
        markup = _CHAT_CONTROL.search(data[key])
        if markup:
            raise ValueError(f"prompt file {source}: {key} contains the chat control token {markup.group(0)!r}; "
                             "the policy's backend adds the chat format itself")
    for key in ("first_turn", "refinement_turn"):
        _check_template(source, key, data[key])
    return PromptSet(data["system"], data["first_turn"], data["refinement_turn"], source)
