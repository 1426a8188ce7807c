"""Write outputs so that nothing half-written is ever left behind, even when the process is killed.

A single file is written beside its destination and renamed over it. A run
folder is written whole into a hidden staging folder beside it, then put in
place in one step: renamed there, or exchanged with the earlier run folder
(`renameat2(RENAME_EXCHANGE)`), so a reader sees the old run or the new one,
never a mix. Staging folders of killed processes are removed by the next write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .agent import AgentResult
from .tools.base import Click
from .imaging.orientation import IDENTITY, DisplayTransform
from .imaging.nifti import NiftiSlice
from .imaging.overlay import mark_clicks, overlay_mask

__all__ = ["write_run", "write_json_atomic", "write_text_atomic", "save_torch_atomic", "publish", "check_output_dir",
           "check_output_file", "check_run_folder", "is_run_folder", "staged_folder", "marked_overlay", "clicks_by_turn",
           "write_image_atomic"]

_RUN_FILE = re.compile(r"(mask|overlay)\.png|mask\.nii\.gz|trajectory\.json|turn_\d+\.png")
_RENAME_EXCHANGE = 2
_WRITE_ERRNOS = (5, 27, 28, 30, 122)  # EIO, EFBIG, ENOSPC, EROFS, EDQUOT: the place, not the data


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


def _write_error(path: Path, error: BaseException, unchanged: str) -> OSError:
    """One clear error for a write that failed: what, where, why (a full disk named as such), what is left."""
    errno = getattr(error, "errno", None)
    try:
        full = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free < 1 << 20
    except OSError:
        full = False
    if full or errno == 28:
        reason = "no space left on the device"
    else:
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
    return OSError(errno or (28 if full else None), f"cannot write {path}: {reason}; {unchanged}")


def save_torch_atomic(obj: object, path: str | Path) -> None:
    """`torch.save` that never leaves a half-written checkpoint (training can be killed at any time); a failed
    write (a full disk: torch says only 'unexpected pos') is an OSError naming the file, the earlier one intact."""
    import torch

    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(obj, temporary)
        publish(temporary, path)
    except (OSError, RuntimeError) as error:
        Path(temporary).unlink(missing_ok=True)
        raise _write_error(path, error, "the earlier file, if any, is unchanged") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
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


def write_json_atomic(path: str | Path, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def is_run_folder(path: Path) -> bool:
    """An empty folder, or one holding only what `write_run` writes (hidden temporaries aside)."""
    return all(item.is_file() and _RUN_FILE.fullmatch(item.name) for item in path.iterdir()
               if not item.name.startswith("."))


def check_run_folder(path: str | Path) -> Path:
    """`check_output_dir`, and refuse a folder holding other files: a run folder is replaced whole."""
    path = check_output_dir(path)
    if path.is_dir() and not is_run_folder(path):
        raise ValueError(f"output folder {path} holds files that are not an earlier run's; a run folder is replaced "
                         "whole, so name a new or empty folder, or an earlier run's")
    return path


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system or file system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_cwd = -100
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not here
        return False
    raise OSError(error, f"cannot put {second.name} in place: {os.strerror(error)}", str(second))


def _remove_stale_staging(out_dir: Path) -> None:
    """Staging folders beside `out_dir` left by processes that no longer run."""
    for stale in out_dir.parent.glob(f".{out_dir.name}.staging-*"):
        pid = stale.name.rsplit("-", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staged_folder(out_dir: str | Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; on success it replaces `out_dir` whole, in one step.

    An existing `out_dir` is replaced only when `replaceable(out_dir)` says it
    is an earlier output of the same kind (never a user's unrelated folder);
    nothing of the old folder survives, so stale files cannot mix with new
    ones. On any error the staging folder is removed and `out_dir` is untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir.is_dir() and replaceable(out_dir)):
        raise ValueError(f"{out_dir} exists and is not an earlier output of this kind; choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-{os.getpid()}-", dir=out_dir.parent))
    try:
        yield staging
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes it owner-only
        if not out_dir.exists():
            os.rename(staging, out_dir)
        elif _exchange(staging, out_dir):
            shutil.rmtree(staging)  # now the earlier folder
        else:  # no atomic exchange here: move the old folder aside first (a kill in between leaves it hidden)
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno in _WRITE_ERRNOS:
            raise _write_error(out_dir, error, "nothing written, the earlier folder, if any, is unchanged") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_run(out_dir: str | Path, image: np.ndarray, result: AgentResult, turn_masks: list[np.ndarray],
              metadata: dict, display: DisplayTransform = IDENTITY, nifti: NiftiSlice | None = None) -> list[Path]:
    """mask.png (0/255 at image size), overlay.png, turn_NN.png per turn, trajectory.json, published together.

    `image` and the masks are as the agent saw them; `display` (the reader's)
    puts every picture back in the input's stored pixel order, so mask.png
    lies on the input's pixels. The overlays mark the clicks made so far. The
    trajectory's clicks stay where the agent clicked (callers say in
    `metadata["display"]` how that view was made). A NIfTI slice (`nifti`)
    also gets mask.nii.gz, the mask on the input's voxel grid. `out_dir` is
    new, empty or an earlier run folder (`check_run_folder`).
    """
    out_dir = Path(out_dir)
    with staged_folder(out_dir, is_run_folder) as staging:
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
        names = sorted(item.name for item in staging.iterdir())
    return [out_dir / name for name in names]
