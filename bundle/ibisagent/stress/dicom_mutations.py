"""Mutated DICOM inputs made from real files: what archives send, and worse.

A case is one input: a single file (from pydicom's test files or one slice
of a real series) or a whole series folder, mutated by one or two named
mutations drawn with a seeded generator. Every dataset first gets a canary
patient, so a check can look for it in every message the readers produce.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

__all__ = ["CANARY", "Case", "FILE_MUTATIONS", "SERIES_MUTATIONS", "Seed", "make_case", "seeds_from"]

# The canary patient: any of these strings in a log, message, trajectory or side-car is a leak.
CANARY = {"PatientName": "CANARY^PHILEAK^FUZZ", "PatientID": "CANARYID2207", "PatientBirthDate": "19010203",
          "AccessionNumber": "CANARYACC22", "OtherPatientIDs": "CANARYOTHER22"}


@dataclass(frozen=True)
class Seed:
    """A real input to mutate: one file, or the files of one series."""

    name: str
    files: tuple[Path, ...]

    @property
    def is_series(self) -> bool:
        return len(self.files) > 1


@dataclass(frozen=True)
class Case:
    """One mutated input, written to `folder` (a series) or `folder / file name` (a file)."""

    index: int
    seed: str
    mutations: tuple[str, ...]
    paths: tuple[Path, ...]
    is_series: bool


def seeds_from(folders: list[Path], pydicom_files: list[Path]) -> list[Seed]:
    """Series from real folders (each folder one series; also each folder's first file alone) and single files."""
    seeds = []
    for folder in folders:
        files = tuple(sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")))
        if files:
            seeds.append(Seed(folder.name, files))
            seeds.append(Seed(f"{folder.name}/{files[0].name}", files[:1]))
    seeds += [Seed(f"pydicom/{path.name}", (path,)) for path in sorted(pydicom_files) if path.is_file()]
    return seeds


# ----------------------------------------------------------------------------- dataset mutations

Mutation = Callable[[random.Random, list[Dataset]], None]
_ABSURD = {
    "Rows": [0, 1, 3, 65535], "Columns": [0, 1, 2, 65535],
    "NumberOfFrames": ["0", "-3", "999999999", "abc", "1.5", "2"],
    "BitsAllocated": [0, 1, 7, 12, 64], "BitsStored": [0, 17, 33], "HighBit": [0, 40], "SamplesPerPixel": [0, 2, 3, 4],
    "PixelRepresentation": [1, 2], "PlanarConfiguration": [1, 7],
    "PhotometricInterpretation": ["", "PALETTE COLOR", "YBR_FULL", "MONOCHROME3", "RGB", "MONOCHROME1"],
}
_UIDS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID", "FrameOfReferenceUID"]
_BAD_UIDS = ["", "1.2.abc", "1." * 40 + "1", ".1.2", "0.01.2", " "]


def _pick(rng: random.Random, datasets: list[Dataset]) -> Dataset:
    return rng.choice(datasets)


def absurd_value(rng: random.Random, datasets: list[Dataset]) -> None:
    keyword = rng.choice(sorted(_ABSURD))
    _pick(rng, datasets).__setattr__(keyword, rng.choice(_ABSURD[keyword]))


def delete_element(rng: random.Random, datasets: list[Dataset]) -> None:
    dataset = _pick(rng, datasets)
    keyword = rng.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "SOPClassUID", "Modality",
                          "PhotometricInterpretation", "SamplesPerPixel", "PixelRepresentation", "ImagePositionPatient",
                          "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "InstanceNumber", "SliceThickness",
                          "FrameOfReferenceUID", "StudyDate", "PatientName"])
    if keyword in dataset:
        delattr(dataset, keyword)


def bad_uid(rng: random.Random, datasets: list[Dataset]) -> None:
    dataset = _pick(rng, datasets)
    keyword = rng.choice(_UIDS)
    if rng.random() < 0.3 and keyword in dataset:
        delattr(dataset, keyword)
    else:
        setattr(dataset, keyword, rng.choice(_BAD_UIDS))


