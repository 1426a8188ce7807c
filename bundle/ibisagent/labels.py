"""The target's label from the query, when the user gives none: what a DICOM-SEG segment is called and coded.

A viewer reads a segment's meaning from its codes, so "Segment the liver."
should give a segment coded Liver, not a generic "target". In order:

1. a known label or one of its spellings named as the request's object
   ("Segment the left kidney.", "Outline the gall bladder."); elsewhere in
   a question a label only says where the target is ("the gland on top of
   the left kidney"). Several different objects give no label;
2. otherwise (a reasoning question that never names its target) the query
   encoder's nearest description of a known target, when its cosine
   similarity reaches `SIMILARITY_THRESHOLD` (chosen on our validation
   questions, `scripts/label_threshold.py`; never on test questions);
3. otherwise nothing: the caller falls back to the generic code.

A side word in the query ("left", "right") picks the side of a paired
target either way. Everything needed at run time (labels, spellings,
descriptions) ships in the package.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

import numpy as np

from .dicom.codes import known_labels, label_spellings, normalise_label

__all__ = ["GENERIC_LABEL", "LabelChoice", "SIMILARITY_THRESHOLD", "choose_label", "label_descriptions",
           "label_from_query"]

# Chosen on the validation questions of scripts/label_threshold.py, where a wrong label costs twice a missing
# one (a wrong code misleads a viewer; the generic one is only vague): docs/dicom.md, "The label from the query".
SIMILARITY_THRESHOLD = 0.59
GENERIC_LABEL = "target"  # the segment's label when nothing better is known (coded generic Tissue)
_SIDES = ("left", "right")


@dataclass(frozen=True)
class LabelChoice:
    """How a segment's label was chosen: the label (None: no match) and why, for the side-car."""

    label: str | None
    how: str  # "given" | "named in the query" | "query encoder" | "no match"
    matched: str | None = None  # the spelling found, or the description the encoder matched
    similarity: float | None = None  # query encoder only: the nearest description's cosine similarity
    threshold: float | None = None  # and the threshold it had to reach
    note: str = ""  # why there is no label (ambiguous, too far from every description)

    @property
    def segment_label(self) -> str:
        return self.label or GENERIC_LABEL

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value not in (None, "")}

    def describe(self) -> str:
        """One line for the user: the label and how it was chosen, or why there is none."""
        if self.how == "given":
            return f"segment label {self.label!r} (given)"
        if self.how == "named in the query":
            return f"segment label {self.label!r} (named in the query as {self.matched!r})"
        if self.how == "query encoder":
            return (f"segment label {self.label!r} (inferred: the query is nearest to \"{self.matched}\", "
                    f"similarity {self.similarity:.2f} >= {self.threshold:.2f})")
        return f"no segment label from the query: {self.note}"


@lru_cache(maxsize=1)
def label_descriptions() -> dict[str, list[str]]:
    """Known label -> plain-word descriptions (ibisagent/assets/label_descriptions.yaml)."""
    import yaml

    text = resources.files("ibisagent").joinpath("assets/label_descriptions.yaml").read_text(encoding="utf-8")
    return {str(label): [str(line) for line in lines] for label, lines in yaml.safe_load(text).items()}


def _words(text: str) -> str:
    """' '-joined lower-case words with a space at each end, so phrases match whole words only."""
    return " " + " ".join(re.findall(r"[a-z0-9]+", normalise_label(text).replace("'s", ""))) + " "


def _base(label: str) -> str:
    """`kidney left` -> `kidney`: the target without its side."""
    return re.sub(r" (left|right)$", "", label)


def _with_side(label: str, words: str) -> str:
    """`kidney` -> `kidney left` when the query says exactly one side and the label has sided forms."""
    said = [side for side in _SIDES if f" {side} " in words]
    base = _base(label)
    known = set(known_labels())
    if len(said) == 1 and f"{base} {said[0]}" in known:
        return f"{base} {said[0]}"
    return label


# The request's object: a verb asking for a target, then determiners. A label counts as named only there:
# elsewhere in a question ("the gland on top of the left kidney") it describes where the target is.
_REQUEST = re.compile(r" (?:segment|outline|find|show(?: me)?|mark|delineate|contour|locate|highlight|identify|"
                      r"draw|trace|label|annotate|detect|where (?:is|are)|is there|are there)"
                      r"(?: (?:the|a|an|both|all|any|every|each))* ")
_ALSO = re.compile(r" (?:and|or|as well as|plus)(?: (?:the|a|an|both|all))* ")
# Nouns that continue a phrase: "the heart chamber that ..." names a part of the heart, not the heart.
_CONTINUING = frozenset("chamber chambers wall walls muscle muscles tube vein veins artery arteries vessel vessels "
                        "region part parts area areas gland glands lobe lobes bone bones structure structures rim "
                        "core lesion lesions sac cavity duct ducts tissue surface border edge lining".split())


def _named(words: str) -> LabelChoice | None:
    """A known spelling that is the request's object (or the whole query), longest spelling first."""
    starts = [match.end() - 1 for match in _REQUEST.finditer(words)]
    if not _REQUEST.search(words):
        starts = [0]  # no request verb: the query may be just the target's name ("left kidney")
    spellings = sorted(label_spellings().items(), key=lambda item: -len(item[0]))
    found: list[tuple[str, str]] = []
    while starts:
        start = starts.pop(0)
        for spelling, label in spellings:
            if words.startswith(f" {spelling} ", start):
                end = start + len(spelling) + 1
                rest = words[end + 1:].split()
                if not rest or rest[0] not in _CONTINUING:
                    found.append((spelling, label))
                    more = _ALSO.match(words, end)  # "the liver and the spleen": a second object
                    if more:
                        starts.append(more.end() - 1)
                break
    labels = sorted({_with_side(label, words) for _, label in found})
    if not labels:
        return None
    if len(labels) > 1:
        return LabelChoice(None, "no match", note=f"the query names several targets ({', '.join(labels)})")
    return LabelChoice(labels[0], "named in the query", matched=found[0][0])


def label_from_query(query: str, encoder: Callable[[], Callable[[list[str]], np.ndarray]] | None = None,
                     threshold: float = SIMILARITY_THRESHOLD) -> LabelChoice:
    """The label a query asks for (see the module docstring).

    `encoder` gives the text encoder (texts -> unit vectors, e.g.
    `shared_query_encoder`); it is called only when no label is named, and
    without it only named labels are found.
    """
    words = _words(query)
    named = _named(words)
    if named is not None or encoder is None:
        return named or LabelChoice(None, "no match", note="no known target is named in the query")
    encode = encoder()
    descriptions = label_descriptions()
    texts = [text for lines in descriptions.values() for text in lines]
    owners = [label for label, lines in descriptions.items() for _ in lines]
    vectors = encode(texts + [query])
    similarities = vectors[:-1] @ vectors[-1]
    best = int(np.argmax(similarities))
    similarity = round(float(similarities[best]), 4)
    if similarity < threshold:
        return LabelChoice(None, "no match", texts[best], similarity, threshold,
                           note=f"no known target is named, and the nearest description ({owners[best]}) is below "
                                "the similarity threshold")
    return LabelChoice(_with_side(owners[best], words), "query encoder", texts[best], similarity, threshold)


def choose_label(label: str | None, query: str,
                 encoder: Callable[[], Callable[[list[str]], np.ndarray]] | None = None) -> LabelChoice:
    """The label the user gave, else the one the query asks for (`label_from_query`)."""
    if label and label.strip():
        return LabelChoice(label.strip(), "given")
    return label_from_query(query, encoder)
