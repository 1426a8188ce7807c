"""DICOM pixel data to what the agent sees: decode, modality values, window, photometric interpretation.

The series reader (`read_series`) and the single-file reader (`ibis segment
FILE.dcm`) share these steps, so one slice looks the same whichever way it
is read: colour is decoded to RGB once (pydicom converts YBR), palette
colour goes through its lookup table, grey values become modality values
(per frame in enhanced multi-frame objects) before a window is applied, and
MONOCHROME1 is inverted after windowing the real values.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..imaging.windowing import CT_WINDOWS, default_window, to_display
from .withheld import shown_value, values_withheld

__all__ = ["COLOUR_INTERPRETATIONS", "DICOM_WINDOWS", "FILE_WINDOW", "DicomPixelError", "check_window",
           "decoded_pixels", "display_rgb", "frame_count", "functional_group_item", "is_colour", "modality_values"]

# Photometric interpretations pydicom decodes to RGB (YBR converted), and the one with a colour lookup table.
COLOUR_INTERPRETATIONS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PALETTE = "PALETTE COLOR"
# The window the object itself carries: WindowCenter/WindowWidth (first pair) or a VOI LUT Sequence.
FILE_WINDOW = "file"
_VOI_ATTRIBUTES = ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")
DICOM_WINDOWS = (*CT_WINDOWS, "percentile", FILE_WINDOW)


class DicomPixelError(ValueError):
    """Pixel data that cannot be decoded here; the message names the file and what is missing."""


def frame_count(dataset: Dataset, name: str) -> int:
    """NumberOfFrames (1 when absent or empty); a value that is not a positive whole number is refused."""
    value = dataset.get("NumberOfFrames", 1) or 1
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise DicomPixelError(f"{name}: NumberOfFrames {shown_value(value)} is not a positive whole number")
    return count


def functional_group_item(dataset: Dataset, frame: int, sequence: str) -> Dataset | None:
    """A functional-group macro for one frame of a multi-frame object: per-frame first, then shared."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    shared = dataset.get("SharedFunctionalGroupsSequence")
    for item in ([per_frame[frame]] if per_frame and frame < len(per_frame) else []) + ([shared[0]] if shared else []):
        if sequence in item and item[sequence].value:
            return item[sequence].value[0]
    return None


def is_colour(dataset: Dataset) -> bool:
    """Whether the decoded pixels are RGB (true colour, YBR or palette colour) rather than grey values."""
    photometric = str(dataset.get("PhotometricInterpretation", "") or "")
    samples = dataset.get("SamplesPerPixel", 1)
    return photometric in COLOUR_INTERPRETATIONS or photometric == _PALETTE or samples == 3


def _decoder_status(transfer_syntax: UID) -> tuple[bool, list[str]]:
    """Whether pydicom can decode this transfer syntax here, and what is missing if not."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return False, []
    return decoder.is_available, list(decoder.missing_dependencies)


def _check_decodable(dataset: Dataset, name: str) -> None:
    meta = getattr(dataset, "file_meta", None)
    syntax = UID(str(getattr(meta, "TransferSyntaxUID", "") or "")) if meta is not None else None
    if not syntax or not syntax.is_compressed:
        return
    available, missing = _decoder_status(syntax)
    if not available:
        needs = "; ".join(missing) if missing else "no pydicom decoder exists for it"
        hint = " (pip install pylibjpeg pylibjpeg-openjpeg)" if "2000" in syntax.name else ""
        raise DicomPixelError(f"{name}: pixel data is compressed as {syntax.name} and no decoder is installed "
                              f"here: {needs}{hint}")


def _palette_rgb(indices: np.ndarray, dataset: Dataset, name: str) -> np.ndarray:
    """Palette colour indices through the object's lookup table, scaled from the table's bit depth to uint8."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(indices, dataset)
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    except (AttributeError, KeyError, ValueError, IndexError) as error:
        raise DicomPixelError(f"{name}: PALETTE COLOR without a usable colour lookup table ({error})") from None
    return np.round(rgb.astype(np.float64) * (255.0 / (2 ** bits - 1))).clip(0, 255).astype(np.uint8)


def decoded_pixels(dataset: Dataset, name: str) -> np.ndarray:
    """All frames as stored: (rows, cols[, 3]) or (frames, rows, cols[, 3]); colour as RGB.

    `name` is what messages call the file (never patient data).
    """
    if "PixelData" not in dataset:
        raise DicomPixelError(f"{name}: no pixel data")
    _check_decodable(dataset, name)
    try:
        with values_withheld():
            pixels = dataset.pixel_array
    except Exception as error:  # decoders and truncated files raise many types
        reason = " ".join(str(error).split())[:300]  # decoders list each plugin's error on its own line
        raise DicomPixelError(f"{name}: pixel data cannot be decoded ({type(error).__name__}: {reason})") from None
    _check_shape(pixels, dataset, name)
    if str(dataset.get("PhotometricInterpretation", "")) == _PALETTE:
        return _palette_rgb(pixels, dataset, name)
    return pixels


