"""Property-based fuzzing (hypothesis) of the action language and the prompt rendering.

Every property runs on generated inputs with a fixed seed; a property that
fails is shrunk by hypothesis to its smallest example, which the report shows.
The properties: no exception escapes the readers (any text, any object), the
tolerant parser agrees with the strict check wherever the strict check
accepts, what we format is what both read back, and no query or prompt file
can inject chat structure or crash rendering.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

from ..prompting import PromptSet, clean_query, load_prompts
from ..protocol import Action, ActionKind, ProtocolError, check_strict, format_response, parse_action, parse_response
from ..serving.triton_policy import IMAGE_PLACEHOLDER, render_qwen_chat

__all__ = ["PROPERTIES", "PropertyResult", "fuzz_protocol"]

# Pieces of the protocol, so that generated texts reach the parser's branches, not only its first check.
_FRAGMENTS = ["<think>", "</think>", "<action>", "</action>", "<answer>", "</answer>", "<THINK>", "</Action>",
              "Positive Point", "Negative Point", "positive point", "Terminate", "Termination", "terminate.",
              "(", ")", ",", " ", "\n", "\t", "0.5", "1.0000", "0.0000", "-0.1", "1e-3", "nan", "inf", "1e309",
              ".5", "+0.25", "2", "0.12345", "Point", "\x00", "\u00a0", "\u2028", "<|im_end|>"]
_fragment_text = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=6)), max_size=30).map("".join)
_any_text = st.one_of(st.text(), _fragment_text, st.binary().map(lambda b: b.decode("utf-8", "replace")))
_unit = st.floats(0.0, 1.0, allow_nan=False)
_action = st.one_of(st.just(Action.terminate()), st.builds(Action.positive, _unit, _unit),
                    st.builds(Action.negative, _unit, _unit))
_prose = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200)


@dataclass(frozen=True)
class PropertyResult:
    name: str
    examples: int  # inputs tried (shrinking included)
    failure: str | None  # the smallest failing example and its error, or None

    @property
    def passed(self) -> bool:
        return self.failure is None


def _never_raises_on_text(text: str) -> None:
    parsed = parse_response(text)
    assert parsed.raw == text
    check_strict(text)


def _never_raises_on_objects(value: object) -> None:
    parsed = parse_response(value)
    assert parsed.action is None and parsed.issues
    assert check_strict(value)  # type: ignore[arg-type]


def _strict_valid_is_read_alike(text: str) -> None:
    """Where the strict check accepts, the tolerant parser takes the same action, think and answer, no fatal issue."""
    if check_strict(text):
        return
    parsed = parse_response(text)
    assert parsed.action is not None and not parsed.fatal_issues, parsed.issues
    inner = text.split("<action>", 1)[1].split("</action>", 1)[0]
    assert parsed.action.to_text() == ("Terminate" if inner == "Termination" else inner)
    assert parsed.think == text.split("<think>", 1)[1].split("</think>", 1)[0].strip()


def _strict_shaped(draw_think: str, action: Action, answer: str | None) -> str:
    text = f"<think>{draw_think}</think><action>{action.to_text()}</action>"
    return text + (f"<answer>{answer}</answer>" if answer is not None else "")


_strict_candidates = st.builds(_strict_shaped, _any_text, _action, st.one_of(st.none(), _any_text))


def _formatted_round_trip(case: tuple[Action, str, str | None]) -> None:
    """format_response either refuses (ProtocolError) or writes what both readers read back as written."""
    action, think, answer = case
    try:
        text = format_response(action, think, answer if action.kind is ActionKind.TERMINATE else None)
    except ProtocolError:
        return
    assert check_strict(text) == [], (text, check_strict(text))
    parsed = parse_response(text)
    assert parsed.action is not None and parsed.action.same_as(action) and not parsed.issues, parsed.issues
    assert parsed.think == think.strip()


def _action_from_any_numbers(case: tuple[float, float]) -> None:
    x, y = case
    try:
        action = Action.positive(x, y)
    except ProtocolError:
        return
    assert 0.0 <= action.x <= 1.0 and 0.0 <= action.y <= 1.0
    assert parse_action(action.to_text()).same_as(action)


def _respelled(case: tuple[Action, int, str, str]) -> None:
    """Case, spacing and a trailing full stop do not change the action the tolerant parser reads."""
    action, flips, space, stop = case
    text = "".join(c.upper() if (i * 7 + flips) % 3 == 0 else c.lower() for i, c in enumerate(action.to_text()))
    text = space + text.replace(" ", space or " ").replace("(", f"{space}(") + stop
    assert parse_action(text).same_as(action)


def _query_renders_without_structure(query: str) -> None:
    """Any query is refused (ValueError) or rendered into a chat with exactly the template's structure."""
    try:
        cleaned = clean_query(query)
    except ValueError:
        return
    prompts = load_prompts()
    for turn in (0, 1):
        text = prompts.user_text(cleaned, turn)
        messages = [{"role": "system", "content": [{"type": "text", "text": prompts.system}]},
                    {"role": "user", "content": [{"type": "image", "image": [[[0, 0, 0]]]}, {"type": "text", "text": text}]}]
        rendered, images = render_qwen_chat(messages)
        assert len(images) == 1 and rendered.count(IMAGE_PLACEHOLDER) == 1
        assert rendered.count("<|im_start|>") == 3 and rendered.count("<|im_end|>") == 2


