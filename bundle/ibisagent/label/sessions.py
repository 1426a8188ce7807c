"""What the label task remembers between requests: image embeddings and per-(client, image, label) sessions.

Both live in a `BoundedCache`: least recently used first out once a memory
bound is passed, and dropped after an idle expiry. Embeddings depend only on
the pixels, so every client reuses them; a session (the clicks, who made
them, the masks) belongs to one client, one image and one label.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, TypeVar

import numpy as np

from ..tools.base import Click

__all__ = ["BoundedCache", "LabelSession", "SessionKey", "SliceState"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """An LRU map with a bound on the bytes its values hold and an idle expiry; thread-safe."""

    def __init__(self, max_bytes: int, expiry_seconds: float, clock: Callable[[], float] = time.monotonic):
        if max_bytes <= 0 or expiry_seconds <= 0:
            raise ValueError("max_bytes and expiry_seconds must be positive")
        self.max_bytes = max_bytes
        self.expiry_seconds = expiry_seconds
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _drop_expired(self, now: float) -> None:
        for key in [k for k, (_, _, used) in self._entries.items() if now - used > self.expiry_seconds]:
            del self._entries[key]

    def get(self, key: K) -> V | None:
        with self._lock:
            now = self._clock()
            self._drop_expired(now)
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries[key] = (entry[0], entry[1], now)
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Store (or replace) `value`; the oldest entries go until the bound holds (the newest always stays)."""
        with self._lock:
            now = self._clock()
            self._drop_expired(now)
            self._entries[key] = (value, int(size), now)
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.pop(key, None)
            return None if entry is None else entry[0]

    @property
    def nbytes(self) -> int:
        return sum(size for _, size, _ in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


@dataclass(frozen=True)
class SessionKey:
    client_id: str
    image: str  # the datastore's image id
    label: str


@dataclass
class SliceState:
    """One slice's interactive state: all clicks in order, who made each, and what the tool made of them."""

    mask: np.ndarray  # (H, W) bool, display frame
    clicks: list[Click] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)  # "agent" | "person", one per click
    person_points: list[tuple[int, ...]] = field(default_factory=list)  # the person's points as the client sent them
    low_res: np.ndarray | None = None
    predicted_ious: list[float] = field(default_factory=list)
    steps: int = 0  # agent turns and person clicks so far

    @property
    def person_clicked(self) -> bool:
        return "person" in self.origins


@dataclass
class LabelSession:
    key: SessionKey
    slices: dict[int, SliceState] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)  # the trajectory: one record per agent turn or person click
    requests: int = 0

    @property
    def nbytes(self) -> int:
        total = 0
        for state in self.slices.values():
            total += state.mask.nbytes + (state.low_res.nbytes if state.low_res is not None else 0)
        return total + 512 * len(self.events)
