"""A picture a person can check at a glance: slices holding the mask, mask overlaid, key slice framed.

Tiles are the slices as the agent saw them (standard display), at most
`max_tiles` spread evenly over the slices that hold the structure (the key
slice always among them), each labelled with its slice index.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..imaging.overlay import overlay_mask
from ..outputs import publish
from .volume import Volume

__all__ = ["montage", "write_montage"]

_KEY_COLOUR = (255, 215, 0)


def _chosen_slices(mask: np.ndarray, key: int | None, max_tiles: int) -> list[int]:
    holding = [int(k) for k in np.nonzero(mask.any(axis=(1, 2)))[0]]
    if not holding:
        return [key] if key is not None else [mask.shape[0] // 2]
    if len(holding) > max_tiles:
        picks = np.linspace(0, len(holding) - 1, max_tiles).round().astype(int)
        holding = sorted({holding[i] for i in picks})
    if key is not None and key not in holding:
        holding = sorted(holding[:-1] + [key]) if len(holding) >= max_tiles else sorted(holding + [key])
    return holding


def montage(volume: Volume, mask: np.ndarray, key: int | None = None, max_tiles: int = 12, columns: int = 4,
            tile: int = 192) -> np.ndarray:
    """RGB uint8 grid of overlaid slices (`mask` in the volume's voxel order)."""
    slices = _chosen_slices(mask, key, max_tiles)
    height, width = volume.display_shape
    scale = tile / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    columns = min(columns, len(slices))
    rows = -(-len(slices) // columns)
    sheet = Image.new("RGB", (columns * size[0], rows * (size[1] + 14)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for position, index in enumerate(slices):
        shown = overlay_mask(volume.slice_rgb(index), volume.to_display(mask[index]))
        x, y = (position % columns) * size[0], (position // columns) * (size[1] + 14)
        sheet.paste(Image.fromarray(shown).resize(size, Image.Resampling.BILINEAR), (x, y + 14))
        caption = f"slice {index}" + (" (key)" if index == key else "") + f"  {int(mask[index].sum())} px"
        draw.text((x + 2, y + 1), caption, fill=_KEY_COLOUR if index == key else (230, 230, 230))
        if index == key:
            draw.rectangle([x, y + 14, x + size[0] - 1, y + 13 + size[1]], outline=_KEY_COLOUR, width=2)
    return np.asarray(sheet)


def write_montage(path: str | Path, volume: Volume, mask: np.ndarray, key: int | None = None) -> Path:
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        Image.fromarray(montage(volume, mask, key)).save(temporary, format="PNG")
        publish(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