def broken_pixels(rng: random.Random, datasets: list[Dataset]) -> None:
    dataset = _pick(rng, datasets)
    if "PixelData" not in dataset:
        return
    data = dataset.PixelData
    choice = rng.randrange(5)
    if choice == 0:
        dataset.PixelData = data[:rng.randrange(max(1, len(data)))]
    elif choice == 1:
        dataset.PixelData = data + bytes(rng.randrange(1, 4096))
    elif choice == 2:
        dataset.PixelData = b""
    elif choice == 3:
        del dataset.PixelData
    else:
        dataset.PixelData = bytes(rng.randrange(256) for _ in range(min(len(data), 512))) + data[512:]


def bad_geometry(rng: random.Random, datasets: list[Dataset]) -> None:
    dataset = _pick(rng, datasets)
    choice = rng.randrange(6)
    if choice == 0:
        dataset.ImageOrientationPatient = rng.choice([[0] * 6, [1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1], [2, 0, 0, 0, 2, 0]])
    elif choice == 1:
        dataset.ImageOrientationPatient = ["nan", "0", "0", "0", "1", "0"]
    elif choice == 2:
        dataset.ImagePositionPatient = rng.choice([["inf", "0", "0"], [0, 0], ["1e308", "-1e308", "0"]])
    elif choice == 3:
        dataset.PixelSpacing = rng.choice([[0, 0], [-1, 1], ["nan", "1"], [1]])
    elif choice == 4:
        dataset.PatientOrientation = rng.choice([["X", "Y"], ["L"], ["", ""], ["A", "A"]])
    else:
        dataset.SliceThickness = "-5"


def bad_values(rng: random.Random, datasets: list[Dataset]) -> None:
    """Modality LUT, window and character-set values no reader expects."""
    dataset = _pick(rng, datasets)
    choice = rng.randrange(5)
    if choice == 0:
        dataset.RescaleSlope = rng.choice(["0", "nan", "1e308", "-1", "inf"])
    elif choice == 1:
        dataset.RescaleIntercept = rng.choice(["1e308", "-inf", "nan"])
    elif choice == 2:
        dataset.WindowCenter, dataset.WindowWidth = rng.choice([("40", "0"), ("nan", "400"), ("", ""), ("1e300", "1")])
    elif choice == 3:
        dataset.SpecificCharacterSet = rng.choice(["ISO_IR 999", "ISO 2022 IR 87", "", "GB18030\\ISO_IR 100"])
    else:
        item = Dataset()
        item.LUTDescriptor = [rng.choice([0, 4096, 65535]), rng.choice([0, -2048, 32767]), rng.choice([8, 16, 0])]
        item.LUTData = [0, 1, 2]
        dataset.VOILUTSequence = DicomSequence([item])


def huge_sequence(rng: random.Random, datasets: list[Dataset]) -> None:
    """A sequence of many items (deep nesting is a byte mutation: pydicom's writer is exponential in depth)."""
    items = []
    for _ in range(rng.choice([500, 5000])):
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3"
        items.append(item)
    _pick(rng, datasets).ReferencedImageSequence = DicomSequence(items)


def odd_class(rng: random.Random, datasets: list[Dataset]) -> None:
    """Claims to be something else: a SEG, an RT Dose, a report, a multi-frame enhanced image."""
    dataset = _pick(rng, datasets)
    dataset.SOPClassUID = rng.choice(["1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.2",
                                      "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.2.1",
                                      "1.2.840.10008.5.1.4.1.1.7"])
    if rng.random() < 0.5:
        dataset.Modality = rng.choice(["SEG", "", "RTDOSE", "SR", "OT"])


