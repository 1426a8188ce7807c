"""Segment one structure through a whole volume and write the results: the one home of every volume application.

`ibis segment-volume`, `ibis segment-dicom --whole-series` and the bundle
workflow's volume items all call `segment_volume`: read the input (or take
it read), run the agent on the key slice (given, or chosen by the agent's
sweep; the oracle takes the slice of largest reference area), propagate,
and write, all in a staging folder that replaces the output folder whole,
in one step, only when complete (`outputs.staged_folder`):

- `mask.nii.gz`: the 3D mask in the input's geometry (a NIfTI input's own affine),
- `seg.dcm` + `seg.json` for DICOM input: one frame per source slice holding the structure,
- `trajectory.json`: the key slice (and how it was chosen), the agent's turns, each slice's provenance,
- `montage.png`: the slices holding the mask with the mask overlaid, the key slice marked.

Nothing is written when the agent's run did not complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..agent import AgentResult, TurnCallback
from ..labels import LabelChoice, choose_label
from ..metrics import dice
from ..outputs import check_output_dir, staged_folder, write_json_atomic
from ..policies.base import Policy
from ..policies.query_encoder import shared_query_encoder
from ..prompting import PromptSet, clean_query
from ..tools.base import SegmentationTool
from .key_slice import KeySliceChoice, choose_key_slice
from .montage import write_montage
from .propagation import PropagationSettings, SliceCallback
from .readers import DicomSource, write_mask_nifti
from .session import Directions, VolumeSession
from .volume import Volume

__all__ = ["VOLUME_FILES", "VolumeRun", "check_volume_folder", "is_volume_folder", "segment_volume", "series_sources"]

VOLUME_FILES = frozenset({"mask.nii.gz", "seg.dcm", "seg.json", "trajectory.json", "montage.png"})


@dataclass(frozen=True)
class VolumeRun:
    volume: Volume
    session: VolumeSession
    result: AgentResult
    key_choice: KeySliceChoice | None  # None when the key slice was given (or the reference's)
    mask: np.ndarray  # (N, H, W) bool, the volume's voxel order
    written: tuple[Path, ...]  # empty when the run did not complete: nothing was written
    reference_dice: float | None = None

    @property
    def completed(self) -> bool:
        return self.result.status.completed


def segment_volume(volume: Volume, query: str, out_dir: str | Path, tool: SegmentationTool, policy: Policy, *,
                   key_slice: int | None = None, key_from: str = "given", label: str | LabelChoice | None = None,
                   reference: np.ndarray | None = None,
                   prompts: PromptSet | None = None, max_turns: int = 20,
                   settings: PropagationSettings | None = None, directions: Directions = "both",
                   cache_dir: str | Path | None = None, on_turn: TurnCallback | None = None,
                   on_slice: SliceCallback | None = None, on_key: Callable[[int, str], None] | None = None,
                   human_clicked: bool = False, metadata: dict | None = None) -> VolumeRun:
    """Segment the structure `query` asks for in `volume` and write the outputs into `out_dir`.

    Without `key_slice` the agent's sweep chooses it (`key_slice.choose_key_slice`);
    `key_from` says how a given one was chosen (for the trajectory). `reference`
    (N, H, W), the volume's voxel order, is scored as `reference_dice`. `label`
    names the segment and picks its SNOMED codes in the SEG; without it the
    label comes from the query as in `segment_dicom` (`labels.choose_label`),
    else "target" with generic codes. `on_key(index, how)` reports the key
    slice before the agent runs.
    """
    query = clean_query(query)  # ValueError for an empty request or markup, before any slice is encoded
    label_choice = label if isinstance(label, LabelChoice) else choose_label(label, query, shared_query_encoder)
    if reference is not None and reference.shape != volume.shape:
        raise ValueError(f"reference of shape {reference.shape} for a volume of {volume.shape}")
    session = VolumeSession(tool, volume, settings or PropagationSettings(), directions, cache_dir, on_slice)
    choice = None
    if key_slice is not None:
        key, how = volume.check_slice(key_slice), key_from
    else:
        choice = choose_key_slice(session.encoder, policy, query, prompts)
        key, how = choice.index, "chosen by the agent's sweep"
    if on_key:
        on_key(key, how)
    result = session.run_agent(policy, query, key, prompts=prompts, max_turns=max_turns, on_turn=on_turn)
    mask = session.mask()
    score = dice(mask, reference) if reference is not None else None
    if not result.status.completed:
        return VolumeRun(volume, session, result, choice, mask, (), score)
    segment_label = label_choice.segment_label
    trajectory = {
        **(metadata or {}), "query": query, "label": segment_label, "label_choice": label_choice.to_dict(),
        "volume": volume.describe(),
        "input_notes": list(volume.notes), "display": volume.display.describe(),
        "key_slice_from": how, "key_slice_choice": choice.record() if choice else None,
        "mask_voxels": int(mask.sum()), "mask_slices": [int(k) for k in np.nonzero(mask.any(axis=(1, 2)))[0]],
        **({"reference_dice": round(score, 4)} if score is not None else {}),
        **session.trajectory(),
    }
    written = _write_outputs(Path(out_dir), volume, session, mask, segment_label, trajectory, human_clicked)
    return VolumeRun(volume, session, result, choice, mask, written, score)


def is_volume_folder(path: Path) -> bool:
    """An empty folder, or one holding only what `segment_volume` writes (hidden temporaries aside)."""
    return all(item.is_file() and item.name in VOLUME_FILES for item in path.iterdir() if not item.name.startswith("."))


def check_volume_folder(path: str | Path) -> Path:
    """Refuse, before any model loads, an output folder `segment_volume` could not replace whole."""
    path = check_output_dir(path)
    if path.is_dir() and not is_volume_folder(path):
        raise ValueError(f"output folder {path} holds files that are not an earlier volume run's; it is replaced "
                         "whole, so name a new or empty folder, or an earlier run's")
    return path


def _write_outputs(out_dir: Path, volume: Volume, session: VolumeSession, mask: np.ndarray, label: str,
                   trajectory: dict, human_clicked: bool) -> tuple[Path, ...]:
    """Everything written aside, then put in place of `out_dir` in one step (`outputs.staged_folder`)."""
    with staged_folder(out_dir, is_volume_folder) as staging:
        if volume.uniform_spacing:
            write_mask_nifti(volume, mask, staging / "mask.nii.gz")
        if isinstance(volume.source, DicomSource):
            from ..dicom.seg_writer import Segment, write_segments

            series = volume.source.series
            sources, frames = series_sources(series)
            write_segments(staging / "seg.dcm", sources, [Segment(label, mask, human_clicked=human_clicked)],
                           frame_indices=frames, trajectory=trajectory)
        write_montage(staging / "montage.png", volume, mask, session.key_slice)
        write_json_atomic(staging / "trajectory.json", trajectory)
        names = sorted(item.name for item in staging.iterdir())
    return tuple(out_dir / name for name in names)


def series_sources(series) -> tuple[list, list[int] | None]:
    """The SEG writer's sources for a sorted series: its single-frame datasets, or one object and its frames."""
    if len(series.datasets) == series.slice_count:
        return list(series.datasets), None
    from ..dicom.pixels import functional_group_item

    dataset = series.datasets[0]
    positions = []
    for frame in range(int(dataset.NumberOfFrames)):
        plane = functional_group_item(dataset, frame, "PlanePositionSequence")
        positions.append(np.asarray([float(v) for v in plane.ImagePositionPatient]))
    frames = [int(np.argmin([np.linalg.norm(p - sorted_position) for p in positions]))
              for sorted_position in series.geometry.positions]
    return [dataset], frames
