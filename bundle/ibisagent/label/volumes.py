"""3D requests of the label task: a volume image driven through the volume room's `VolumeSession`.

A NIfTI or npz volume in the datastore is one `VolumeSession` per (client,
image, label). With a prompt and a fresh session, the agent segments the key
slice (the client's `slice`, else `key_slice.choose_key_slice`'s sweep) and
the mask is propagated through the volume. The client resends all its
points on every click as file voxel indices ([i, j, k] of a NIfTI file,
[x, y, z] of an npz's (z, y, x) array); points the session does not hold yet
join as the person's clicks on their slice (`add_clicks`, author "person"),
which re-propagates from there. Points the client no longer sends were
removed: the session is rebuilt from the agent's run and the remaining
points in their order. Slice embeddings live in one `SliceEncoder` per
volume, shared by every client, so no slice is ever encoded twice; the
result lists the slices each request encoded.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..agent import RunStatus
from ..tools.base import Click
from ..volume.readers import NiftiSource, NpzSource, read_volume, write_mask_nifti
from ..volume.session import VolumeSession
from ..volume.slices import SliceEncoder
from ..volume.volume import Volume, VolumeError
from .sessions import SessionKey

__all__ = ["PERSON", "VolumeLabelSession", "VolumePoints", "is_volume_file", "open_volume"]

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
        elif isinstance(source, NpzSource):
            self._orientation = None
            self.grid = (columns, rows, slices)  # [x, y, z] of the (z, y, x) array
        else:
            raise ValueError(f"{volume.name}: the label task reads NIfTI and npz volumes")

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
class VolumeLabelSession:
    """One client's work on one structure of one volume: the volume session and the points the client sent."""

    key: SessionKey
    session: VolumeSession
    prompt: str | None = None
    policy: str | None = None
    max_turns: int = 10
    key_slice: int | None = None
    # the person's clicks as added: one group per add_clicks call, each entry (client point, slice, click)
    groups: list[list[tuple[tuple, int, Click]]] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    requests: int = 0

    @property
    def nbytes(self) -> int:
        return sum(state.mask.nbytes + state.logits.nbytes for state in self.session.states.values()) \
            + 512 * len(self.events)

    @property
    def points(self) -> list[tuple[tuple, int, Click]]:
        return [entry for group in self.groups for entry in group]

    @property
    def person_clicked(self) -> bool:
        return bool(self.groups)

    def agent_pass(self, policy, prompts, key_slice: int) -> RunStatus:
        """The agent segments `key_slice` from the prompt; propagation carries it through the volume."""
        result = self.session.run_agent(policy, self.prompt, key_slice, prompts=prompts, max_turns=self.max_turns)
        for turn in result.turns:
            self.events.append({"by": "agent", "slice": key_slice, "turn": turn.index, "action": turn.action,
                                "think": turn.think, "predicted_iou": turn.predicted_iou,
                                "mask_area": turn.mask_area, "policy": self.policy, "prompt": self.prompt})
        return result.status

    def person_points(self, sent: list[tuple[tuple, int, Click]], rebuild) -> list[int]:
        """Join the points not held yet (by slice, in the client's order); rebuild first if some were removed.

        `rebuild()` gives a fresh session state (the agent's pass again; no
        slice is encoded again, the encoder is shared); the remaining points
        are then added again in the same calls as before. Returns the slices clicked.
        """
        held, now = Counter(p for p, _, _ in self.points), Counter(p for p, _, _ in sent)
        if held - now:
            removed, kept = held - now, []
            for group in self.groups:
                remaining = []
                for entry in group:
                    if removed[entry[0]] > 0:
                        removed[entry[0]] -= 1
                    else:
                        remaining.append(entry)
                if remaining:
                    kept.append(remaining)
            rebuild()
            self.groups = []
            self.events.append({"by": PERSON, "action": "remove points", "kept_points": sum(map(len, kept))})
            for group in kept:
                self._add_group(group)
            held = Counter(p for p, _, _ in self.points)
        by_slice: dict[int, list] = {}
        for entry in sent:
            if held[entry[0]] > 0:
                held[entry[0]] -= 1
            else:
                by_slice.setdefault(entry[1], []).append(entry)
        for group in by_slice.values():
            self._add_group(group)
        return sorted(by_slice)

    def _add_group(self, group: list[tuple[tuple, int, Click]]) -> None:
        """The person's new clicks on one slice: refine it and re-propagate (`VolumeSession.add_clicks`)."""
        index = group[0][1]
        interaction = self.session.add_clicks(index, [click for _, _, click in group], author=PERSON)
        state = self.session.states[index]
        self.groups.append(group)
        self.events.append({"by": PERSON, "slice": index, "points": [list(p[1:]) for p, _, _ in group],
                            "positive": [c.positive for _, _, c in group],
                            "predicted_iou": round(float(state.predicted_iou), 4), "mask_area": state.area,
                            "propagation": interaction.record()["propagation"]})


def write_volume_label(volume: Volume, mask: np.ndarray, out_dir: Path) -> Path:
    """The 3D label as NIfTI in the volume file's own voxel order and affine."""
    return write_mask_nifti(volume, mask, out_dir / "label.nii.gz")


def encoder_bytes(encoder: SliceEncoder) -> int:
    """What a shared encoder holds: the voxels and every embedding so far (kept as float16)."""
    held = [*encoder.encoded, *encoder.loaded]
    per_slice = encoder.embedding(held[0]).features.nbytes // 2 if held else 0
    return int(encoder.volume.voxels.nbytes + len(held) * per_slice + (1 << 20))