def functional_groups(rng: random.Random, datasets: list[Dataset]) -> None:
    """Enhanced multi-frame functional groups that disagree with the frames."""
    dataset = _pick(rng, datasets)
    item = Dataset()
    plane = Dataset()
    plane.ImagePositionPatient = [0, 0, rng.choice([0, "nan"])]
    item.PlanePositionSequence = DicomSequence([plane])
    count = rng.choice([0, 1, 5])
    dataset.PerFrameFunctionalGroupsSequence = DicomSequence([item] * count)
    dataset.SharedFunctionalGroupsSequence = DicomSequence([Dataset()])
    dataset.NumberOfFrames = rng.choice([1, 2, 5])


def transfer_syntax_claim(rng: random.Random, datasets: list[Dataset]) -> None:
    """The file meta claims a transfer syntax the data is not in."""
    dataset = _pick(rng, datasets)
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        meta.TransferSyntaxUID = rng.choice(["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5",
                                             "1.2.840.10008.1.2.1.99", "1.2.3.4", "1.2.840.10008.1.2.4.201"])


# Series-only: the relations between files.
def duplicate_sop_instance(rng: random.Random, datasets: list[Dataset]) -> None:
    first, second = rng.sample(datasets, 2)
    second.SOPInstanceUID = first.SOPInstanceUID


def mixed_series(rng: random.Random, datasets: list[Dataset]) -> None:
    dataset = _pick(rng, datasets)
    if rng.random() < 0.5:
        dataset.SeriesInstanceUID = generate_uid()
    else:
        dataset.StudyInstanceUID = generate_uid()


def mixed_geometry(rng: random.Random, datasets: list[Dataset]) -> None:
    """Slices that do not make one stack: a shared position, another orientation, another size."""
    first, second = rng.sample(datasets, 2)
    choice = rng.randrange(3)
    if choice == 0 and "ImagePositionPatient" in first:
        second.ImagePositionPatient = first.ImagePositionPatient
    elif choice == 1:
        second.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    elif "PixelData" in second:
        second.Rows, second.Columns = int(second.Columns), int(second.Rows)


FILE_MUTATIONS: dict[str, Mutation] = {
    "absurd_value": absurd_value, "delete_element": delete_element, "bad_uid": bad_uid,
    "broken_pixels": broken_pixels, "bad_geometry": bad_geometry, "bad_values": bad_values,
    "huge_sequence": huge_sequence, "odd_class": odd_class, "functional_groups": functional_groups,
    "transfer_syntax_claim": transfer_syntax_claim,
}
SERIES_MUTATIONS: dict[str, Mutation] = {
    "duplicate_sop_instance": duplicate_sop_instance, "mixed_series": mixed_series, "mixed_geometry": mixed_geometry,
}


# ----------------------------------------------------------------------------- byte mutations

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}  # 12-byte headers, 4-byte lengths


def _element_offsets(data: bytes) -> list[tuple[int, int]]:
    """(tag offset, value offset) of top-level elements after the file meta (explicit VR little endian)."""
    offsets: list[tuple[int, int]] = []
    if len(data) < 144 or data[128:132] != b"DICM":
        return offsets
    stream = io.BytesIO(data)
    try:
        stream.seek(144 + int.from_bytes(data[140:144], "little"))
        for element in data_element_generator(stream, False, True, defer_size=1024):
            offsets.append((element.value_tell - (12 if element.VR in _LONG_VRS else 8), element.value_tell))
            if len(offsets) > 400:
                break
    except Exception:  # the generator may stop anywhere in odd files; what it found is enough
        pass
    return offsets


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.choice([rng.randrange(max(1, min(len(data), 2048))), rng.randrange(max(1, len(data)))])]


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.choice([1, 4, 32])):
        position = rng.randrange(min(len(buffer), 4096)) if buffer else 0
        if buffer:
            buffer[position] = rng.randrange(256)
    return bytes(buffer)


def wrong_vr(rng: random.Random, data: bytes) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return flip_bytes(rng, data)
    tag_offset, _ = rng.choice(offsets)
    buffer = bytearray(data)
    buffer[tag_offset + 4:tag_offset + 6] = rng.choice([b"DS", b"UN", b"SQ", b"OB", b"XX", b"US", b"UT", b"\x00\x00"])
    return bytes(buffer)


