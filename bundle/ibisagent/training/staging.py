"""Write a whole output folder (dataset, checkpoint) so that readers only ever see a complete one."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["staged_folder"]


@contextmanager
def staged_folder(out_dir: str | Path, replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; on success it replaces `out_dir` whole.

    An existing `out_dir` is replaced only when `replaceable(out_dir)` says it
    is an earlier output of the same kind (never a user's unrelated folder);
    nothing of the old folder survives, so stale files cannot mix with new
    ones. On any error the staging folder is removed and `out_dir` is untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not replaceable(out_dir):
        raise ValueError(f"{out_dir} exists and is not an earlier output of this kind; choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        yield staging
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes it owner-only
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
