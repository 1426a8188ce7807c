"""Settings that may change over a run: one value, or a list by epoch or round whose last entry repeats.

A resumed run and a run from scratch read the same list, so they follow the same schedule.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["scheduled"]

T = TypeVar("T")


def scheduled(value: T | list[T], index: int) -> T:
    """The setting at a 0-based epoch or round: `value` itself, or its list's entry (the last one repeating)."""
    if not isinstance(value, list):
        return value
    if not value:
        raise ValueError("a scheduled setting needs at least one value")
    return value[min(index, len(value) - 1)]