def _prompt_file_loads_or_refuses(content: str) -> None:
    """Any prompt file gives a PromptSet that renders every query, or a ValueError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.yaml"
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            prompts = load_prompts(path)
        except ValueError:
            return
    assert isinstance(prompts, PromptSet)
    for query in ("Segment the liver.", "{query}", "{0}", "x" * 2000):
        for template, turn in ((prompts.first_turn, 0), (prompts.refinement_turn, 1)):
            text = prompts.user_text(query, turn)  # the query itself, in place of each placeholder, nothing else
            assert query in text and len(text) <= len(template) + template.count("{query}") * len(query), text[:80]


_yaml_text = st.one_of(
    _any_text,
    st.builds(lambda s, f, r: f"system: {s!r}\nfirst_turn: {f!r}\nrefinement_turn: {r!r}\n",
              _any_text, st.one_of(_any_text, st.sampled_from(["{query}", "{query!r}", "{query:>9}", "{query.upper}",
                                                                "{query[0]}", "{}", "{0}", "{query}{", "{{query}}",
                                                                "{query:>999999999}", "<|im_start|>{query}"])),
              st.sampled_from(["{query}", "Request: {query}", "{other}", "{query.__class__}"])),
)

# name -> (strategy, property); each name says what holds.
PROPERTIES: dict[str, tuple[st.SearchStrategy, Callable[[object], None]]] = {
    "parse_response and check_strict never raise on any text": (_any_text, _never_raises_on_text),
    "parse_response and check_strict refuse any non-text object": (
        st.one_of(st.binary(), st.none(), st.integers(), st.floats(), st.lists(st.text(), max_size=3)),
        _never_raises_on_objects),
    "where check_strict accepts, parse_response reads the same action and think": (
        st.one_of(_strict_candidates, _any_text), _strict_valid_is_read_alike),
    "format_response refuses or round-trips through both readers": (
        st.tuples(_action, _any_text, st.one_of(st.none(), _any_text)), _formatted_round_trip),
    "Action from any pair of floats is valid or a ProtocolError": (
        st.tuples(st.floats(), st.floats()), _action_from_any_numbers),
    "case, spacing and a full stop do not change a parsed action": (
        st.tuples(_action, st.integers(0, 2), st.sampled_from(["", " ", "  ", "\t"]), st.sampled_from(["", ".", " ."])),
        _respelled),
    "any query is refused or rendered with the template's chat structure only": (
        st.one_of(_any_text, _prose), _query_renders_without_structure),
    "any prompt file loads into prompts that render, or is refused": (_yaml_text, _prompt_file_loads_or_refuses),
}


def _run_property(name: str, strategy: st.SearchStrategy, check: Callable[[object], None], examples: int,
                  seed: int) -> PropertyResult:
    count = 0

    @fixed_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False, print_blob=False,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value: object) -> None:
        nonlocal count
        count += 1
        check(value)

    try:
        run()
    except Exception as error:  # the shrunk example's failure, re-raised by hypothesis
        return PropertyResult(name, count, _describe(error))
    return PropertyResult(name, count, None)


def _describe(error: BaseException) -> str:
    """`Error: message (the failing example)` of the first failure hypothesis found, in one line."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    example = next((note for note in getattr(error, "__notes__", []) if "test case" in note or "example" in note), "")
    example = " ".join(example.replace("run(", "").replace("value=", "").split())[:300]
    return f"{type(error).__name__}: {detail} ({example})"


def fuzz_protocol(examples: int = 200, seed: int = 22) -> list[PropertyResult]:
    """Every property on `examples` generated inputs (seeded); the results in PROPERTIES order."""
    return [_run_property(name, strategy, check, examples, seed) for name, (strategy, check) in PROPERTIES.items()]