def _check_shape(pixels: np.ndarray, dataset: Dataset, name: str) -> None:
    """The decoded array must be what the header describes (a false transfer syntax or sample count can make a
    decoder return something else)."""
    frames = frame_count(dataset, name)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    expected = ((frames,) if frames > 1 else ()) + (int(dataset.Rows), int(dataset.Columns)) + \
        ((samples,) if samples > 1 else ())
    if pixels.shape != expected:
        raise DicomPixelError(f"{name}: the pixel data decodes to {'x'.join(map(str, pixels.shape))} values, not the "
                              f"{'x'.join(map(str, expected))} its header describes (NumberOfFrames, Rows, Columns, "
                              "SamplesPerPixel)")


def modality_values(pixels: np.ndarray, dataset: Dataset, frame: int | None = None) -> np.ndarray:
    """Stored grey values of one frame -> modality values (HU for CT): its own rescale in enhanced multi-frame
    objects, else the object's rescale or Modality LUT."""
    from pydicom.pixels import apply_modality_lut

    if frame is not None:
        item = functional_group_item(dataset, frame, "PixelValueTransformationSequence")
        if item is not None and "RescaleSlope" in item:
            slope, intercept = float(item.RescaleSlope), float(item.get("RescaleIntercept", 0.0))
            return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)


def check_window(window: str | None) -> None:
    """Refuse an unknown window name before anything is read (ValueError: a caller's mistake, not the file's)."""
    if window is not None and window not in DICOM_WINDOWS:
        raise ValueError(f"unknown window {window!r}; choose one of {', '.join(DICOM_WINDOWS)}")


def _voi_source(dataset: Dataset, frame: int | None) -> Dataset:
    """Where this frame's own window lives: its functional groups (enhanced multi-frame) or the top level."""
    item = functional_group_item(dataset, frame, "FrameVOILUTSequence") if frame is not None else None
    if item is None:
        return dataset
    voi = Dataset()
    for keyword in (*_VOI_ATTRIBUTES, "PhotometricInterpretation", "BitsStored", "PixelRepresentation"):  # pydicom's
        source = item if keyword in _VOI_ATTRIBUTES else dataset  # checks and output range read the last three
        if keyword in source:
            setattr(voi, keyword, source[keyword].value)
    return voi


def _own_window(plane: np.ndarray, dataset: Dataset, frame: int | None, name: str) -> np.ndarray:
    """The object's own VOI (pydicom applies window or LUT), its output range scaled to uint8."""
    from pydicom.pixels import apply_voi_lut

    voi = _voi_source(dataset, frame)
    if "VOILUTSequence" not in voi and not ("WindowCenter" in voi and "WindowWidth" in voi):
        raise DicomPixelError(f"{name}: no display window of its own (WindowCenter/WindowWidth or a VOI LUT "
                              "Sequence); choose a CT preset or percentile")
    try:
        if "VOILUTSequence" in voi:  # indexed by whole modality values; its ends lie just outside the table
            entries, first = (int(v) for v in voi.VOILUTSequence[0].LUTDescriptor[:2])
            values, ends = np.round(plane).astype(np.int64), np.array([first - 1, first + (entries or 2 ** 16)])
        else:  # a window is a formula on any value; its ends lie far outside it
            values, ends = plane.astype(np.float64), np.array([-1e12, 1e12])
        shown = np.asarray(apply_voi_lut(values, voi), dtype=np.float64)
        low, high = np.sort(np.asarray(apply_voi_lut(ends, voi), dtype=np.float64))  # the output range
    except Exception as error:  # a malformed window or LUT: pydicom raises several types
        raise DicomPixelError(f"{name}: its own display window is unusable ({type(error).__name__})") from None
    if high == low:
        raise DicomPixelError(f"{name}: its own display window maps every value to one grey level")
    return np.clip(np.round((shown - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def display_rgb(plane: np.ndarray, dataset: Dataset, modality: str | None, window: str | None,
                frame: int | None = None, name: str = "the image") -> tuple[np.ndarray, str]:
    """One frame (modality values, or RGB for colour) as display RGB uint8, and the window used.

    Grey frames get `window`: a CT preset, "percentile" or "file" (the
    object's own window or VOI LUT; `frame` finds it in an enhanced
    multi-frame object); by default the modality's (`default_window`).
    MONOCHROME1 is inverted after windowing, so a CT preset still selects
    real Hounsfield units.
    """
    if is_colour(dataset):
        rgb = plane if plane.dtype == np.uint8 else to_display(plane.astype(np.float32), window="percentile")
        return np.ascontiguousarray(rgb[..., :3]), "colour"
    used = window or default_window(modality)
    if used == FILE_WINDOW:
        display = _own_window(plane, dataset, frame, name)
    else:
        display = to_display(plane, modality=modality, window=used)
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        display = 255 - display  # low values are shown bright
    return np.repeat(display[..., None], 3, axis=2), used
