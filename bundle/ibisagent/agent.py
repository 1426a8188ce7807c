"""The agent loop: policy text -> parse -> tool -> overlay -> next observation.

One run segments one target in one image. The loop never raises for what a
model or server does: every ending is a status on the result, and the
trajectory records each turn (text, parsed action, issues, timings).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Callable

import numpy as np

from .confidence import MaskConfidence, tool_confidence
from .imaging.overlay import overlay_mask
from .policies.base import Message, Observation, Policy
from .prompting import PromptSet, clean_query, load_prompts
from .protocol import Action, ActionKind, parse_response
from .tools.base import Click, ImageEmbedding, SegmentationTool

__all__ = ["Agent", "AgentResult", "RunStatus", "StartState", "Turn", "TURN_LIMIT"]

# The most turns a run may be given. The protocol's budget is 20 (the paper's);
# a click policy that needs more than 100 is lost, and a larger limit only
# lets a looping policy burn time.
TURN_LIMIT = 100


class RunStatus(str, Enum):
    TERMINATED = "terminated"  # the policy said Terminate
    MAX_TURNS = "max_turns"
    REPEATED_ACTION = "repeated_action"  # the same action several times in a row
    INVALID_OUTPUT = "invalid_output"  # several unparseable answers in a row
    POLICY_ERROR = "policy_error"  # the policy raised (e.g. server unreachable)
    TOOL_ERROR = "tool_error"  # the segmentation tool raised

    @property
    def completed(self) -> bool:
        """The run produced a mask the policy stands behind (or as far as the limits let it go)."""
        return self in (RunStatus.TERMINATED, RunStatus.MAX_TURNS, RunStatus.REPEATED_ACTION)


@dataclass
class Turn:
    index: int
    raw_text: str
    think: str | None
    action: str | None  # canonical action text, None when unparseable
    issues: list[str]
    predicted_iou: float | None = None
    mask_area: int | None = None
    policy_seconds: float = 0.0
    tool_seconds: float = 0.0


@dataclass
class AgentResult:
    mask: np.ndarray
    status: RunStatus
    turns: list[Turn]
    clicks: list[Click]
    answer: str | None = None
    error: str | None = None
    encode_seconds: float = 0.0
    low_res_logits: np.ndarray | None = None  # the tool's logits for `mask`: what a continuation starts from
    confidence: MaskConfidence | None = None  # how sure the run is of its final mask; set for completed runs

    @property
    def unreliable(self) -> bool:
        """The final mask's confidence is below its threshold (`confidence.py`)."""
        return self.confidence is not None and self.confidence.unreliable

    def trajectory(self) -> dict:
        """JSON-ready record of the run (no pixels)."""
        return {
            "status": self.status.value,
            "unreliable": self.unreliable,
            "confidence": self.confidence.to_dict() if self.confidence else None,
            "error": self.error,
            "answer": self.answer,
            "encode_seconds": round(self.encode_seconds, 4),
            "final_mask_area": int(self.mask.sum()),
            "clicks": [asdict(click) for click in self.clicks],
            "turns": [asdict(turn) for turn in self.turns],
        }


@dataclass(frozen=True)
class StartState:
    """Where a run continues from instead of from scratch: what earlier turns (or a person) left.

    Mixed initiative: a person's clicks join the agent's, and the agent goes on
    from the mask and low-res logits they produced, at turn `turn`.
    """

    clicks: tuple[Click, ...]
    mask: np.ndarray  # (H, W) bool
    low_res_logits: np.ndarray | None  # the tool's last (1, 1, m, m) logits: the next step's mask_input
    predicted_ious: tuple[float, ...] = ()
    turn: int = 0  # steps already taken, the person's clicks included: this run's first turn gets this index


TurnCallback = Callable[[Turn, np.ndarray], None]


