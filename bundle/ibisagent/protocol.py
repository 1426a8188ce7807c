"""The IBISAgent action language: `<think>`, `<action>`, optional `<answer>`.

Two readers live here. `check_strict` is the exact format the GRPO format
reward scores. `parse_response` is what the agent uses at run time: it
recovers whatever can be trusted from a model's text and lists every problem
it saw, so a malformed answer becomes data, never an exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "Action",
    "ActionKind",
    "Issue",
    "ParsedResponse",
    "ProtocolError",
    "check_strict",
    "format_response",
    "parse_action",
    "parse_response",
    "protocol_tag",
]

TAGS = ("think", "action", "answer")


class ActionKind(str, Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    TERMINATE = "terminate"


class ProtocolError(ValueError):
    """An action or response that cannot be built or trusted."""

    def __init__(self, issues: list[Issue] | Issue):
        self.issues = [issues] if isinstance(issues, Issue) else list(issues)
        super().__init__("; ".join(issue.message for issue in self.issues))


@dataclass(frozen=True)
class Issue:
    """One problem found in a model's answer. `fatal` means no action was taken from it."""

    code: str
    message: str
    fatal: bool = True


@dataclass(frozen=True)
class Action:
    """A click at normalised image coordinates (x right, y down, both in [0, 1]) or Terminate."""

    kind: ActionKind
    x: float | None = None
    y: float | None = None

    def __post_init__(self) -> None:
        if self.kind is ActionKind.TERMINATE:
            if self.x is not None or self.y is not None:
                raise ProtocolError(Issue("terminate_with_point", "Terminate takes no coordinates"))
            return
        issue = _coordinate_issue(self.x, self.y)
        if issue is not None:
            raise ProtocolError(issue)

    @classmethod
    def positive(cls, x: float, y: float) -> Action:
        return cls(ActionKind.POSITIVE, float(x), float(y))

    @classmethod
    def negative(cls, x: float, y: float) -> Action:
        return cls(ActionKind.NEGATIVE, float(x), float(y))

    @classmethod
    def terminate(cls) -> Action:
        return cls(ActionKind.TERMINATE)

    @property
    def is_click(self) -> bool:
        return self.kind is not ActionKind.TERMINATE

    def to_text(self) -> str:
        """The canonical text, coordinates with four decimals."""
        if self.kind is ActionKind.TERMINATE:
            return "Terminate"
        word = "Positive" if self.kind is ActionKind.POSITIVE else "Negative"
        return f"{word} Point ({self.x:.4f}, {self.y:.4f})"

    def same_as(self, other: Action | None) -> bool:
        """Equal as printed: two clicks that print alike are the same action for the repeat rule."""
        return other is not None and self.to_text() == other.to_text()


