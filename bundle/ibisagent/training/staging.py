"""Write a whole output folder (dataset, checkpoint) so that readers only ever see a complete one.

The implementation is `outputs.staged_folder`, which run folders use too.
"""

from __future__ import annotations

from ..outputs import staged_folder

__all__ = ["staged_folder"]
