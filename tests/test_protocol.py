import math

import pytest

from ibisagent.protocol import Action, ActionKind, ProtocolError, check_strict, format_response, parse_action, parse_response


def codes(parsed):
    return {issue.code for issue in parsed.issues}


def test_format_and_parse_round_trip():
    text = format_response(Action.positive(0.123456, 0.5), "The liver is on the left.")
    assert text == "<think>The liver is on the left.</think>\n<action>Positive Point (0.1235, 0.5000)</action>"
    parsed = parse_response(text)
    assert parsed.ok and parsed.issues == ()
    assert parsed.action == Action.positive(0.1235, 0.5)
    assert parsed.think == "The liver is on the left."
    assert check_strict(text) == []


@pytest.mark.parametrize("spelling", ["Terminate", "Termination", "terminate", " TERMINATE. "])
def test_both_terminate_spellings(spelling):
    parsed = parse_response(f"<think>done</think><action>{spelling}</action><answer>liver</answer>")
    assert parsed.action.kind is ActionKind.TERMINATE
    assert parsed.answer == "liver"


def test_strict_accepts_termination_and_answer():
    assert check_strict("<think>done</think><action>Termination</action><answer>liver</answer>") == []


@pytest.mark.parametrize("text, code", [
    ("", "empty"),
    ("   \n", "empty"),
    ("<think>hmm</think>", "missing_action"),
    ("<think>a</think><action>Jump (0.1, 0.2)</action>", "unknown_action"),
    ("<think>a</think><action>Positive Point (1.2, 0.5)</action>", "coordinate_out_of_range"),
    ("<think>a</think><action>Positive Point (-0.1, 0.5)</action>", "coordinate_out_of_range"),
    ("<think>a</think><action>Positive Point (234, 120)</action>", "coordinate_out_of_range"),
    ("<think>a</think><action>Negative Point (nan, 0.5)</action>", "coordinate_not_finite"),
    ("<think>a</think><action>Negative Point (0.5, inf)</action>", "coordinate_not_finite"),
    ("<think>a</think><action>Positive Point (0.1, 0.2)</action><action>Negative Point (0.3, 0.4)</action>", "multiple_actions"),
    ("<think>a</think><action>Positive Point (0.1 0.2)</action>", "unknown_action"),
    ("<think>a</think><action></action>", "unknown_action"),
])
def test_fatal_errors_give_no_action(text, code):
    parsed = parse_response(text)
    assert parsed.action is None
    assert code in {issue.code for issue in parsed.fatal_issues}
    assert all(issue.message for issue in parsed.issues)


def test_non_text_is_an_issue_not_an_exception():
    parsed = parse_response(None)
    assert parsed.action is None and codes(parsed) == {"not_text"}


@pytest.mark.parametrize("text, code", [
    ("<action>Positive Point (0.1, 0.2)</action>", "missing_think"),
    ("<think>a</think> Positive Point (0.1, 0.2)", "missing_action_tag"),
    ("<think>a</think><think>b</think><action>Terminate</action>", "repeated_think"),
    ("<think>a<action>Terminate</action>", "unbalanced_think"),
    ("<think>a</think><action>Positive Point (0.1, 0.2)</action><answer>x</answer>", "answer_without_terminate"),
    ("<think>a</think><action>Terminate</action><action>Termination</action>", "repeated_action"),
])
def test_recoverable_problems_keep_the_action(text, code):
    parsed = parse_response(text)
    assert parsed.ok, parsed.issues
    assert code in codes(parsed)
    assert code not in {issue.code for issue in parsed.fatal_issues}


def test_tolerant_parser_recovers_sloppy_spacing_and_case():
    parsed = parse_response("<think>x</think><action>  positive point( 0.25 ,0.75 ) </action>")
    assert parsed.action == Action.positive(0.25, 0.75)
    assert check_strict(parsed.raw) != []


@pytest.mark.parametrize("text, code", [
    ("<think>a</think><action>Positive Point (0.1, 0.2)</action>", "action_spelling"),  # two decimals
    ("<think></think><action>Terminate</action>", "empty_think"),
    ("<think>a</think><action>positive point (0.1000, 0.2000)</action>", "action_spelling"),
    ("<think>a</think><action>Positive Point (0.1000, 0.2000)</action><answer>x</answer>", "answer_without_terminate"),
    ("<think>a</think><action>Terminate</action><answer> </answer>", "empty_answer"),
    ("Sure! <think>a</think><action>Terminate</action>", "layout"),
    ("<think>a</think><think>b</think><action>Terminate</action>", "repeated_think"),
    ("<think>a</think><action>Positive Point (1.5000, 0.2000)</action>", "coordinate_out_of_range"),
    ("", "empty"),
])
def test_strict_check_errors(text, code):
    assert code in {issue.code for issue in check_strict(text)}


def test_action_validation_at_construction():
    with pytest.raises(ProtocolError, match="normalised"):
        Action.positive(1.5, 0.2)
    with pytest.raises(ProtocolError, match="finite"):
        Action.negative(math.nan, 0.2)
    with pytest.raises(ProtocolError, match="no coordinates"):
        Action(ActionKind.TERMINATE, 0.1, 0.2)
    with pytest.raises(ProtocolError, match="answer"):
        format_response(Action.positive(0.1, 0.2), "t", answer="x")
    with pytest.raises(ProtocolError, match="empty"):
        format_response(Action.terminate(), "  ")
    with pytest.raises(ProtocolError, match="unknown action"):
        parse_action("Click (0.1, 0.2)")


def test_same_action_compares_printed_text():
    assert Action.positive(0.12341, 0.5).same_as(Action.positive(0.12344, 0.5))
    assert not Action.positive(0.1, 0.5).same_as(Action.negative(0.1, 0.5))