@dataclass(frozen=True)
class ParsedResponse:
    raw: str
    think: str | None
    action: Action | None
    answer: str | None
    issues: tuple[Issue, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when an action could be taken from the text (warnings allowed)."""
        return self.action is not None

    @property
    def fatal_issues(self) -> tuple[Issue, ...]:
        return tuple(issue for issue in self.issues if issue.fatal)


def protocol_tag(text: str) -> str | None:
    """The first protocol tag (`<think>`, `</action>`, ...) in a text, or None."""
    found = _ANY_TAG.search(text)
    return found.group(0) if found else None


def format_response(action: Action, think: str, answer: str | None = None) -> str:
    """Render a response in the strict format. An answer is only allowed with Terminate; a tag inside the
    think or answer text would change what readers see, so it is refused."""
    if not think.strip():
        raise ProtocolError(Issue("empty_think", "the <think> text is empty"))
    if answer is not None and action.kind is not ActionKind.TERMINATE:
        raise ProtocolError(Issue("answer_without_terminate", "<answer> is only allowed with Terminate"))
    if answer is not None and not answer.strip():
        raise ProtocolError(Issue("empty_answer", "the <answer> text is empty (pass None for no answer)"))
    for name, text in (("think", think), ("answer", answer or "")):
        tag = protocol_tag(text)
        if tag is not None:
            raise ProtocolError(Issue("tag_in_text", f"the {name} text contains the tag {tag!r}"))
    text = f"<think>{think.strip()}</think>\n<action>{action.to_text()}</action>"
    if answer is not None:
        text += f"\n<answer>{answer.strip()}</answer>"
    return text


_ANY_TAG = re.compile(r"</?(?:think|action|answer)>", re.IGNORECASE)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"
_CLICK = re.compile(
    rf"^\s*(positive|negative)\s+point\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*\.?\s*$", re.IGNORECASE
)
_TERMINATE = re.compile(r"^\s*terminat(?:e|ion)\s*\.?\s*$", re.IGNORECASE)
_CLICK_ANYWHERE = re.compile(rf"(positive|negative)\s+point\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)", re.IGNORECASE)
_TERMINATE_ANYWHERE = re.compile(r"\bterminat(?:e|ion)\b", re.IGNORECASE)
_STRICT_CLICK = re.compile(r"^(Positive|Negative) Point \((\d\.\d{4}), (\d\.\d{4})\)$")
_STRICT_RESPONSE = re.compile(
    r"^<think>(?P<think>.*?)</think>\s*<action>(?P<action>.*?)</action>(?:\s*<answer>(?P<answer>.*?)</answer>)?$",
    re.DOTALL,
)


def _coordinate_issue(x: float | None, y: float | None) -> Issue | None:
    if x is None or y is None:
        return Issue("missing_coordinate", "a click needs both x and y")
    if not (math.isfinite(x) and math.isfinite(y)):
        return Issue("coordinate_not_finite", f"coordinates must be finite numbers, got ({x}, {y})")
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        return Issue(
            "coordinate_out_of_range",
            f"coordinates must be normalised to [0, 1], got ({x:g}, {y:g})",
        )
    return None


def parse_action(text: str) -> Action:
    """Parse one action text (the content of `<action>`), tolerant of case and spacing."""
    click = _CLICK.match(text)
    if click:
        word, x_text, y_text = click.groups()
        x, y = float(x_text), float(y_text)
        issue = _coordinate_issue(x, y)
        if issue is not None:
            raise ProtocolError(issue)
        kind = ActionKind.POSITIVE if word.lower() == "positive" else ActionKind.NEGATIVE
        return Action(kind, x, y)
    if _TERMINATE.match(text):
        return Action.terminate()
    shown = text.strip()[:80]
    raise ProtocolError(
        Issue(
            "unknown_action",
            f"unknown action {shown!r}: expected 'Positive Point (x, y)', 'Negative Point (x, y)' or 'Terminate'",
        )
    )


def _tag_spans(text: str, tag: str) -> tuple[list[str], list[Issue]]:
    """Contents of every complete `<tag>...</tag>`, plus issues for unbalanced tags."""
    contents = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL | re.IGNORECASE)
    opens = len(re.findall(rf"<{tag}>", text, re.IGNORECASE))
    closes = len(re.findall(rf"</{tag}>", text, re.IGNORECASE))
    issues = []
    if opens != closes or opens != len(contents):
        issues.append(Issue(f"unbalanced_{tag}", f"<{tag}> opened {opens} and closed {closes} times", fatal=False))
    if len(contents) > 1:
        issues.append(Issue(f"repeated_{tag}", f"<{tag}> appears {len(contents)} times", fatal=False))
    return contents, issues


def parse_response(text: object) -> ParsedResponse:
    """Recover think, action and answer from a model's text; never raises."""
    if not isinstance(text, str):
        return ParsedResponse("", None, None, None, (Issue("not_text", f"expected text, got {type(text).__name__}"),))
    if not text.strip():
        return ParsedResponse(text, None, None, None, (Issue("empty", "the response is empty"),))

    issues: list[Issue] = []
    thinks, think_issues = _tag_spans(text, "think")
    actions, action_issues = _tag_spans(text, "action")
    answers, answer_issues = _tag_spans(text, "answer")
    issues += think_issues + action_issues + answer_issues

    think = thinks[0].strip() if thinks else None
    if think is None:
        issues.append(Issue("missing_think", "no <think>...</think> block", fatal=False))
    answer = answers[0].strip() if answers else None

    action: Action | None = None
    candidates = actions
    if not candidates:
        # The model may have dropped the tags; look for exactly one action phrase outside <think>.
        outside = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL | re.IGNORECASE)
        found = [m.group(0) for m in _CLICK_ANYWHERE.finditer(outside)]
        found += [m.group(0) for m in _TERMINATE_ANYWHERE.finditer(outside)]
        if found:
            issues.append(Issue("missing_action_tag", "the action is not inside <action>...</action>", fatal=False))
            candidates = found
        else:
            issues.append(Issue("missing_action", "no <action>...</action> block and no action phrase"))

    parsed: list[Action] = []
    for candidate in candidates:
        try:
            parsed.append(parse_action(candidate))
        except ProtocolError as error:
            issues.extend(error.issues)
    if candidates and len(parsed) == len(candidates):
        distinct = {a.to_text() for a in parsed}
        if len(distinct) > 1:
            issues.append(Issue("multiple_actions", f"{len(distinct)} different actions: {sorted(distinct)}"))
        else:
            action = parsed[0]

    if answer is not None and action is not None and action.is_click:
        issues.append(Issue("answer_without_terminate", "<answer> is only meaningful with Terminate", fatal=False))
    return ParsedResponse(text, think, action, answer, tuple(issues))


def check_strict(text: str) -> list[Issue]:
    """Problems against the exact format the format reward accepts; an empty list means valid.

    Exact: `<think>` (non-empty), `<action>` with canonical spelling and
    four-decimal coordinates in [0, 1], optional `<answer>` only after
    Terminate, each tag once, nothing else outside the tags.
    """
    if not isinstance(text, str) or not text.strip():
        return [Issue("empty", "the response is empty")]
    issues: list[Issue] = []
    for tag in TAGS:
        count = max(len(re.findall(rf"<{tag}>", text)), len(re.findall(rf"</{tag}>", text)))
        if count > 1:
            issues.append(Issue(f"repeated_{tag}", f"<{tag}> or </{tag}> appears {count} times"))
    match = _STRICT_RESPONSE.match(text.strip())
    if match is None:
        issues.append(Issue("layout", "expected <think>...</think><action>...</action>[<answer>...</answer>] and nothing else"))
        return issues
    if not match["think"].strip():
        issues.append(Issue("empty_think", "the <think> text is empty"))
    action_text = match["action"]
    click = _STRICT_CLICK.match(action_text)
    is_terminate = action_text in ("Terminate", "Termination")
    if click:
        issue = _coordinate_issue(float(click[2]), float(click[3]))
        if issue is not None:
            issues.append(issue)
    elif not is_terminate:
        issues.append(Issue("action_spelling", f"action {action_text[:80]!r} is not in the canonical spelling"))
    if match["answer"] is not None:
        if not is_terminate:
            issues.append(Issue("answer_without_terminate", "<answer> is only allowed with Terminate"))
        elif not match["answer"].strip():
            issues.append(Issue("empty_answer", "the <answer> text is empty"))
    return issues
