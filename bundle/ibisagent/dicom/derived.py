"""What every object we derive from a source image (SEG, SR) shares: the header copy, PHI-safe building, atomic files.

A derived object copies the source's Patient and Study modules. Source quirks
the standard lets us repair are repaired on a header copy (an empty Specific
Character Set, absent Type 2 patient/study attributes, malformed dates); the
caller's datasets are never modified. highdicom's own warnings can quote the
patient's name, so they are re-emitted without values. Files are written to
a temporary name in the destination folder, fsynced, then renamed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

from .withheld import values_withheld

__all__ = ["DerivedObjectError", "TYPE2", "build_without_phi", "source_header", "staged_file", "write_atomic",
           "write_json_atomic"]

log = logging.getLogger(__name__)

# Type 2 attributes of the Patient and General Study modules: present, possibly empty.
TYPE2 = {"PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS",
         "StudyDate": "DA", "StudyTime": "TM", "ReferringPhysicianName": "PN", "StudyID": "SH",
         "AccessionNumber": "SH"}
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
_GEOMETRY = ("ImageOrientationPatient", "SliceThickness", "SharedFunctionalGroupsSequence",
             "PerFrameFunctionalGroupsSequence")
_PHI_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "ReferringPhysicianName")


class DerivedObjectError(ValueError):
    """highdicom refused to build a derived object from this source (the message holds no patient data)."""


# ----------------------------------------------------------------------------- atomic files

def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Encode in memory, write a hidden temporary beside `path` in full, then os.replace: readers never see half a
    file, and a failed write (a full disk) leaves `path` as it was."""
    buffer = io.BytesIO()
    write(buffer)
    os.replace(staged_file(path, buffer.getvalue()), path)


def staged_file(path: Path, data: bytes) -> Path:
    """`data` in full in a hidden temporary beside `path` (fsynced, mode 0644), for the caller to rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OSError(error.errno, f"cannot write {path}: {error.strerror or error}; nothing written") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    write_atomic(path, lambda stream: stream.write(text.encode("utf-8")))


# ----------------------------------------------------------------------------- source header copy

def _valid_temporal(element) -> bool:
    """Whether a DA/TM/DT value parses; highdicom refuses to copy one that does not."""
    from pydicom.valuerep import DA, DT, TM

    parse = {"DA": DA, "TM": TM, "DT": DT}[element.VR]
    values = element.value if element.VM > 1 else [element.value]
    try:
        for value in values:
            if value not in (None, ""):
                parse(str(value))
    except ValueError:
        return False
    return True


def source_header(source: Dataset) -> tuple[Dataset, list[str]]:
    """A header-only copy highdicom can use, and what was repaired (attribute names only, no values).

    Repairs: an empty Specific Character Set is removed (it means the default
    repertoire, but highdicom refuses ''); absent Type 2 patient/study
    attributes are added empty; malformed dates/times are emptied (Type 2
    allows empty; a malformed one would make the object invalid); a text
    element stored under another text VR (a damaged header) is rewritten under
    its own VR, or left out when its value is not valid there; a Frame of
    Reference with neither orientation nor slice thickness (it places nothing,
    and highdicom would write a SEG without the Slice Thickness it then
    requires) is not copied.
    """
    header = Dataset()
    repaired: list[str] = []
    with values_withheld():
        try:
            for element in source:
                if element.keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
                    continue
                expected = _dictionary_vr(element)
                if expected is not None:  # a damaged header: copied as it is, the SEG would be invalid
                    fixed = _with_vr(element, expected)
                    name = element.keyword or str(element.tag)
                    if fixed is None:
                        repaired.append(f"{name} had VR {element.VR}, not {expected}, and no valid value: left out")
                        continue
                    repaired.append(f"{name} had VR {element.VR}, not {expected}: rewritten as {expected}")
                    element = fixed
                if element.VR in ("DA", "TM", "DT") and not _valid_temporal(element):
                    header.add_new(element.tag, element.VR, None)
                    repaired.append(f"{element.keyword or element.tag} was not a valid {element.VR}: left empty")
                    continue
                header.add(element)
        except NotImplementedError as error:  # pydicom meets a VR it does not know when it reads the value
            raise DerivedObjectError(f"damaged DICOM header in the source: {error}") from None
    header.file_meta = FileMetaDataset(getattr(source, "file_meta", FileMetaDataset()))
    charset = source.get("SpecificCharacterSet")
    if "SpecificCharacterSet" in header and (charset is None or charset == "" or charset == []):
        del header.SpecificCharacterSet
        repaired.append("SpecificCharacterSet was empty: removed (default repertoire)")
    for keyword, vr in TYPE2.items():
        if keyword not in header:
            header.add_new(keyword, vr, None)
            repaired.append(f"{keyword} (Type 2) was absent: added empty")
    if "FrameOfReferenceUID" in header and not any(keyword in header for keyword in _GEOMETRY):
        del header.FrameOfReferenceUID  # it places nothing, and highdicom would write an invalid SEG for it
        repaired.append("FrameOfReferenceUID without orientation or slice thickness: not copied")
    return header, repaired


def _dictionary_vr(element: DataElement) -> str | None:
    """The VR the standard gives a public text element that holds another text VR, else None (nothing to do)."""
    if element.tag.is_private or element.VR not in _TEXT_VRS:
        return None
    try:
        expected = dictionary_VR(element.tag)
    except KeyError:
        return None
    return expected if expected in _TEXT_VRS and expected != element.VR else None


def _with_vr(element: DataElement, vr: str) -> DataElement | None:
    """The element's text under `vr`, or None where the text is not valid there."""
    value = element.value
    if value is None or value == "":
        return DataElement(element.tag, vr, None)
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    try:
        validate_value(vr, text, config.RAISE)
    except ValueError:
        return None
    return DataElement(element.tag, vr, text)


def _phi_values(source: Dataset) -> list[str]:
    values = [str(source.get(keyword, "") or "") for keyword in _PHI_KEYWORDS]
    return [v for v in values if len(v) >= 3]


def build_without_phi(build: Callable[[], Dataset], source: Dataset, what: str,
                      error: type[ValueError] = DerivedObjectError) -> Dataset:
    """Run highdicom; re-emit its warnings and errors except what quotes a person name or identifier.

    A refusal becomes `error` naming `what` was being built ("segmentation", "report").
    """
    with values_withheld() as reading:  # converting the values may itself warn, quoting them
        values = _phi_values(source)

    def clean(text: str) -> str:
        for value in values:
            text = text.replace(value, "<withheld>")
        return text

    try:
        with values_withheld(values) as caught:
            built = build()
    except (ValueError, TypeError, AttributeError, KeyError) as refusal:
        reason = f"{type(refusal).__name__}: {clean(str(refusal))}"
        raise error(f"highdicom refused the {what}: {reason}") from None
    for item in [*reading, *caught]:
        text = str(item.message)
        if "person name" in text or "Invalid value" in text or any(v in text for v in values):
            log.info("a patient attribute in the source is not in standard form (value withheld)")
            continue
        warnings.warn(f"highdicom: {text}", UserWarning, stacklevel=3)
    return built
