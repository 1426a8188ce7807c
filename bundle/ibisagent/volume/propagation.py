"""Propagation: a slice's mask prompts the tool on the next slice, outward until the structure ends.

Each next slice is prompted from its neighbour's result: the neighbour's
low-res logits as `mask_input` and a box and/or an interior click derived
from the neighbour's mask (`PropagationSettings.prompt`). A run stops where
the tool finds nothing, where its own IoU estimate falls below
`min_predicted_iou`, halfway to the next slice a person or the agent clicked
(an anchor: it keeps its own clicks, and each slice is prompted from its
nearest anchor), or, when re-propagating after a correction, at the first
slice whose new mask agrees with its previous one. All masks here are in the
display frame (what the tool saw); the session maps them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from ..clicks import normalised_to_pixel, pixel_to_normalised
from ..metrics import bounding_box, dice
from ..tools.base import Click, ToolOutput
from .slices import SliceEncoder

__all__ = ["AuthoredClick", "PropagationRun", "PropagationSettings", "SliceState", "anchor_share_end", "clear_outward",
           "largest_component", "without_refused_blobs", "propagate", "propagation_prompt", "seed_click"]

PromptKind = Literal["box", "box+mask", "click+mask", "box+click+mask"]


@dataclass(frozen=True)
class PropagationSettings:
    """How neighbours prompt each other and when propagation stops (how the defaults were chosen: docs/volumes.md)."""

    prompt: PromptKind = "box+mask"
    min_predicted_iou: float = 0.5  # stop where the tool's own IoU estimate falls below this
    box_margin: float = 0.0  # grow the neighbour's box by this fraction of its size on each side
    agreement_dice: float = 0.95  # re-propagation stops at a slice whose new mask agrees this well with the old
    min_area_px: int = 1  # a mask smaller than this counts as empty: the structure ended
    hole_click: bool = False  # a negative click in the neighbour mask's largest enclosed hole (rings: the myocardium)

    def __post_init__(self) -> None:
        if self.prompt not in ("box", "box+mask", "click+mask", "box+click+mask"):
            raise ValueError(f"unknown propagation prompt {self.prompt!r}")
        if not 0.0 <= self.min_predicted_iou < 1.0 or not 0.0 < self.agreement_dice <= 1.0:
            raise ValueError("min_predicted_iou must be in [0, 1) and agreement_dice in (0, 1]")


@dataclass(frozen=True)
class AuthoredClick:
    """A click on one slice and who made it ("agent:lite", "oracle", "user", a MONAI Label client id, ...)."""

    click: Click  # normalised (x, y) in the slice's display frame, as the agent clicks
    author: str


@dataclass(frozen=True)
class SliceState:
    """One slice's current result, in the display frame."""

    index: int
    mask: np.ndarray  # (H', W') bool
    logits: np.ndarray  # (1, 1, m, m) float32: the next slice's mask_input
    predicted_iou: float
    origin: str  # "agent" (the key slice's run), "clicks" (clicked by someone) or "propagated"
    prompted_by: int | None = None  # the neighbour that prompted a propagated slice
    clicks: tuple[AuthoredClick, ...] = ()
    seconds: float = 0.0  # tool time for this slice (decoder; the encoder is counted by SliceEncoder)

    @property
    def anchor(self) -> bool:
        """Slices with clicks of their own keep them: propagation never overwrites an anchor."""
        return bool(self.clicks)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def record(self) -> dict:
        """JSON-ready: where this slice's mask came from (no pixels)."""
        return {"slice": self.index, "origin": self.origin, "prompted_by": self.prompted_by,
                "predicted_iou": round(self.predicted_iou, 4), "area_px": self.area,
                "clicks": [{"x": round(c.click.x, 4), "y": round(c.click.y, 4), "positive": c.click.positive,
                            "author": c.author} for c in self.clicks],
                "tool_seconds": round(self.seconds, 4)}