class Agent:
    def __init__(self, tool: SegmentationTool, policy: Policy, prompts: PromptSet | None = None,
                 max_turns: int = 20, max_repeats: int = 3, max_invalid: int = 3, history: bool = False):
        if not 1 <= max_turns <= TURN_LIMIT:
            raise ValueError(f"the turn limit must be 1 to {TURN_LIMIT}, not {max_turns}")
        if max_repeats < 2 or max_invalid < 1:
            raise ValueError("max_repeats >= 2 and max_invalid >= 1 are required")
        self.tool = tool
        self.policy = policy
        self.prompts = prompts or load_prompts()
        self.max_turns = max_turns
        self.max_repeats = max_repeats
        self.max_invalid = max_invalid
        self.history = history

    def _user_message(self, view: np.ndarray, query: str, turn: int) -> Message:
        text = self.prompts.user_text(query, turn)
        return {"role": "user", "content": [{"type": "image", "image": view}, {"type": "text", "text": text}]}

    def run(self, image: np.ndarray, query: str, on_turn: TurnCallback | None = None,
            embedding: ImageEmbedding | None = None, start: StartState | None = None) -> AgentResult:
        """Segment the target `query` asks for in an RGB uint8 image.

        Pass `embedding` when this image was already encoded by the same tool
        (several targets in one image): the encoder is the expensive part.
        Pass `start` to continue from earlier clicks (up to `max_turns` more
        turns); the result's clicks then begin with `start.clicks`.
        """
        query = clean_query(query)  # ValueError for what no request may hold (markup, control characters, length)
        if start is not None and start.mask.shape != image.shape[:2]:
            raise ValueError(f"the start mask is {start.mask.shape}, the image {image.shape[:2]}")
        mask = np.zeros(image.shape[:2], bool) if start is None else np.asarray(start.mask, bool).copy()
        result = AgentResult(mask, RunStatus.MAX_TURNS, [], [] if start is None else list(start.clicks),
                             low_res_logits=None if start is None else start.low_res_logits)
        started = time.perf_counter()
        try:
            if embedding is None:
                embedding = self.tool.encode(image)
        except Exception as error:  # a tool backend may fail in many ways; the run reports it
            result.status, result.error = RunStatus.TOOL_ERROR, f"encoding failed: {error}"
            return result
        result.encode_seconds = time.perf_counter() - started
        self.policy.reset(image, query)

        messages: list[Message] = [{"role": "system", "content": [{"type": "text", "text": self.prompts.system}]}]
        low_res = None if start is None else start.low_res_logits
        recent: list[Action] = []
        invalid_in_a_row = 0
        predicted_ious: list[float] = [] if start is None else list(start.predicted_ious)
        first = 0 if start is None else start.turn
        for index in range(first, first + self.max_turns):
            view = image if index == 0 else overlay_mask(image, result.mask)
            user = self._user_message(view, query, index)
            conversation = messages + [user] if self.history else [messages[0], user]
            observation = Observation(image, view, result.mask, query, index, tuple(result.clicks), embedding,
                                      tuple(predicted_ious))

            started = time.perf_counter()
            try:
                text = self.policy.act(observation, conversation)
            except Exception as error:  # no policy failure may escape the agent
                result.status, result.error = RunStatus.POLICY_ERROR, f"{type(error).__name__}: {error}"
                return result
            parsed = parse_response(text)
            turn = Turn(index, parsed.raw, parsed.think, parsed.action.to_text() if parsed.action else None,
                        [f"{issue.code}: {issue.message}" for issue in parsed.issues],
                        policy_seconds=time.perf_counter() - started)
            result.turns.append(turn)
            if self.history:
                messages += [user, {"role": "assistant", "content": [{"type": "text", "text": parsed.raw}]}]

            action = parsed.action
            stop: RunStatus | None = None
            if action is None:
                invalid_in_a_row += 1
                if invalid_in_a_row >= self.max_invalid:
                    stop = RunStatus.INVALID_OUTPUT
            else:
                invalid_in_a_row = 0
                recent = (recent + [action])[-self.max_repeats:]
                if action.kind is ActionKind.TERMINATE:
                    stop, result.answer = RunStatus.TERMINATED, parsed.answer
                elif len(recent) == self.max_repeats and all(action.same_as(other) for other in recent):
                    turn.issues.append(f"repeated_action: the same action {self.max_repeats} times in a row; stopped")
                    stop = RunStatus.REPEATED_ACTION
                else:
                    result.clicks.append(Click(action.x, action.y, action.kind is ActionKind.POSITIVE))
                    started = time.perf_counter()
                    try:
                        output = self.tool.predict(embedding, result.clicks, low_res)
                    except Exception as error:  # reported as the run's status, never raised
                        result.clicks.pop()
                        result.status, result.error = RunStatus.TOOL_ERROR, f"{type(error).__name__}: {error}"
                        return result
                    turn.tool_seconds = time.perf_counter() - started
                    low_res, result.mask = output.low_res_logits, output.mask
                    result.low_res_logits = low_res
                    turn.predicted_iou, turn.mask_area = round(output.iou, 4), int(output.mask.sum())
                    predicted_ious.append(float(output.iou))
            if on_turn:
                on_turn(turn, result.mask)
            if stop is not None:
                result.status = stop
                return self._with_confidence(result, image, query, embedding, predicted_ious)
        result.status = RunStatus.MAX_TURNS
        return self._with_confidence(result, image, query, embedding, predicted_ious)

    def _with_confidence(self, result: AgentResult, image: np.ndarray, query: str, embedding: ImageEmbedding,
                         predicted_ious: list[float]) -> AgentResult:
        """A completed run's confidence in its final mask: the policy's own, else the tool's estimate."""
        if not result.status.completed:
            return result
        turn = result.turns[-1].index + 1 if result.turns else 0
        final = Observation(image, overlay_mask(image, result.mask), result.mask, query, turn, tuple(result.clicks),
                            embedding, tuple(predicted_ious))
        try:
            result.confidence = self.policy.confidence(final)
        except Exception as error:  # a policy failing here must not cost the run: the tool's estimate stands in
            if result.turns:
                result.turns[-1].issues.append(f"confidence: the policy's estimate failed ({type(error).__name__}: "
                                               f"{error}); the tool's estimate stands in")
        if result.confidence is None:
            result.confidence = tool_confidence(predicted_ious)
        return result
