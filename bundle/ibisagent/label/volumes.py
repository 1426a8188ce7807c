"""3D requests of the label task: a volume image driven through the volume room's `VolumeSession`.

A NIfTI or npz volume, or a DICOM series folder (what MONAI Label's DICOMweb
datastore downloads), is one `VolumeSession` per (client, image, label).
With a prompt and a fresh session, the agent segments the key slice (the
client's `slice`, else `key_slice.choose_key_slice`'s sweep) and the mask is
propagated through the volume. The client resends all its points on every
click as voxel indices ([i, j, k] of a NIfTI file, [x, y, z] of an npz's
(z, y, x) array, [column, row, slice] of a DICOM series sorted lowest first
along the slice normal); points the session does not hold yet join as the
person's clicks on their slice (`add_clicks`, author "person"); the agent
may then go on for `agent_turns_after_user` turns on that slice, and the
slice is re-propagated. Points the client no longer sends were removed: the
session is rebuilt from the agent's run and the remaining points in their
order. Slice embeddings live in one `SliceEncoder` per volume, shared by
every client, so no slice is ever encoded twice; the result lists the slices
each request encoded. A DICOM series' label is NRRD on the series' grid,
and its SEG covers the whole series (`write_volume_seg`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ..agent import Agent, RunStatus, StartState
from ..policies.base import Policy
from ..prompting import PromptSet
from ..tools.base import Click
from ..volume.propagation import AuthoredClick, SliceState
from ..volume.readers import DicomSource, NiftiSource, NpzSource, read_volume, write_mask_nifti
from ..volume.session import VolumeSession
from ..volume.slices import SliceEncoder
from ..volume.volume import Volume, VolumeError
from .sessions import SessionKey

__all__ = ["PERSON", "PersonGroup", "VolumeLabelSession", "VolumePoints", "is_volume_file", "open_volume",
           "write_volume_label", "write_volume_seg"]

PERSON = "person"  # the author of a person's clicks (the agent's are "agent:<policy>")


def is_volume_file(path: Path) -> bool:
    """NIfTI and npz files go through the volume session when they hold more than one slice."""
    name = path.name.lower()
    if name.endswith(".npz"):
        return True
    if not name.endswith((".nii", ".nii.gz")):
        return False
    import nibabel as nib

    try:
        shape = [n for n in nib.load(str(path)).shape if n > 1]
    except Exception:  # unreadable: the 2D reader gives the precise error
        return False
    return len(shape) == 3


def open_volume(path: Path) -> Volume:
    try:
        return read_volume(path)
    except VolumeError as error:
        raise ValueError(str(error)) from None


class VolumePoints:
    """Client voxel points <-> (slice, row, column) of the `Volume`, for the file's own index order."""

    def __init__(self, volume: Volume):
        self.volume = volume
        source = volume.source
        slices, rows, columns = volume.shape
        if isinstance(source, NiftiSource):
            import nibabel as nib

            # file axis a -> canonical (RAS+) axis ornt[a, 0], flipped when ornt[a, 1] < 0 (as the reader reordered
            # them); the Volume is the canonical voxels as (z, y, x)
            self._orientation = nib.orientations.io_orientation(np.asarray(source.image.affine)).astype(int)
            canonical = (columns, rows, slices)
            self.grid = tuple(canonical[axis] for axis, _ in self._orientation)
        elif isinstance(source, (NpzSource, DicomSource)):
            # [x, y, z] of an npz's (z, y, x) array; [column, row, slice] of a sorted DICOM series
            self._orientation = None
            self.grid = (columns, rows, slices)
        else:
            raise ValueError(f"{volume.name}: the label task reads NIfTI, npz and DICOM series volumes")

    def to_voxel(self, point: Sequence[float]) -> tuple[int, int, int]:
        """A client point -> (slice, row, column); a clear error when it is not three numbers inside the grid."""
        if not isinstance(point, (list, tuple)) or len(point) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point):
            raise ValueError(f"a point on this volume is [i, j, k] (three numbers), got {point!r}"[:200])
        values = [int(round(v)) for v in point]
        if not all(0 <= v < n for v, n in zip(values, self.grid)):
            raise ValueError(f"point {values} is outside the volume of size {list(self.grid)}")
        if self._orientation is None:
            x, y, z = values
            return z, y, x
        sizes = (self.volume.shape[2], self.volume.shape[1], self.volume.shape[0])
        canonical = [0, 0, 0]
        for value, (axis, flip) in zip(values, self._orientation):
            canonical[axis] = sizes[axis] - 1 - value if flip < 0 else value
        return canonical[2], canonical[1], canonical[0]