def _interior_click(mask: np.ndarray) -> Click:
    """A positive click at the mask's deepest pixel (farthest from its border)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click(*pixel_to_normalised(int(row), int(col), mask.shape), True)


def seed_click(mask: np.ndarray, corrections: tuple[Click, ...]) -> Click | None:
    """A positive click standing for a propagated `mask` (display frame) that negative clicks now correct, or None.

    The click decoder was trained on click histories that start with a
    positive click in the structure, with the previous answer as
    `mask_input`. A propagated slice has a mask but no clicks, so a lone
    negative correction is a prompt it never saw: on the spleen CT it erased
    most of a good mask (docs/volumes.md, "The interaction model"). The
    seed is the mask's deepest pixel outside the disc each negative click
    refutes (the largest disc around it inside the mask), and must lie
    deeper than every negative click: a negative click at the mask's core
    refutes the whole mask, and gets no seed. Corrections holding a
    positive click need none (a seed there, in a mask that may be wrong,
    made the spleen's corrections worse).
    """
    if not mask.any() or any(click.positive for click in corrections):
        return None
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    allowed = mask.copy()
    rows, columns = np.indices(mask.shape)
    deepest_refuted = 0.0
    for click in corrections:
        if click.positive:
            continue
        row, column = normalised_to_pixel(click.x, click.y, mask.shape)
        radius = float(depth[row, column])
        deepest_refuted = max(deepest_refuted, radius)
        allowed &= (rows - row) ** 2 + (columns - column) ** 2 > radius ** 2
    candidates = np.where(allowed, depth, 0.0)
    if candidates.max() <= deepest_refuted:
        return None
    row, column = np.unravel_index(int(np.argmax(candidates)), mask.shape)
    return Click(*pixel_to_normalised(int(row), int(column), mask.shape), True)


def _hole_click(mask: np.ndarray) -> Click | None:
    """A negative click at the deepest pixel of the largest hole the mask encloses, None without holes."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return None
    labelled, _ = ndimage.label(holes)
    largest = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    depth = ndimage.distance_transform_edt(largest)
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return Click(*pixel_to_normalised(int(row), int(col), mask.shape), False)


def _grown_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = bounding_box(mask)
    grow_x, grow_y = round(margin * (x1 - x0 + 1)), round(margin * (y1 - y0 + 1))
    height, width = mask.shape
    return max(0, x0 - grow_x), max(0, y0 - grow_y), min(width - 1, x1 + grow_x), min(height - 1, y1 + grow_y)


def propagation_prompt(neighbour: SliceState, settings: PropagationSettings) -> dict:
    """The tool's keyword arguments for the slice next to `neighbour`."""
    kind = settings.prompt
    prompt: dict = {"clicks": (), "box": None, "mask_input": None, "multimask": False}
    if "box" in kind:
        prompt["box"] = _grown_box(neighbour.mask, settings.box_margin)
    if "click" in kind:
        prompt["clicks"] = (_interior_click(neighbour.mask),)
        prompt["multimask"] = "box" not in kind  # a lone click is ambiguous: SAM's best of three
    if settings.hole_click:
        hole = _hole_click(neighbour.mask)
        if hole is not None:
            prompt["clicks"] = (*prompt["clicks"], hole)
    if "mask" in kind:
        prompt["mask_input"] = neighbour.logits
    return prompt


def _ended(output: ToolOutput, settings: PropagationSettings) -> str | None:
    if int(output.mask.sum()) < settings.min_area_px:
        return "empty mask"
    if output.iou < settings.min_predicted_iou:
        return f"predicted IoU {output.iou:.3f} below {settings.min_predicted_iou}"
    return None


SliceCallback = Callable[[SliceState | None, int, str | None], None]


@dataclass
class PropagationRun:
    """What one outward run did: slices it set, where and why it stopped."""

    start: int
    step: int
    reached: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    stopped_at: int | None = None
    reason: str = "edge of the volume"


def anchor_share_end(states: dict[int, SliceState], start: int, step: int, count: int) -> tuple[int, int | None]:
    """(end, anchor): the first slice along `step` from `start` that `start` does not prompt, and the anchor beyond.

    Each slice between two anchors belongs to the nearer one (a tie stays
    with the other anchor), so a correction re-prompts only its own half of
    the gap: a wrong click far from the key slice cannot overwrite the
    agent's slices up to the key. Without an anchor the share runs to the edge.
    """
    index = start + step
    while 0 <= index < count:
        if index in states and states[index].anchor:
            gap = abs(index - start)
            return start + step * ((gap - 1) // 2 + 1), index
        index += step
    return index, None


def propagate(encoder: SliceEncoder, states: dict[int, SliceState], start: int, step: int,
              settings: PropagationSettings, previous: dict[int, SliceState] | None = None,
              on_slice: SliceCallback | None = None) -> PropagationRun:
    """Walk from `states[start]` along `step` (+1 or -1), updating `states` in place.

    The walk covers `start`'s share of the way to the next anchor
    (`anchor_share_end`). With `previous` (the states before a correction)
    it stops at the first slice that agrees with its previous mask: from
    there on the old results were prompted by an equivalent neighbour. Where
    the structure ends, slices of the share beyond that are cleared: nothing
    prompts them any more.
    """
    run = PropagationRun(start, step)
    count = encoder.volume.slice_count
    end, anchor = anchor_share_end(states, start, step, count)
    index = start
    while True:
        target = index + step
        if target == end:
            if anchor is not None:
                run.stopped_at, run.reason = target, f"the rest is nearer the slice clicked at {anchor}"
            break
        neighbour = states[index]
        started = time.perf_counter()
        output = encoder.tool.predict(encoder.embedding(target), **propagation_prompt(neighbour, settings))
        seconds = time.perf_counter() - started
        ended = _ended(output, settings)
        if ended:
            run.stopped_at, run.reason = target, ended
            run.cleared = clear_outward(states, target, step, end)
            if on_slice:
                on_slice(None, target, ended)
            break
        state = SliceState(target, output.mask, output.low_res_logits, output.iou, "propagated", index,
                           seconds=seconds)
        old = (previous or {}).get(target)
        states[target] = state
        run.reached.append(target)
        if on_slice:
            on_slice(state, target, None)
        if old is not None and dice(old.mask, state.mask) >= settings.agreement_dice:
            run.stopped_at, run.reason = target, "agrees with the previous result"
            break
        index = target
    return run


def clear_outward(states: dict[int, SliceState], first: int, step: int, end: int) -> list[int]:
    """Remove the slices prompted along `step` from `first` on, up to (not including) `end` or an anchor.

    A slice its neighbour on the other side prompted (the chain from another
    anchor) does not depend on this walk and stays.
    """
    cleared = []
    index = first
    while (index != end and index in states and not states[index].anchor
           and states[index].prompted_by == index - step):
        del states[index]
        cleared.append(index)
        index += step
    return cleared


def without_refused_blobs(mask: np.ndarray, clicks: tuple[Click, ...]) -> np.ndarray:
    """`mask` (display frame) without its blobs that hold a negative click and no positive one.

    A slice's mask never keeps a blob someone said "not this" on. The click
    decoder never saw a slice without a positive click: given a lone negative
    click on a false blob past a structure's end, it kept part of the blob,
    often with the clicked pixel (docs/volumes.md, "The interaction model").
    Without any positive click (a lone negative click at a mask's core, see
    `seed_click`) nothing is kept: nobody asked for any blob there, and the
    tool's answer to such a click was a new blob elsewhere.
    """
    if not any(click.positive for click in clicks):
        return np.zeros_like(mask, dtype=bool)
    components, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))

    def blob(click: Click) -> int:
        return int(components[normalised_to_pixel(click.x, click.y, mask.shape)])

    refused = {blob(c) for c in clicks if not c.positive} - {blob(c) for c in clicks if c.positive} - {0}
    return mask & ~np.isin(components, list(refused)) if refused else mask


def largest_component(mask: np.ndarray, keep: list[tuple[int, int, int]] = ()) -> np.ndarray:
    """The largest 6-connected component of a 3D mask, plus every component holding a voxel of `keep`.

    `keep`: voxels (slice, row, column) of positive clicks: a structure a
    person or the agent pointed at is never removed as a stray blob.
    """
    labelled, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    kept = {int(np.argmax(sizes))} | {int(labelled[v]) for v in keep if labelled[v] > 0}
    return np.isin(labelled, list(kept))
