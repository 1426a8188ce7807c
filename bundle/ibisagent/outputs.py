"""Write a run's outputs so that nothing half-written is ever left behind.

Everything is written into a hidden staging folder beside the destination,
then moved into place file by file with atomic renames, only once all of it
was written successfully.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .agent import AgentResult
from .tools.base import Click
from .imaging.orientation import IDENTITY, DisplayTransform
from .imaging.nifti import NiftiSlice
from .imaging.overlay import mark_clicks, overlay_mask

__all__ = ["write_run", "write_json_atomic", "save_torch_atomic", "publish", "check_output_dir", "check_output_file",
           "marked_overlay", "clicks_by_turn", "write_image_atomic"]


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path) -> Path:
    """Refuse, before any work, an output folder that names a file or that this process cannot write.

    Why: a run that loads models and clicks for seconds (or an evaluation for
    hours) should not find out at the end that its outputs have nowhere to go.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output folder {path} is an existing file; name a folder")
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        raise ValueError(f"output folder {path} cannot be made: {existing} is a file")
    try:  # a real write: permission bits do not tell for root, read-only mounts or pseudo file systems
        handle, probe = tempfile.mkstemp(prefix=".ibis-write-check-", dir=existing)
    except OSError as error:
        raise ValueError(f"output folder {path} is not writable: cannot write into {existing} ({error.strerror})") from None
    os.close(handle)
    os.unlink(probe)
    return path


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work, an output file that names a folder or whose folder cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output file {path} is an existing folder; name a file")
    check_output_dir(path.parent if str(path.parent) else Path("."))
    return path


def publish(temporary: str | Path, path: str | Path) -> None:
    """Move a finished temporary file into place atomically, with the permissions a plain write would give.

    `mkstemp` creates files readable by the owner only; outputs are meant for
    the user's group and tools (viewers, PACS senders) as any file they write.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(temporary, 0o666 & ~mask)
    os.replace(temporary, path)


def save_torch_atomic(obj: object, path: str | Path) -> None:
    """`torch.save` that never leaves a half-written checkpoint (training can be killed at any time)."""
    import torch

    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(obj, temporary)
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: object) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2, allow_nan=True)
            stream.write("\n")
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def marked_overlay(image: np.ndarray, mask: np.ndarray, clicks: Sequence[Click],
                   display: DisplayTransform = IDENTITY) -> np.ndarray:
    """The picture for a person: the mask over the image and the clicks marked, in the input's stored order.

    `image`, `mask` and the clicks are in the agent's view; the marks are drawn
    there and move with the pixels when `display` maps them back.
    """
    return display.to_stored(mark_clicks(overlay_mask(image, mask), clicks))


def clicks_by_turn(result: AgentResult) -> list[list[Click]]:
    """The clicks made up to and including each turn (clicks the run started with count from the first)."""
    executed = sum(1 for turn in result.turns if turn.mask_area is not None)
    made = len(result.clicks) - executed
    so_far = []
    for turn in result.turns:
        made += turn.mask_area is not None
        so_far.append(list(result.clicks[:made]))
    return so_far


def write_image_atomic(path: str | Path, pixels: np.ndarray) -> None:
    """A PNG written aside and moved into place, so a reader never sees half of it."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        Image.fromarray(pixels).save(temporary, format="PNG")
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_run(out_dir: str | Path, image: np.ndarray, result: AgentResult, turn_masks: list[np.ndarray],
              metadata: dict, display: DisplayTransform = IDENTITY, nifti: NiftiSlice | None = None) -> list[Path]:
    """mask.png (0/255 at image size), overlay.png, turn_NN.png per turn, trajectory.json.

    `image` and the masks are as the agent saw them; `display` (the reader's)
    puts every picture back in the input's stored pixel order, so mask.png
    lies on the input's pixels. The overlays mark the clicks made so far. The
    trajectory's clicks stay where the agent clicked (callers say in
    `metadata["display"]` how that view was made). A NIfTI slice (`nifti`)
    also gets mask.nii.gz, the mask on the input's voxel grid.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        final_mask = display.to_stored(result.mask)
        Image.fromarray(final_mask.astype(np.uint8) * 255).save(staging / "mask.png")
        if nifti is not None:
            nifti.write_mask(result.mask, staging / "mask.nii.gz")
        Image.fromarray(marked_overlay(image, result.mask, result.clicks, display)).save(staging / "overlay.png")
        for index, (mask, clicks) in enumerate(zip(turn_masks, clicks_by_turn(result))):
            Image.fromarray(marked_overlay(image, mask, clicks, display)).save(staging / f"turn_{index:02d}.png")
        with (staging / "trajectory.json").open("w") as stream:
            json.dump({**metadata, **result.trajectory()}, stream, indent=2)
            stream.write("\n")
        for stale in out_dir.glob("turn_*.png"):
            stale.unlink()
        written = []
        for item in sorted(staging.iterdir()):
            os.replace(item, out_dir / item.name)
            written.append(out_dir / item.name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
