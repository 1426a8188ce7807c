"""ONNX graphs exported from the weights in use, once, and kept on disk for every later run.

Inference runs on onnxruntime (faster than torch here, and no torch import at
start-up); the graphs are exported with torch the first time a set of weights
is used. A cache entry is a folder keyed by the sha256 of the weights it was
exported from (and the export's own version), so new shipped weights or a
retrained checkpoint export again and never read a stale graph. An entry is
written in a staging folder and renamed into place whole: a run killed during
the export leaves no half entry, and two processes exporting at once both end
with the same complete folder (the second rename loses and is dropped).

Where: `$IBISAGENT_CACHE/graphs`, else `$XDG_CACHE_HOME/ibisagent/graphs`,
else `~/.cache/ibisagent/graphs`. A machine without torch (a lean deployment
image) uses entries exported beforehand (`ibis export-graphs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["GraphCacheError", "cache_root", "cached_graphs", "file_sha256"]

COMPLETE = "complete.json"  # written last inside an entry: its presence marks the entry whole


class GraphCacheError(ValueError):
    """Graphs that are not cached and cannot be exported here (no torch)."""


def cache_root() -> Path:
    """The folder that holds every cache entry (created on first write)."""
    if os.environ.get("IBISAGENT_CACHE"):
        return Path(os.environ["IBISAGENT_CACHE"]).expanduser() / "graphs"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ibisagent" / "graphs"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _hash_memo_path() -> Path:
    return cache_root() / "sha256.json"


def file_sha256(path: str | Path) -> str:
    """The file's sha256, remembered by (path, size, modification time) so unchanged weights are read once."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    memo_path = _hash_memo_path()
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    known = memo.get(str(path))
    if isinstance(known, dict) and known.get("stamp") == stamp:
        return known["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    memo = {name: known for name, known in memo.items() if Path(name).exists()}  # forget files gone since
    memo[str(path)] = {"stamp": stamp, "sha256": sha}
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".sha256.", dir=memo_path.parent)
        with os.fdopen(handle, "w") as stream:
            json.dump(memo, stream, indent=1)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, memo_path)
    except OSError:
        pass  # a read-only cache still works; the hash is recomputed next time
    return sha


def cached_graphs(kind: str, version: str, weights: Sequence[str | Path], export: Callable[[Path], None],
                  extra: str = "") -> Path:
    """The entry folder for `kind` exported from `weights`; `export(folder)` fills a new one on first use.

    `version` changes when the export itself changes (new graph layout);
    `extra` keys settings that change the graphs but live outside the weights.
    """
    digest = hashlib.sha256(f"{kind}|{version}|{extra}".encode())
    for path in weights:
        digest.update(file_sha256(path).encode())
    entry = cache_root() / f"{kind}-{digest.hexdigest()[:20]}"
    if (entry / COMPLETE).is_file():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    os.chmod(staging, 0o777 & ~_umask())  # as a plain mkdir would: a shared cache stays readable
    try:
        try:
            export(staging)
        except ImportError as error:
            raise GraphCacheError(f"the {kind} graphs for these weights are not in {cache_root()} and cannot be "
                                  f"exported here ({error}); export them where torch is installed "
                                  "(`ibis export-graphs`) and copy the cache") from None
        (staging / COMPLETE).write_text(json.dumps({"kind": kind, "version": version, "extra": extra,
                                                    "weights": [str(Path(p).resolve()) for p in weights]}) + "\n")
        try:
            os.rename(staging, entry)
        except OSError:  # another process put the entry there first (or left a broken one)
            if not (entry / COMPLETE).is_file():
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(staging, entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry
