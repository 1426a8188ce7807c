"""VolumeSession: one structure in one volume, segmented from a key slice and corrected on any slice.

The interaction model (docs/volumes.md): the agent (or anyone) segments a
key slice; propagation carries the mask outward, both ways by default, until
the structure ends; anyone may then add clicks on any slice k (the agent,
the oracle, a person through MONAI Label), which refines k and re-propagates
from k outward, over the slices nearer to k than to any other clicked slice,
until the new masks agree with the old ones. Every slice
records where its mask came from and who clicked it. The 3D mask is the
slices' masks in voxel order after a 3D clean-up (the largest connected
component, and every component someone clicked into).

    session = VolumeSession(tool, read_volume("ct.nii.gz"))
    session.run_agent(policy, "Segment the liver.", key_slice=40)
    session.add_clicks(52, [session.click_at(52, row=210, column=140, positive=True)], author="user")
    mask = session.mask()  # (slices, rows, columns) bool, the volume's voxel order
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..agent import Agent, AgentResult, TurnCallback
from ..clicks import normalised_to_pixel, pixel_to_normalised
from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import Click, SegmentationTool
from .propagation import (AuthoredClick, PropagationRun, PropagationSettings, SliceCallback, SliceState,
                          anchor_share_end, clear_outward, largest_component, propagate,
                          seed_click, without_refused_blobs)
from .slices import SliceEncoder
from .volume import Volume, VolumeError

__all__ = ["Directions", "Interaction", "SEED_AUTHOR", "VolumeSession"]

Directions = Literal["both", "forward"]  # forward: increasing slice index only (MONAI Label's SAM2 behaviour)
SEED_AUTHOR = "seed"  # the positive click a corrected propagated slice's mask stands for (propagation.seed_click)


@dataclass(frozen=True)
class Interaction:
    """One step of the session: the agent's key-slice run or clicks on a slice, and what propagation did."""

    kind: str  # "agent" | "clicks"
    slice: int
    author: str
    clicks: int
    runs: tuple[PropagationRun, ...]
    seconds: float
    status: str | None = None  # the agent's run status

    def record(self) -> dict:
        return {"kind": self.kind, "slice": self.slice, "author": self.author, "clicks": self.clicks,
                "status": self.status, "seconds": round(self.seconds, 3),
                "propagation": [{"direction": "forward" if run.step > 0 else "backward", "reached": run.reached,
                                 "cleared": run.cleared, "stopped_at": run.stopped_at, "reason": run.reason}
                                for run in self.runs]}


