"""Coded terms for DICOM-SEG segments: our target labels -> SNOMED CT concepts.

Viewers and PACS read a segment's meaning from its coded category and type,
not from its free-text label, so every label we segment needs codes that are
true. All code values come from pydicom's code dictionary (`codes.SCT`,
`codes.cid*`), never typed in by hand. A label without a specific code gets
the generic "Tissue / Tissue" pair (what 3D Slicer uses for a new segment)
and a warning: vague but never a wrong organ. The free-text SegmentLabel
keeps the exact wording either way.
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = ["SegmentCode", "UnknownLabelWarning", "code_for_label", "known_labels", "label_spellings",
           "normalise_label"]


class UnknownLabelWarning(UserWarning):
    """A label with no specific code: the segment gets the generic Tissue code."""


class SegmentCode(NamedTuple):
    category: Code  # SegmentedPropertyCategory, CID 7150
    type: Code  # SegmentedPropertyType, CID 7151 (or CID 7166 / 7159 subsets)
    modifier: Code | None  # laterality, CID 244
    known: bool  # False: the generic fallback


_ANATOMY = codes.cid7150.AnatomicalStructure
_TISSUE = codes.cid7150.Tissue
_ABNORMAL = codes.cid7150.MorphologicallyAbnormalStructure
_LEFT, _RIGHT, _BOTH = codes.cid244.Left, codes.cid244.Right, codes.cid244.Bilateral
_TYPES = codes.cid7151


def _sided(name: str, category: Code, type_: Code) -> dict[str, tuple[Code, Code, Code | None]]:
    """`name left` / `name right` entries with the laterality modifier."""
    return {f"{name} left": (category, type_, _LEFT), f"{name} right": (category, type_, _RIGHT)}


# Label (normalised) -> (category, type, modifier). The comments say where a
# code is coarser than the label; the label text stays in SegmentLabel.
_TABLE: dict[str, tuple[Code, Code, Code | None]] = {
    "liver": (_ANATOMY, _TYPES.Liver, None),
    "spleen": (_ANATOMY, _TYPES.Spleen, None),
    "kidney": (_ANATOMY, _TYPES.Kidney, None),
    **_sided("kidney", _ANATOMY, _TYPES.Kidney),
    "gallbladder": (_ANATOMY, _TYPES.Gallbladder, None),
    "esophagus": (_ANATOMY, _TYPES.Esophagus, None),
    "stomach": (_ANATOMY, _TYPES.Stomach, None),
    "aorta": (_ANATOMY, _TYPES.Aorta, None),
    "inferior vena cava": (_ANATOMY, _TYPES.InferiorVenaCava, None),
    # No single concept covers both veins: "Vein" (CID 7166) is true for the union.
    "portal vein and splenic vein": (_TISSUE, codes.cid7166.Vein, None),
    "portal vein": (_ANATOMY, _TYPES.PortalVein, None),
    "splenic vein": (_ANATOMY, _TYPES.SplenicVein, None),
    "pancreas": (_ANATOMY, _TYPES.Pancreas, None),
    "adrenal gland": (_ANATOMY, _TYPES.AdrenalGland, None),
    **_sided("adrenal gland", _ANATOMY, _TYPES.AdrenalGland),
    # Polyps and skin lesions are not all neoplasms: "Lesion" (CID 7159) is true for every one.
    "polyp": (_ABNORMAL, codes.cid7159.Lesion, None),
    "skin lesion": (_ABNORMAL, codes.cid7159.Lesion, None),
    "lesion": (_ABNORMAL, codes.cid7159.Lesion, None),
    "fetal head": (_ANATOMY, _TYPES.Head, None),  # the fetal context is in the label only
    "lungs": (_ANATOMY, _TYPES.Lung, _BOTH),
    "lung": (_ANATOMY, _TYPES.Lung, None),
    **_sided("lung", _ANATOMY, _TYPES.Lung),
    "heart": (_ANATOMY, _TYPES.Heart, None),
    "heart atrium left": (_ANATOMY, _TYPES.LeftAtrium, None),
    "heart atrium right": (_ANATOMY, _TYPES.RightAtrium, None),
    "heart ventricle left": (_ANATOMY, _TYPES.LeftVentricle, None),
    "heart ventricle right": (_ANATOMY, _TYPES.RightVentricle, None),
    # TotalSegmentator's "heart myocardium" is the left-ventricular myocardium, but the
    # label does not say so: "Muscle tissue" (CID 7166) is true for any myocardium.
    "heart myocardium": (_TISSUE, codes.cid7166.MuscleTissue, None),
    # The hip *bone* has no concept in pydicom's dictionary; "Hip" (the region) contains it.
    **_sided("hip", _ANATOMY, _TYPES.Hip),
    "lung upper lobe left": (_ANATOMY, _TYPES.UpperLobeOfLung, _LEFT),
    "lung upper lobe right": (_ANATOMY, _TYPES.UpperLobeOfLung, _RIGHT),
    "lung middle lobe right": (_ANATOMY, _TYPES.MiddleLobeOfRightLung, None),
    "lung lower lobe left": (_ANATOMY, _TYPES.LowerLobeOfLung, _LEFT),
    "lung lower lobe right": (_ANATOMY, _TYPES.LowerLobeOfLung, _RIGHT),
    "colon": (_ANATOMY, _TYPES.Colon, None),
    **_sided("femur", _ANATOMY, _TYPES.Femur),
    # No code for gluteus maximus or the autochthonous back muscles: "Muscle tissue" is true.
    **_sided("gluteus maximus", _TISSUE, codes.cid7166.MuscleTissue),
    **_sided("autochthon", _TISSUE, codes.cid7166.MuscleTissue),
    "vertebrae t9": (_ANATOMY, _TYPES.T9Vertebra, None),
    "vertebra t9": (_ANATOMY, _TYPES.T9Vertebra, None),
    # BraTS regions. The whole tumour includes the peritumoral edema, which is not
    # neoplasm: "Lesion of brain" (CID 7151/7199) is true for it. The core and its
    # enhancing part are tumour tissue: "Neoplasm" (DICOM's own "Enhancing Lesion"
    # is an NCIt code, not SNOMED CT; the label keeps the distinction).
    "brain tumor": (_ABNORMAL, _TYPES.LesionOfBrain, None),
    "brain tumor core": (_ABNORMAL, codes.cid7159.Neoplasm, None),
    "enhancing brain tumor": (_ABNORMAL, codes.cid7159.Neoplasm, None),
    # Microscopy: the cell nucleus (SNOMED CT 84640000, a cell structure).
    "cell nuclei": (_ANATOMY, codes.SCT.Nucleus, None),
    # The head (the deploy app's default example targets on a head CT).
    "brain": (_ANATOMY, _TYPES.Brain, None),
    "skull": (_ANATOMY, _TYPES.Skull, None),
    # Head-and-neck organs at risk (OpenKBP).
    "brainstem": (_ANATOMY, _TYPES.BrainStem, None),
    "spinal cord": (_ANATOMY, _TYPES.SpinalCord, None),
    "parotid gland": (_ANATOMY, _TYPES.ParotidGland, None),
    **_sided("parotid gland", _ANATOMY, _TYPES.ParotidGland),
    "larynx": (_ANATOMY, _TYPES.Larynx, None),
    "mandible": (_ANATOMY, _TYPES.Mandible, None),
}
# Ribs: "Rib" with laterality; the rib number stays in the label (no numbered-rib codes).
_RIB = re.compile(r"^rib (left|right)(?: (\d{1,2}))?$")

# Other spellings people type for the same targets.
_ALIASES = {
    "left kidney": "kidney left", "right kidney": "kidney right",
    "left adrenal gland": "adrenal gland left", "right adrenal gland": "adrenal gland right",
    "ivc": "inferior vena cava", "oesophagus": "esophagus", "gall bladder": "gallbladder",
    "left lung": "lung left", "right lung": "lung right",
    "left atrium": "heart atrium left", "right atrium": "heart atrium right",
    "left ventricle": "heart ventricle left", "right ventricle": "heart ventricle right",
    "myocardium": "heart myocardium",
    "brain tumour": "brain tumor", "brain tumour core": "brain tumor core", "tumor core": "brain tumor core",
    "enhancing brain tumour": "enhancing brain tumor", "enhancing tumor": "enhancing brain tumor",
    "cell nucleus": "cell nuclei", "nuclei": "cell nuclei", "brain stem": "brainstem",
    "left parotid gland": "parotid gland left", "right parotid gland": "parotid gland right",
    "large bowel": "colon", "large intestine": "colon", "voice box": "larynx", "lower jaw": "mandible",
}


def normalise_label(label: str) -> str:
    """Lower case, `_`/`-` as spaces, single spaces, no trailing full stop: 'Kidney_Left.' -> 'kidney left'."""
    text = re.sub(r"[_\-]+", " ", label.strip().lower())
    text = re.sub(r"\s+", " ", text).strip().rstrip(".").strip()
    return _ALIASES.get(text, text)


def label_spellings() -> dict[str, str]:
    """Every spelling we accept for a known label (the labels themselves and their aliases) -> the label."""
    return {**{label: label for label in _TABLE}, **_ALIASES}


def known_labels() -> list[str]:
    """Every label with a specific code (rib labels follow the pattern 'rib left N')."""
    return sorted(_TABLE)


def code_for_label(label: str) -> SegmentCode:
    """(category, type, modifier or None, known) for a target label; unknown labels warn.

    Only the label the caller passes is matched (case-insensitive); free-text
    queries such as "Segment the liver." are not parsed here.
    """
    key = normalise_label(label or "")
    if key in _TABLE:
        return SegmentCode(*_TABLE[key], known=True)
    rib = _RIB.match(key)
    if rib:
        return SegmentCode(_ANATOMY, _TYPES.Rib, _LEFT if rib.group(1) == "left" else _RIGHT, known=True)
    warnings.warn(f"no specific code for label {label!r}: the segment gets the generic category/type "
                  f"'Tissue'/'Tissue' (SCT 85756007); pass one of the known labels for a precise code",
                  UnknownLabelWarning, stacklevel=2)
    return SegmentCode(_TISSUE, codes.cid7166.Tissue, None, known=False)
