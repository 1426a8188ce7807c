import numpy as np
import pytest

from ibisagent.agent import Agent, RunStatus
from ibisagent.metrics import iou
from ibisagent.policies import Policy, build_policy
from ibisagent.policies.scripted import ScriptedPolicy

CLICK = "<think>t</think><action>Positive Point (0.2304, 0.4550)</action>"
OTHER = "<think>t</think><action>Negative Point (0.6500, 0.5000)</action>"
STOP = "<think>done</think><action>Terminate</action><answer>liver</answer>"


class RecordingPolicy(ScriptedPolicy):
    def __init__(self, responses):
        super().__init__(responses)
        self.seen = []

    def act(self, observation, messages):
        self.seen.append((observation, messages))
        return super().act(observation, messages)


class ExplodingPolicy(Policy):
    def act(self, observation, messages):
        raise ConnectionError("server 127.0.0.1:9 refused")


class BrokenTool:
    name = "broken"

    def __init__(self, tool, fail_on="predict"):
        self.tool, self.fail_on = tool, fail_on

    def encode(self, image):
        if self.fail_on == "encode":
            raise RuntimeError("encoder crashed")
        return self.tool.encode(image)

    def predict(self, *args, **kwargs):
        raise RuntimeError("decoder crashed")


@pytest.fixture(scope="module")
def demo_embedding(lite_tool, demo_image):
    return lite_tool.encode(demo_image)


def run(lite_tool, demo_image, demo_embedding, responses, **options):
    policy = RecordingPolicy(responses)
    result = Agent(lite_tool, policy, **options).run(demo_image, "Segment the liver.", embedding=demo_embedding)
    return result, policy


def test_terminate_stops_and_keeps_the_answer(lite_tool, demo_image, demo_embedding):
    result, policy = run(lite_tool, demo_image, demo_embedding, [CLICK, OTHER, STOP])
    assert result.status is RunStatus.TERMINATED and result.answer == "liver"
    assert len(result.turns) == 3 and len(result.clicks) == 2
    assert result.turns[0].predicted_iou is not None and result.turns[2].predicted_iou is None
    assert result.mask.shape == demo_image.shape[:2]
    # first turn shows the raw image, later turns the overlay
    assert np.array_equal(policy.seen[0][0].view, demo_image)
    assert not np.array_equal(policy.seen[1][0].view, demo_image)


def test_max_turns(lite_tool, demo_image, demo_embedding):
    clicks = [f"<think>t</think><action>Positive Point (0.{i}000, 0.4550)</action>" for i in range(1, 9)]
    result, _ = run(lite_tool, demo_image, demo_embedding, clicks, max_turns=4)
    assert result.status is RunStatus.MAX_TURNS and len(result.turns) == 4 and len(result.clicks) == 4


def test_same_action_three_times_stops(lite_tool, demo_image, demo_embedding):
    result, _ = run(lite_tool, demo_image, demo_embedding, [CLICK, CLICK, CLICK, STOP])
    assert result.status is RunStatus.REPEATED_ACTION
    assert len(result.turns) == 3 and len(result.clicks) == 2  # the third repeat is not executed
    assert "repeated_action" in result.turns[-1].issues[-1]


def test_unparseable_answers_in_a_row_stop(lite_tool, demo_image, demo_embedding):
    result, _ = run(lite_tool, demo_image, demo_embedding, [CLICK, "no idea", "", "<action>Jump</action>", STOP])
    assert result.status is RunStatus.INVALID_OUTPUT and len(result.turns) == 4
    assert result.turns[1].action is None and result.turns[1].issues
    # a valid answer in between resets the count
    result, _ = run(lite_tool, demo_image, demo_embedding, ["junk", "junk", CLICK, "junk", "junk", STOP])
    assert result.status is RunStatus.TERMINATED


def test_policy_and_tool_failures_are_statuses(lite_tool, demo_image):
    result = Agent(lite_tool, ExplodingPolicy()).run(demo_image, "Segment the liver.")
    assert result.status is RunStatus.POLICY_ERROR and "refused" in result.error
    result = Agent(BrokenTool(lite_tool), ScriptedPolicy([CLICK])).run(demo_image, "liver")
    assert result.status is RunStatus.TOOL_ERROR and not result.clicks and not result.mask.any()
    result = Agent(BrokenTool(lite_tool, "encode"), ScriptedPolicy([CLICK])).run(demo_image, "liver")
    assert result.status is RunStatus.TOOL_ERROR and "encoder crashed" in result.error
    with pytest.raises(ValueError, match="query is empty"):
        Agent(lite_tool, ScriptedPolicy([])).run(demo_image, "  ")