@dataclass
class VolumeSession:
    """A structure in a volume: the agent's key slice, propagation, and corrections on any slice.

    `cache_dir`: keep slice embeddings on disk (keyed by pixels and encoder)
    for later sessions on the same volume. `on_slice(state, index, ended)` is
    called for every slice propagation reaches (progress).
    """

    tool: SegmentationTool
    volume: Volume
    settings: PropagationSettings = field(default_factory=PropagationSettings)
    directions: Directions = "both"
    cache_dir: str | Path | None = None
    on_slice: SliceCallback | None = None
    encoder: SliceEncoder | None = None  # share one between sessions on the same volume (several targets)

    def __post_init__(self) -> None:
        if self.directions not in ("both", "forward"):
            raise ValueError(f"directions must be 'both' or 'forward', got {self.directions!r}")
        if self.encoder is None:
            self.encoder = SliceEncoder(self.tool, self.volume, self.cache_dir)
        elif self.encoder.volume is not self.volume or self.encoder.tool is not self.tool:
            raise ValueError("the shared SliceEncoder belongs to another volume or tool")
        self.states: dict[int, SliceState] = {}
        self.interactions: list[Interaction] = []
        self.key_slice: int | None = None
        self.agent_result: AgentResult | None = None

    # ------------------------------------------------------------------ the key slice
    def run_agent(self, policy: Policy, query: str, key_slice: int, *, prompts: PromptSet | None = None,
                  max_turns: int = 20, author: str | None = None, on_turn: TurnCallback | None = None) -> AgentResult:
        """The agent segments `key_slice`; its mask is propagated through the volume.

        Replaces whatever the session held (a new request). A run that did not
        complete (policy or tool failure) leaves the session empty and is
        returned with its status. To let the agent choose the key slice, see
        `key_slice.choose_key_slice`.
        """
        key_slice = self.volume.check_slice(key_slice)
        author = author or f"agent:{getattr(policy, 'name', type(policy).__name__)}"
        started = time.perf_counter()
        self.states, self.interactions, self.key_slice = {}, [], key_slice
        agent = Agent(self.tool, policy, prompts, max_turns=max_turns)
        result = agent.run(self.encoder.rgb(key_slice), query, on_turn=on_turn,
                           embedding=self.encoder.embedding(key_slice))
        self.agent_result = result
        runs: tuple[PropagationRun, ...] = ()
        if result.status.completed and result.clicks and result.low_res_logits is not None:
            predicted = [turn.predicted_iou for turn in result.turns if turn.predicted_iou is not None]
            clicks = tuple(AuthoredClick(click, author) for click in result.clicks)
            self.states[key_slice] = SliceState(key_slice, result.mask, result.low_res_logits,
                                                float(predicted[-1]) if predicted else float("nan"), "agent",
                                                clicks=clicks, seconds=sum(t.tool_seconds for t in result.turns))
            runs = self._propagate_from(key_slice, previous=None)
        self.interactions.append(Interaction("agent", key_slice, author, len(result.clicks), runs,
                                             time.perf_counter() - started, result.status.value))
        return result

    # ------------------------------------------------------------------ corrections
    def add_clicks(self, index: int, clicks: Sequence[Click], author: str = "user", *,
                   then: Callable[[SliceState], SliceState] | None = None) -> Interaction:
        """Refine slice `index` with more clicks (all its clicks so far + these), then re-propagate from it.

        The slice's previous logits are the tool's `mask_input`, as in the
        agent's loop; on a slice that propagation set (no clicks of its own) a
        positive seed click for its mask goes first (`propagation.seed_click`),
        recorded with the author "seed". Propagation outward covers the slices
        nearer to `index` than to any other clicked slice and stops early
        where new masks agree with the old ones; where the structure now ends sooner, the
        rest of that share is cleared (clicked slices are kept).
        `then(state)` may refine the clicked slice further before propagation
        (the agent continuing after a person's clicks: mixed initiative).
        """
        index = self.volume.check_slice(index)
        if not clicks:
            raise ValueError("add_clicks needs at least one click")
        for click in clicks:
            if not (0.0 <= click.x <= 1.0 and 0.0 <= click.y <= 1.0):
                raise VolumeError(f"click ({click.x}, {click.y}) is outside the slice: coordinates are normalised "
                                  "to [0, 1] in the slice's display frame")
        started = time.perf_counter()
        existing = self.states.get(index)
        history = existing.clicks if existing else ()
        if existing is not None and not history:  # a propagated slice: its mask stands in for the first click
            seed = seed_click(existing.mask, tuple(clicks))
            history = (AuthoredClick(seed, SEED_AUTHOR),) if seed is not None else ()
        authored = history + tuple(AuthoredClick(c, author) for c in clicks)
        tool_started = time.perf_counter()
        output = self.tool.predict(self.encoder.embedding(index), [c.click for c in authored],
                                   existing.logits if existing is not None else None)
        mask = without_refused_blobs(output.mask, tuple(c.click for c in authored))
        logits = output.low_res_logits if mask.any() else np.full_like(output.low_res_logits, -20.0)
        previous = dict(self.states)
        self.states[index] = SliceState(index, mask, logits, output.iou, "clicks",
                                        clicks=authored, seconds=time.perf_counter() - tool_started)
        if then is not None:
            self.states[index] = then(self.states[index])
        if self.key_slice is None:
            self.key_slice = index  # clicks without an agent run: the first clicked slice is the key slice
        if self.on_slice:
            self.on_slice(self.states[index], index, None)
        runs = self._propagate_from(index, previous)
        interaction = Interaction("clicks", index, author, len(clicks), runs, time.perf_counter() - started)
        self.interactions.append(interaction)
        return interaction

    def _propagate_from(self, index: int, previous: dict[int, SliceState] | None) -> tuple[PropagationRun, ...]:
        steps = (1, -1) if self.directions == "both" else (1,)
        state = self.states[index]
        if state.area < self.settings.min_area_px:  # the clicked slice is empty: nothing prompts its neighbours
            runs = []
            for step in steps:
                run = PropagationRun(index, step, stopped_at=index, reason="the clicked slice is empty")
                end, _ = anchor_share_end(self.states, index, step, self.volume.slice_count)
                run.cleared = clear_outward(self.states, index + step, step, end)
                runs.append(run)
            return tuple(runs)
        return tuple(propagate(self.encoder, self.states, index, step, self.settings, previous, self.on_slice)
                     for step in steps)

    # ------------------------------------------------------------------ coordinates
    def click_at(self, index: int, row: int, column: int, positive: bool = True) -> Click:
        """A click on stored voxel (row, column) of slice `index`, in the display frame the tool uses.

        MONAI Label and viewers send voxel indices; the session's clicks are
        normalised display coordinates (as the agent's).
        """
        self.volume.check_slice(index)
        rows, columns = self.volume.shape[1:]
        if not (0 <= row < rows and 0 <= column < columns):
            raise VolumeError(f"voxel ({row}, {column}) is outside the {rows}x{columns} slice")
        marker = np.zeros((rows, columns), bool)
        marker[row, column] = True
        (display_row,), (display_column,) = np.nonzero(self.volume.to_display(marker))
        return Click(*pixel_to_normalised(int(display_row), int(display_column), self.volume.display_shape), positive)

    def _stored_voxel(self, index: int, click: Click) -> tuple[int, int, int]:
        marker = np.zeros(self.volume.display_shape, bool)
        marker[normalised_to_pixel(click.x, click.y, self.volume.display_shape)] = True
        (row,), (column,) = np.nonzero(self.volume.to_stored(marker))
        return index, int(row), int(column)

    # ------------------------------------------------------------------ results
    def slice_mask(self, index: int) -> np.ndarray:
        """Slice `index`'s mask before the 3D clean-up, in voxel order (empty where nothing was found)."""
        state = self.states.get(self.volume.check_slice(index))
        if state is None:
            return np.zeros(self.volume.shape[1:], bool)
        return self.volume.to_stored(state.mask)

    def mask(self, clean: bool = True) -> np.ndarray:
        """The 3D mask (slices, rows, columns) in the volume's voxel order.

        `clean`: keep the largest 6-connected component and every component
        holding a positive click (stray blobs go; clicked structures stay).
        Seeds do not count: nobody pointed there.
        """
        volume = np.zeros(self.volume.shape, bool)
        for index, state in self.states.items():
            volume[index] = self.volume.to_stored(state.mask)
        if not clean or not volume.any():
            return volume
        keep = [self._stored_voxel(state.index, c.click) for state in self.states.values()
                for c in state.clicks if c.click.positive and c.author != SEED_AUTHOR]
        return largest_component(volume, keep)

    @property
    def reached(self) -> list[int]:
        """Slices holding a mask, ascending."""
        return sorted(self.states)

    def trajectory(self) -> dict:
        """JSON-ready: the key slice, the agent's turns, every interaction and each slice's provenance."""
        return {
            "key_slice": self.key_slice, "directions": self.directions,
            "settings": asdict(self.settings),
            "agent": self.agent_result.trajectory() if self.agent_result is not None else None,
            "interactions": [interaction.record() for interaction in self.interactions],
            "slices": [self.states[index].record() for index in self.reached],
            "encoder": {"encoded": len(self.encoder.encoded), "from_cache": len(self.encoder.loaded),
                        "seconds": round(self.encoder.encode_seconds, 3)},
        }