@dataclass
class PersonGroup:
    """The person's new points on one slice in one request, and the agent turns that followed them."""

    entries: list[tuple[tuple, int, Click]]  # (client point, slice, click)
    agent_turns: int = 0

    @property
    def slice(self) -> int:
        return self.entries[0][1]


@dataclass
class VolumeLabelSession:
    """One client's work on one structure of one volume: the volume session and the points the client sent."""

    key: SessionKey
    session: VolumeSession
    prompt: str | None = None
    policy: str | None = None
    max_turns: int = 10
    key_slice: int | None = None
    groups: list[PersonGroup] = field(default_factory=list)  # one per add_clicks call, in order
    events: list[dict] = field(default_factory=list)
    requests: int = 0

    @property
    def nbytes(self) -> int:
        return sum(state.mask.nbytes + state.logits.nbytes for state in self.session.states.values()) \
            + 512 * len(self.events)

    @property
    def points(self) -> list[tuple[tuple, int, Click]]:
        return [entry for group in self.groups for entry in group.entries]

    @property
    def person_clicked(self) -> bool:
        return bool(self.groups)

    def agent_pass(self, policy, prompts, key_slice: int) -> RunStatus:
        """The agent segments `key_slice` from the prompt; propagation carries it through the volume."""
        result = self.session.run_agent(policy, self.prompt, key_slice, prompts=prompts, max_turns=self.max_turns)
        self._record_turns(result.turns, key_slice)
        return result.status

    def _record_turns(self, turns, index: int, **extra) -> None:
        for turn in turns:
            self.events.append({"by": "agent", "slice": index, "turn": turn.index, "action": turn.action,
                                "think": turn.think, "predicted_iou": turn.predicted_iou,
                                "mask_area": turn.mask_area, "policy": self.policy, "prompt": self.prompt, **extra})

    def person_points(self, sent: list[tuple[tuple, int, Click]], rebuild, *, agent_turns: int = 0,
                      policy: Policy | None = None, prompts: PromptSet | None = None) -> list[int]:
        """Join the points not held yet (by slice, in the client's order); rebuild first if some were removed.

        `rebuild()` gives a fresh session state (the agent's pass again; no
        slice is encoded again, the encoder is shared); the remaining points
        are then added again in the same calls as before, each followed by
        the agent turns that followed it then. With a prompt and `policy`,
        the agent goes on for `agent_turns` turns on each slice the person
        clicked now, before that slice is propagated. Returns the slices clicked.
        """
        held, now = Counter(p for p, _, _ in self.points), Counter(p for p, _, _ in sent)
        if held - now:
            removed, kept = held - now, []
            for group in self.groups:
                remaining = []
                for entry in group.entries:
                    if removed[entry[0]] > 0:
                        removed[entry[0]] -= 1
                    else:
                        remaining.append(entry)
                if remaining:
                    kept.append(PersonGroup(remaining, group.agent_turns))
            rebuild()
            self.groups = []
            self.events.append({"by": PERSON, "action": "remove points", "kept_points": sum(len(g.entries) for g in kept)})
            for group in kept:
                self._add_group(group, policy, prompts)
            held = Counter(p for p, _, _ in self.points)
        by_slice: dict[int, list] = {}
        for entry in sent:
            if held[entry[0]] > 0:
                held[entry[0]] -= 1
            else:
                by_slice.setdefault(entry[1], []).append(entry)
        turns = agent_turns if self.prompt and policy is not None else 0
        for entries in by_slice.values():
            self._add_group(PersonGroup(entries, turns), policy, prompts)
        return sorted(by_slice)

    def _add_group(self, group: PersonGroup, policy: Policy | None, prompts: PromptSet | None) -> None:
        """The person's new clicks on one slice: refine it, let the agent go on, re-propagate (`add_clicks`)."""
        index = group.slice
        clicked: list[SliceState] = []  # the slice as the person's clicks left it, before the agent went on
        then = self._agent_after(group.agent_turns, index, policy, prompts, clicked) \
            if group.agent_turns and policy else None
        mark = len(self.events)
        interaction = self.session.add_clicks(index, [click for _, _, click in group.entries], author=PERSON,
                                              then=then)
        state = clicked[0] if clicked else self.session.states[index]
        self.groups.append(group)
        person = {"by": PERSON, "slice": index, "points": [list(p[1:]) for p, _, _ in group.entries],
                  "positive": [c.positive for _, _, c in group.entries],
                  "predicted_iou": round(float(state.predicted_iou), 4), "mask_area": state.area,
                  "propagation": interaction.record()["propagation"]}
        self.events.insert(mark, person)  # before the agent turns that followed it

    def _agent_after(self, turns: int, index: int, policy: Policy, prompts: PromptSet | None,
                     clicked: list[SliceState]):
        """`add_clicks`' `then`: the agent continues from the person's mask on that slice for up to `turns` turns.

        Its clicks join the slice's (author `agent:<policy>`); a run that does
        not complete leaves the person's mask as it was (the event says why).
        The state it started from is appended to `clicked`.
        """
        author = f"agent:{self.policy}"

        def continue_agent(state: SliceState) -> SliceState:
            clicked.append(state)
            encoder = self.session.encoder
            start = StartState(tuple(c.click for c in state.clicks), state.mask, state.logits,
                               (float(state.predicted_iou),), len(state.clicks))
            result = Agent(self.session.tool, policy, prompts, max_turns=turns).run(
                encoder.rgb(index), self.prompt, embedding=encoder.embedding(index), start=start)
            self._record_turns(result.turns, index, after_person=True)
            if not result.status.completed or result.low_res_logits is None:
                self.events.append({"by": "agent", "slice": index, "after_person": True,
                                    "status": result.status.value, "note": "the person's mask is kept"})
                return state
            added = tuple(AuthoredClick(click, author) for click in result.clicks[len(start.clicks):])
            predicted = [t.predicted_iou for t in result.turns if t.predicted_iou is not None]
            return replace(state, mask=result.mask, logits=result.low_res_logits, clicks=state.clicks + added,
                           predicted_iou=float(predicted[-1]) if predicted else state.predicted_iou)

        return continue_agent