def test_chat_history_on_and_off(lite_tool, demo_image, demo_embedding):
    _, policy = run(lite_tool, demo_image, demo_embedding, [CLICK, OTHER, STOP])
    assert [len(messages) for _, messages in policy.seen] == [2, 2, 2]
    _, policy = run(lite_tool, demo_image, demo_embedding, [CLICK, OTHER, STOP], history=True)
    assert [len(messages) for _, messages in policy.seen] == [2, 4, 6]
    last = policy.seen[-1][1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last[2]["content"][0]["text"] == CLICK


def test_trajectory_is_json_ready(lite_tool, demo_image, demo_embedding):
    import json

    result, _ = run(lite_tool, demo_image, demo_embedding, [CLICK, STOP])
    record = json.loads(json.dumps(result.trajectory()))
    assert record["status"] == "terminated" and record["clicks"][0]["positive"] is True
    assert set(record["turns"][0]) >= {"raw_text", "think", "action", "predicted_iou", "mask_area",
                                        "policy_seconds", "tool_seconds"}


def test_oracle_on_the_shipped_example(lite_tool, demo_image, demo_reference):
    """The full loop on pydicom's abdominal MR with the oracle (base LiteMedSAM: clicks are weak)."""
    policy = build_policy("oracle", ground_truth=demo_reference)
    result = Agent(lite_tool, policy).run(demo_image, "Segment the liver.")
    assert result.status.completed and result.clicks
    assert result.clicks[0].positive and demo_reference[int(result.clicks[0].y * 300), int(result.clicks[0].x * 484)]


def test_oracle_on_real_pairs(lite_tool, real_pairs):
    """Real images and masks: the oracle's first click lands in the target, the run ends cleanly."""
    from PIL import Image

    for pair in real_pairs[::3]:
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        target = np.asarray(Image.open(pair.mask).convert("L")) > 127
        result = Agent(lite_tool, build_policy("oracle", ground_truth=target), max_turns=5).run(image, f"Segment the {pair.label}.")
        assert result.status.completed, (pair, result.error)
        first = result.clicks[0]
        assert first.positive and target[int(first.y * target.shape[0]), int(first.x * target.shape[1])]
        assert 0.0 <= iou(result.mask, target) <= 1.0


def test_a_run_continues_from_a_start_state(lite_tool, demo_image, demo_embedding):
    """Two turns, then two more from the state they left, give the pixels of one four-turn run."""
    from ibisagent.agent import StartState

    third = "<think>t</think><action>Positive Point (0.3000, 0.5000)</action>"
    whole, _ = run(lite_tool, demo_image, demo_embedding, [CLICK, OTHER, third, STOP])
    first, _ = run(lite_tool, demo_image, demo_embedding, [CLICK, OTHER], max_turns=2)
    assert first.status is RunStatus.MAX_TURNS and first.low_res_logits is not None
    start = StartState(tuple(first.clicks), first.mask, first.low_res_logits,
                       tuple(t.predicted_iou for t in first.turns), turn=len(first.turns))
    policy = RecordingPolicy([third, STOP])
    rest = Agent(lite_tool, policy).run(demo_image, "Segment the liver.", embedding=demo_embedding, start=start)
    assert rest.status is RunStatus.TERMINATED and rest.clicks == whole.clicks
    assert np.array_equal(rest.mask, whole.mask) and np.array_equal(rest.low_res_logits, whole.low_res_logits)
    assert [t.index for t in rest.turns] == [2, 3]
    seen = policy.seen[0][0]
    assert seen.turn == 2 and len(seen.clicks) == 2 and np.array_equal(seen.mask, first.mask)
    assert not np.array_equal(seen.view, demo_image)  # the overlay of the mask it continues from
    assert start.mask is not rest.mask and np.array_equal(start.mask, first.mask)  # the caller's mask is kept
    with pytest.raises(ValueError, match="start mask"):
        Agent(lite_tool, policy).run(demo_image, "liver", embedding=demo_embedding,
                                     start=StartState((), np.zeros((3, 3), bool), None))


class SelfAssessingPolicy(ScriptedPolicy):
    """A scripted policy with its own confidence in the final mask (or one that fails to give it)."""

    def __init__(self, responses, value=None, fail=False):
        super().__init__(responses)
        self.value, self.fail, self.final = value, fail, None

    def confidence(self, observation):
        from ibisagent.confidence import MaskConfidence

        self.final = observation
        if self.fail:
            raise RuntimeError("head missing")
        return MaskConfidence(self.value, 0.5, "scripted")


def test_every_completed_run_carries_a_confidence_and_the_unreliable_flag(lite_tool, demo_image, demo_embedding):
    import json

    from ibisagent.confidence import TOOL_CONFIDENCE_THRESHOLD

    result, _ = run(lite_tool, demo_image, demo_embedding, [CLICK, OTHER, STOP])
    assert result.confidence.source == "tool"  # a policy without an estimate of its own
    assert result.confidence.value == pytest.approx(result.turns[1].predicted_iou, abs=1e-4)
    assert result.unreliable is (result.confidence.value < TOOL_CONFIDENCE_THRESHOLD)
    record = json.loads(json.dumps(result.trajectory()))
    assert record["unreliable"] is result.unreliable and record["confidence"]["source"] == "tool"

    unsure = SelfAssessingPolicy([CLICK, STOP], value=0.2)
    result = Agent(lite_tool, unsure).run(demo_image, "Segment the liver.", embedding=demo_embedding)
    assert result.status is RunStatus.TERMINATED and result.unreliable and result.trajectory()["unreliable"]
    assert result.trajectory()["confidence"] == {"value": 0.2, "threshold": 0.5, "source": "scripted",
                                                 "unreliable": True, "features": {}}
    # The policy judged the final state: the mask and clicks the run returns, the turn after the last.
    assert np.array_equal(unsure.final.mask, result.mask) and unsure.final.clicks == tuple(result.clicks)
    assert unsure.final.turn == 2 and unsure.final.embedding is demo_embedding
    sure = Agent(lite_tool, SelfAssessingPolicy([CLICK, STOP], value=0.9)).run(demo_image, "liver",
                                                                             embedding=demo_embedding)
    assert not sure.unreliable and not sure.trajectory()["unreliable"]

    # A policy failing to judge its mask costs nothing but is said: the tool's estimate stands in.
    failing = Agent(lite_tool, SelfAssessingPolicy([CLICK, STOP], fail=True)).run(demo_image, "liver",
                                                                                embedding=demo_embedding)
    assert failing.status is RunStatus.TERMINATED and failing.confidence.source == "tool"
    assert any("head missing" in issue for issue in failing.turns[-1].issues)
    # No click, no mask: nothing to trust.
    empty = Agent(lite_tool, ScriptedPolicy([STOP])).run(demo_image, "liver", embedding=demo_embedding)
    assert empty.confidence.value == 0.0 and empty.unreliable
    # A run that failed has no mask to judge.
    failed = Agent(lite_tool, ExplodingPolicy()).run(demo_image, "liver", embedding=demo_embedding)
    assert failed.confidence is None and not failed.unreliable and failed.trajectory()["confidence"] is None


def test_confidence_models_are_checked_when_built_and_bound_to_their_checkpoint(tmp_path):
    import json

    from ibisagent.confidence import ConfidenceModel, MaskConfidence, calibration_path

    with pytest.raises(ValueError, match="must lie in"):
        MaskConfidence(1.2, 0.5, "tool")
    with pytest.raises(ValueError, match="one transform and one coefficient"):
        ConfidenceModel(("tool_iou",), ("identity", "log"), (1.0,), 0.0, 0.5, "x")
    with pytest.raises(ValueError, match="unknown feature transform"):
        ConfidenceModel(("tool_iou",), ("square",), (1.0,), 0.0, 0.5, "x")

    checkpoint = tmp_path / "policy.pt"
    checkpoint.write_bytes(b"weights")
    import hashlib

    model = ConfidenceModel(("tool_iou", "belief_inside"), ("identity", "logit"), (4.0, 1.0), -2.0, 0.5,
                            hashlib.sha256(b"weights").hexdigest())
    path = calibration_path(checkpoint)
    assert path.name == "policy.confidence.json"
    path.write_text(json.dumps(model.to_dict()))
    loaded = ConfidenceModel.load(path, checkpoint)
    good, bad = loaded({"tool_iou": 0.9, "belief_inside": 0.8}), loaded({"tool_iou": 0.9, "belief_inside": 0.01})
    assert good.value > 0.5 > bad.value and bad.unreliable and not good.unreliable  # belief outside the mask
    assert good.value == pytest.approx(1 / (1 + np.exp(-(-2.0 + 3.6 + np.log(0.8 / 0.2)))))
    with pytest.raises(ValueError, match="needs the feature"):
        loaded({"tool_iou": 0.9})
    checkpoint.write_bytes(b"retrained")
    with pytest.raises(ValueError, match="another checkpoint"):
        ConfidenceModel.load(path, checkpoint)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the confidence calibration"):
        ConfidenceModel.load(path, checkpoint)