def wrong_length(rng: random.Random, data: bytes) -> bytes:
    offsets = _element_offsets(data)
    if not offsets:
        return truncate(rng, data)
    tag_offset, value_offset = rng.choice(offsets)
    buffer = bytearray(data)
    width = 2 if value_offset - tag_offset == 8 else 4
    start = value_offset - width
    value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(data)])
    buffer[start:value_offset] = (value & (2 ** (8 * width) - 1)).to_bytes(width, "little")
    return bytes(buffer)


def deep_nesting(rng: random.Random, data: bytes) -> bytes:
    """A ContentSequence nested hundreds or thousands of items deep (undefined lengths), before the pixel data."""
    depth = rng.choice([100, 1000, 5000])
    undefined = (0xFFFFFFFF).to_bytes(4, "little")
    opening = b"\x40\x00\x30\xa7SQ\x00\x00" + undefined + b"\xfe\xff\x00\xe0" + undefined
    closing = b"\xfe\xff\x0d\xe0" + bytes(4) + b"\xfe\xff\xdd\xe0" + bytes(4)
    nested = opening * depth + closing * depth
    offsets = _element_offsets(data)
    pixel = next((tag for tag, _ in offsets if data[tag:tag + 4] == b"\xe0\x7f\x10\x00"), len(data))
    return data[:pixel] + nested + data[pixel:]


def not_dicom(rng: random.Random, data: bytes) -> bytes:
    return rng.choice([b"", bytes(rng.randrange(256) for _ in range(rng.choice([10, 200, 5000]))),
                       b"\x89PNG\r\n\x1a\n" + data[8:200], bytes(128) + b"DICM", bytes(128) + b"DICM" + data[132:300]])


BYTE_MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "truncate": truncate, "flip_bytes": flip_bytes, "wrong_vr": wrong_vr, "wrong_length": wrong_length,
    "deep_nesting": deep_nesting, "not_dicom": not_dicom,
}


# ----------------------------------------------------------------------------- cases

def _with_canary(dataset: Dataset) -> None:
    for keyword, value in CANARY.items():
        setattr(dataset, keyword, value)


def _serialise(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=False)
    return buffer.getvalue()


def make_case(index: int, seed: Seed, rng: random.Random, folder: Path) -> Case:
    """Draw one or two mutations for `seed`, apply them to canary copies and write the input under `folder`."""
    config.settings.reading_validation_mode = config.IGNORE
    config.settings.writing_validation_mode = config.IGNORE
    datasets = [pydicom.dcmread(path, force=True) for path in seed.files]
    for dataset in datasets:
        _with_canary(dataset)
    kinds = list(FILE_MUTATIONS) + list(BYTE_MUTATIONS) + (list(SERIES_MUTATIONS) * 2 if seed.is_series else [])
    names = tuple(rng.sample(kinds, rng.choice([1, 1, 2])))
    for name in names:
        mutation = FILE_MUTATIONS.get(name) or SERIES_MUTATIONS.get(name)
        if mutation is not None:
            try:
                mutation(rng, datasets)
            except (ValueError, TypeError, AttributeError, KeyError):  # pydicom refused to hold that value
                pass
    folder.mkdir(parents=True, exist_ok=True)
    target = rng.randrange(len(datasets))  # byte mutations hit one file of a series
    paths = []
    for position, (path, dataset) in enumerate(zip(seed.files, datasets, strict=True)):
        try:
            data = _serialise(dataset)
        except Exception:  # a value pydicom cannot even write: keep the original bytes, canary-free parts stay
            data = path.read_bytes()
        if position == target:
            for name in names:
                if name in BYTE_MUTATIONS:
                    data = BYTE_MUTATIONS[name](rng, data)
        out = folder / path.name
        out.write_bytes(data)
        paths.append(out)
    return Case(index, seed.name, names, tuple(paths), seed.is_series)