def write_volume_label(volume: Volume, mask: np.ndarray, out_dir: Path) -> Path:
    """The 3D label on the image's grid: NIfTI in the file's own voxel order and affine; NRRD for a DICOM series."""
    if isinstance(volume.source, DicomSource):
        from .images import write_series_nrrd

        return write_series_nrrd(volume.source.series.geometry, mask.transpose(2, 1, 0), out_dir / "label.nrrd")
    return write_mask_nifti(volume, mask, out_dir / "label.nii.gz")


def write_volume_seg(volume: Volume, mask: np.ndarray, label: str, human_clicked: bool, trajectory: dict,
                     out_dir: Path):
    """The SEG over the whole series (one frame per source slice holding the structure), with its side-car."""
    from ..dicom.seg_writer import Segment, write_segments
    from ..volume.pipeline import series_sources

    if not isinstance(volume.source, DicomSource):
        raise ValueError("store_seg needs a DICOM series; this image is a volume file, with no instances to reference")
    sources, frames = series_sources(volume.source.series)
    return write_segments(out_dir / "seg.dcm", sources, [Segment(label, mask, human_clicked=human_clicked)],
                          frame_indices=frames, trajectory=trajectory)


def encoder_bytes(encoder: SliceEncoder) -> int:
    """What a shared encoder holds: the voxels and every embedding so far (kept as float16)."""
    held = [*encoder.encoded, *encoder.loaded]
    per_slice = encoder.embedding(held[0]).features.nbytes // 2 if held else 0
    return int(encoder.volume.voxels.nbytes + len(held) * per_slice + (1 << 20))
