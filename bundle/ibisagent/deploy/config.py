"""What a deployment is told to do: the targets (label + query) and the series selection rules.

Both are files a site edits without touching code: targets in YAML, the
selection rules in the MONAI Deploy SDK's own JSON format
(`DICOMSeriesSelectorOperator`). They are checked when read, before any
model loads, so a typo ends the run at once with the file and entry named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["DEFAULT_RULES", "DEFAULT_TARGETS", "DeployConfigError", "Target", "load_rules", "load_targets"]

DEFAULT_TARGETS = Path(str(resources.files(__package__).joinpath("targets.yaml")))
DEFAULT_RULES = Path(str(resources.files(__package__).joinpath("rules.json")))


class DeployConfigError(ValueError):
    """A targets or rules file that cannot be used as it is."""


@dataclass(frozen=True)
class Target:
    label: str  # the SEG segment's label and codes
    query: str  # what the agent is asked


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DeployConfigError(f"{what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DeployConfigError(f"{what} file {path} cannot be read: {type(error).__name__}") from None


def load_targets(path: str | Path | None = None) -> list[Target]:
    """`targets: [{label, query}, ...]`; labels must be distinct (one segment each)."""
    path = Path(path) if path else DEFAULT_TARGETS
    try:
        data = yaml.safe_load(_read(path, "targets"))
    except yaml.YAMLError as error:
        raise DeployConfigError(f"targets file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    entries = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DeployConfigError(f"targets file {path}: expected 'targets:' with a list of {{label, query}} entries")
    targets = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) != {"label", "query"}:
            raise DeployConfigError(f"targets file {path}, entry {number}: expected exactly 'label' and 'query'")
        label, query = (str(entry[key] or "").strip() for key in ("label", "query"))
        if not label or not query:
            raise DeployConfigError(f"targets file {path}, entry {number}: 'label' and 'query' must not be empty")
        targets.append(Target(label, query))
    labels = [t.label.lower() for t in targets]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise DeployConfigError(f"targets file {path}: label(s) {', '.join(repeated)} appear more than once")
    return targets


def load_rules(path: str | Path | None = None) -> str:
    """The selection rules as the JSON text the SDK's selector takes, checked for its shape."""
    path = Path(path) if path else DEFAULT_RULES
    text = _read(path, "rules")
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as error:
        raise DeployConfigError(f"rules file {path} is not valid JSON: {error}") from None
    selections = rules.get("selections") if isinstance(rules, dict) else None
    if not isinstance(selections, list) or not selections:
        raise DeployConfigError(f"rules file {path}: expected {{\"selections\": [{{\"name\", \"conditions\"}}, ...]}}")
    for number, selection in enumerate(selections, 1):
        if not isinstance(selection, dict) or not isinstance(selection.get("conditions"), dict) \
                or not selection["conditions"]:
            raise DeployConfigError(f"rules file {path}, selection {number}: needs a non-empty 'conditions' mapping")
    return text
