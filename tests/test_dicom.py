"""DICOM in, DICOM-SEG out, on the real series in ../shared/data/dicom.

Every SEG we write is checked by tools nobody here wrote: dciodvfy (dicom3tools)
must report 0 errors, and dcmqi's segimage2itkimage must read back the same
pixels as highdicom. Each bad input the reader refuses or repairs has a test;
docs/dicom.md tabulates them. No model runs here: masks are drawn or thresholded.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from ibisagent.dicom import (
    DicomSeriesError,
    DicomSeriesWarning,
    SegWriteError,
    UnknownLabelWarning,
    code_for_label,
    list_segments,
    list_series,
    read_series,
    segment_mask,
    write_segmentation,
)
from ibisagent.dicom import pixels as pixels_module
from ibisagent.imaging.io import ImageReadError, read_image
from ibisagent.imaging.orientation import DisplayTransform
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from conftest import turn_prone

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DICOM = SHARED / "dicom"
CT3 = DICOM / "dcmqi-ct-3slice"
PHILIPS = DICOM / "philips-head-ct"
DCMQI_SEG = DICOM / "dcmqi-seg"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data absent: {path} not found (../shared/data is provided beside the repo)")
    return path


@pytest.fixture(scope="module")
def ct3() -> Path:
    return _need(CT3)


@pytest.fixture(scope="module")
def philips() -> Path:
    return _need(PHILIPS)


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    return tool


@pytest.fixture(scope="module")
def segimage2itkimage() -> str:
    beside = Path(sys.executable).parent / "segimage2itkimage"
    tool = str(beside) if beside.is_file() else shutil.which("segimage2itkimage")
    if tool is None:
        pytest.skip("segimage2itkimage not installed (pip install dcmqi)")
    return tool


def dciodvfy_errors(tool: str, path: Path) -> list[str]:
    """The "Error" lines of dciodvfy (its other lines may quote patient data: not shown)."""
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def dcmqi_masks(tool: str, seg: Path, out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each segment as dcmqi reads it: ((H, W) bool of the first slice, NIfTI affine)."""
    import nibabel as nib

    out.mkdir(parents=True, exist_ok=True)  # segimage2itkimage does not create it
    run = subprocess.run([tool, "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nifti"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    masks = []
    for path in sorted(out.glob("*.nii.gz"), key=lambda p: int(p.name.split(".")[0])):
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
        masks.append((data[:, :, 0].T > 0, image.affine))  # ITK writes columns first
    return masks


def copy_series(source: Path, target: Path, change=None, skip: set[str] = frozenset()) -> list[Path]:
    """Copies of real files, each optionally changed by `change(dataset, index)`."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values some tests set on purpose
        for index, path in enumerate(sorted(p for p in source.iterdir() if p.is_file())):
            if path.name in skip:
                continue
            dataset = pydicom.dcmread(path)
            if change is not None:
                change(dataset, index)
            dataset.save_as(target / path.name)
            written.append(target / path.name)
    return written


def disk(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


# ----------------------------------------------------------------------------- reading real series

def test_ct_3slice_is_sorted_by_geometry_and_windowed(ct3):
    series = read_series(ct3, slice_index=1)
    assert series.slice_count == 3 and series.geometry.sorted_by == "geometry"
    assert [p.name for p in series.files] == ["03.dcm", "02.dcm", "01.dcm"]  # ascending along the normal (+z)
    assert series.geometry.slice_positions == pytest.approx((-128.69, -127.69, -126.69), abs=1e-3)
    assert series.geometry.slice_spacing == pytest.approx(1.0) and series.geometry.uniform_spacing
    assert series.source.SOPInstanceUID == pydicom.dcmread(ct3 / "02.dcm").SOPInstanceUID
    assert series.rgb.shape == (512, 512, 3) and series.rgb.dtype == np.uint8
    assert series.window == "abdomen" and series.modality == "CT" and not series.warnings
    # The modality LUT gives Hounsfield units: air outside the body is about -1000 HU.
    assert series.volume.dtype == np.float32 and series.volume.min() <= -1000 < 100 < series.volume.max()
    assert series.source.SpecificCharacterSet in ("", None, [])  # the real quirk, read without complaint


def test_slice_must_be_chosen_when_several(ct3):
    with pytest.raises(DicomSeriesError, match=r"has 3 slices; choose one .*--slice N.*0\.\.2"):
        read_series(ct3)
    with pytest.raises(DicomSeriesError, match="out of range"):
        read_series(ct3, slice_index=3)


def test_single_file_needs_no_choice(ct3):
    series = read_series([ct3 / "01.dcm"])
    assert series.slice_count == 1 and series.index == 0 and series.geometry.sorted_by == "single"


def test_philips_head_ct_windows(philips):
    brain = read_series(philips, slice_index=14, window="brain")
    bone = read_series(philips, slice_index=14, window="bone")
    assert brain.slice_count == 28 and brain.geometry.slice_spacing == pytest.approx(5.0)
    assert brain.geometry.uniform_spacing and brain.geometry.tilt_degrees < 0.1
    assert brain.window == "brain" and not np.array_equal(brain.rgb, bone.rgb)
    assert np.array_equal(brain.volume, bone.volume)
    with pytest.raises(ValueError, match="unknown window"):
        read_series(philips, slice_index=0, window="liver")


def test_monochrome1_is_shown_inverted(ct3, tmp_path):
    copy_series(ct3, tmp_path, lambda ds, i: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    normal, inverted = read_series(ct3, slice_index=1), read_series(tmp_path, slice_index=1)
    assert np.array_equal(inverted.rgb, 255 - normal.rgb)
    assert np.array_equal(inverted.volume, normal.volume)  # the values themselves are untouched


def enhanced_copy(ct3: Path, path: Path) -> Dataset:
    """highdicom's legacy conversion of the 3 slices into one enhanced multi-frame CT, saved at `path`."""
    import highdicom as hd

    sources = [pydicom.dcmread(p) for p in sorted(ct3.iterdir())]
    for dataset in sources:
        del dataset.SpecificCharacterSet  # highdicom refuses an empty one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = hd.legacy.LegacyConvertedEnhancedCTImage(sources, generate_uid(), 99, generate_uid(), 1)
    converted.save_as(path)
    return converted


def test_enhanced_multiframe_reads_like_its_slices(ct3, tmp_path, dciodvfy):
    enhanced_copy(ct3, tmp_path / "multiframe.dcm")
    multi, single = read_series(tmp_path / "multiframe.dcm", slice_index=1), read_series(ct3, slice_index=1)
    assert multi.slice_count == 3 and multi.frame_index == 1 and len(multi.datasets) == 1
    assert np.array_equal(multi.volume, single.volume) and np.array_equal(multi.rgb, single.rgb)
    mask = disk((512, 512), (250, 260), 30)
    written = write_segmentation(tmp_path / "seg.dcm", multi.source, mask, "liver", frame_index=multi.frame_index)
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert np.array_equal(segment_mask(written.path, multi.sop_instance_uid, 1, frame_number=2), mask)


# ----------------------------------------------------------------------------- writing SEGs

def test_seg_from_a_drawn_disk_is_valid_and_reads_back(ct3, tmp_path, dciodvfy, segimage2itkimage):
    series = read_series(ct3, slice_index=1)
    mask = disk(series.rgb.shape[:2], (260, 300), 40)
    written = write_segmentation(tmp_path / "seg.dcm", series.source, mask, "Liver", human_clicked=True,
                                 trajectory={"turns": [], "status": "terminated"})
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert np.array_equal(segment_mask(written.path, series.sop_instance_uid), mask)
    (dcmqi_mask, affine), = dcmqi_masks(segimage2itkimage, written.path, tmp_path / "dcmqi")
    assert np.array_equal(dcmqi_mask, mask)
    # dcmqi placed it on the chosen slice: NIfTI origin (RAS) = ImagePositionPatient (LPS) with x, y negated.
    position = np.asarray(series.source.ImagePositionPatient, float)
    assert affine[:3, 3] == pytest.approx(position * [-1, -1, 1], abs=1e-3)

    seg = pydicom.dcmread(written.path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == series.source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == series.source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    reference = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == series.sop_instance_uid  # the middle slice, not the first file
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC" and segment.SegmentLabel == "Liver"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ibisagent" and algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == \
        "Artificial Intelligence"
    assert seg.ContentLabel == "IBISAGENT" and seg.Manufacturer == "ibisagent" and str(seg.ContentCreatorName)
    sidecar = json.loads(written.sidecar.read_text())
    assert sidecar["source_sop_instance_uid"] == series.sop_instance_uid and sidecar["trajectory"]["status"] == \
        "terminated"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["seg.dcm", "seg.json"]  # no temp files


def test_threshold_mask_on_philips_with_two_sided_segments(philips, tmp_path, dciodvfy, segimage2itkimage):
    series = read_series(philips, slice_index=14, window="brain")
    bone = series.volume[14] > 300  # the phantom's dense shell, in HU
    left = np.zeros_like(bone)
    left[:, 256:] = bone[:, 256:]  # image right = patient left in this orientation
    with pytest.warns(UnknownLabelWarning, match="'bone region'"):
        written = write_segmentation(tmp_path / "seg.dcm", series.source, [bone, left], ["bone region", "kidney left"])
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert written.codes[0].known is False and written.codes[1].modifier.meaning == "Left"
    info = list_segments(written.path)
    assert [(s.number, s.label, s.modifier) for s in info] == [(1, "bone region", None), (2, "kidney left", "Left")]
    assert info[0].type_code == "SCT 85756007" and info[1].type_code == "SCT 64033007"
    for number, expected in ((1, bone), (2, left)):
        assert np.array_equal(segment_mask(written.path, series.sop_instance_uid, number), expected)
    dcmqi = dcmqi_masks(segimage2itkimage, written.path, tmp_path / "dcmqi")
    assert [np.array_equal(m, e) for (m, _), e in zip(dcmqi, (bone, left), strict=True)] == [True, True]
    assert pydicom.dcmread(written.path).SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_empty_mask_is_a_valid_explicit_result(ct3, tmp_path, dciodvfy, segimage2itkimage):
    series = read_series(ct3, slice_index=0)
    written = write_segmentation(tmp_path / "empty.dcm", series.source, np.zeros((512, 512), bool), "spleen")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert pydicom.dcmread(written.path).NumberOfFrames == 1  # an explicit empty frame, not a missing one
    assert not segment_mask(written.path, series.sop_instance_uid).any()
    (dcmqi_mask, _), = dcmqi_masks(segimage2itkimage, written.path, tmp_path / "dcmqi")
    assert not dcmqi_mask.any()


def test_writer_refuses_bad_masks(ct3, tmp_path):
    source = read_series(ct3, slice_index=0).source
    with pytest.raises(SegWriteError, match="shape"):
        write_segmentation(tmp_path / "a.dcm", source, np.zeros((10, 10), bool), "liver")
    with pytest.raises(SegWriteError, match="binary"):
        write_segmentation(tmp_path / "a.dcm", source, np.full((512, 512), 3, np.uint8), "liver")
    with pytest.raises(SegWriteError, match="label"):
        write_segmentation(tmp_path / "a.dcm", source, np.zeros((2, 512, 512), bool), ["liver"])
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- dcmqi's own SEGs

def test_dcmqi_liver_seg_maps_to_the_three_slices(ct3):
    seg_path = _need(DCMQI_SEG / "liver.dcm")
    uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in ct3.iterdir()}
    info = list_segments(seg_path)
    assert [(s.label, s.type) for s in info] == [("Liver", "Liver")]
    for uid in uids:
        assert segment_mask(seg_path, uid).sum() > 1000
    with pytest.raises(SegWriteError, match="does not reference"):
        segment_mask(seg_path, "1.2.3.4")


def test_dcmqi_partial_overlaps_has_five_segments(ct3):
    seg_path = _need(DCMQI_SEG / "partial_overlaps.dcm")
    info = list_segments(seg_path)
    assert [s.number for s in info] == [1, 2, 3, 4, 5]
    middle = str(pydicom.dcmread(ct3 / "02.dcm").SOPInstanceUID)
    areas = [int(segment_mask(seg_path, middle, n).sum()) for n in range(1, 6)]
    assert areas[0] > 0 and areas[1] > 0 and areas[3] == 0  # segment 4 has no frame on this slice: empty
    overlap = segment_mask(seg_path, middle, 1) & segment_mask(seg_path, middle, 2)
    assert overlap.any()  # overlapping segments survive (BINARY, one frame per segment)


# ----------------------------------------------------------------------------- bad inputs

def test_empty_folder(tmp_path):
    with pytest.raises(DicomSeriesError, match="the folder is empty"):
        read_series(tmp_path)
    with pytest.raises(DicomSeriesError, match="no such file or folder"):
        read_series(tmp_path / "missing")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DicomSeriesError, match=r"no DICOM image found; skipped 1 file: not a DICOM file \(1\)$"):
        read_series(tmp_path)
    (tmp_path / "more.txt").write_text("not an image either")
    with pytest.raises(DicomSeriesError, match=r"no DICOM image found; skipped 2 files: not a DICOM file \(2\)$"):
        read_series(tmp_path)


def test_garbage_file_is_skipped_with_a_reason(ct3, tmp_path):
    copy_series(ct3, tmp_path)
    (tmp_path / "junk.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    series = read_series(tmp_path, slice_index=0)
    assert series.slice_count == 3
    assert [(s.path.name, s.reason) for s in series.skipped] == [("junk.bin", "not a DICOM file")]


def test_truncated_header_is_refused(ct3, tmp_path):
    copy_series(ct3, tmp_path)
    (tmp_path / "02.dcm").write_bytes((ct3 / "02.dcm").read_bytes()[:600])
    with pytest.raises(DicomSeriesError, match=r"02\.dcm: a CT Image Storage object without pixel data .*truncated"):
        read_series(tmp_path, slice_index=0)


def test_dicom_preamble_with_garbage_is_refused(ct3, tmp_path):
    copy_series(ct3, tmp_path)
    raw = (ct3 / "02.dcm").read_bytes()
    (tmp_path / "02.dcm").write_bytes(raw[:132] + np.random.default_rng(1).bytes(3000))  # "DICM", then noise
    with pytest.raises(DicomSeriesError, match=r"02\.dcm: damaged DICOM file"):
        read_series(tmp_path, slice_index=0)


def test_truncated_pixel_data_is_refused(ct3, tmp_path):
    copy_series(ct3, tmp_path)
    (tmp_path / "02.dcm").write_bytes((ct3 / "02.dcm").read_bytes()[:300_000])
    with pytest.raises(DicomSeriesError, match=r"02\.dcm: pixel data cannot be decoded"):
        read_series(tmp_path, slice_index=0)


def test_non_image_objects_are_skipped(ct3, tmp_path):
    files = copy_series(ct3, tmp_path)
    shutil.copy(_need(DCMQI_SEG / "liver.dcm"), tmp_path / "seg.dcm")
    report = pydicom.dcmread(files[0])  # a text SR in the *same* series: still not an image
    del report.PixelData
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.SOPInstanceUID = report.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    report.save_as(tmp_path / "report.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rtstruct.dcm")
    series = read_series(tmp_path, slice_index=0)
    reasons = {s.path.name: s.reason for s in series.skipped}
    assert series.slice_count == 3
    assert reasons == {"seg.dcm": "a Segmentation, not a source image",
                       "report.dcm": "a structured report, not an image",
                       "rtstruct.dcm": "no pixel data (RT Structure Set Storage)"}


def test_dicomdir_is_skipped(ct3, tmp_path):
    from pydicom.fileset import FileSet

    files = FileSet()
    for path in sorted(ct3.iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.SpecificCharacterSet = "ISO_IR 100"  # pydicom's DICOMDIR records need a non-empty one
        files.add(dataset)
    files.write(tmp_path / "media")
    series = read_series(tmp_path / "media", slice_index=0)
    assert series.slice_count == 3
    assert [s.reason for s in series.skipped] == ["a DICOMDIR (media directory), not an image"]


def test_two_series_in_one_folder(ct3, tmp_path):
    copy_series(ct3, tmp_path)
    other = generate_uid()

    def second_series(dataset, index):
        dataset.SeriesInstanceUID, dataset.SeriesNumber, dataset.SeriesDescription = other, 7, "copy"
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    copy_series(ct3, tmp_path / "copy", second_series)
    with pytest.raises(DicomSeriesError) as refused:
        read_series(tmp_path, slice_index=0)
    message = str(refused.value)
    assert "holds 2 series" in message and "--series-uid" in message and other in message
    assert "series 7 'copy' CT: 3 image(s)" in message and "series 2 '(no description)' CT: 3 image(s)" in message
    assert len(list_series(tmp_path)) == 2
    chosen = read_series(tmp_path, slice_index=0, series_uid=other)
    assert chosen.series_instance_uid == other and chosen.slice_count == 3
    with pytest.raises(DicomSeriesError, match="not found"):
        read_series(tmp_path, slice_index=0, series_uid="1.2.3")


def test_missing_patient_birth_date_still_gives_a_valid_seg(ct3, tmp_path, dciodvfy):
    copy_series(ct3, tmp_path / "in", lambda ds, i: delattr(ds, "PatientBirthDate"))
    series = read_series(tmp_path / "in", slice_index=1)
    assert "PatientBirthDate" not in series.source
    written = write_segmentation(tmp_path / "seg.dcm", series.source, disk((512, 512), (250, 250), 20), "liver")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    seg = pydicom.dcmread(written.path)
    assert "PatientBirthDate" in seg and not seg.PatientBirthDate  # Type 2: present, empty
    assert "PatientBirthDate" not in series.source  # the caller's dataset is untouched


def test_empty_specific_character_set_gives_a_valid_seg(ct3, tmp_path, dciodvfy):
    series = read_series(ct3, slice_index=2)
    assert "SpecificCharacterSet" in series.source and not series.source.SpecificCharacterSet
    written = write_segmentation(tmp_path / "seg.dcm", series.source, disk((512, 512), (200, 200), 25), "aorta")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert pydicom.dcmread(written.path).get("SpecificCharacterSet") != ""
    assert "SpecificCharacterSet" in series.source  # repaired on a copy only


@pytest.mark.parametrize("value", ["", "   "])
def test_blank_sop_instance_uid_is_refused(ct3, tmp_path, value):
    copy_series(ct3, tmp_path, lambda ds, i: setattr(ds, "SOPInstanceUID", value) if i == 1 else None)
    with pytest.raises(DicomSeriesError, match=r"02\.dcm: SOPInstanceUID is missing or blank; a DICOM-SEG must"):
        read_series(tmp_path, slice_index=0)


def test_blank_series_uid_and_invalid_uid_are_refused(ct3, tmp_path):
    copy_series(ct3, tmp_path / "a", lambda ds, i: setattr(ds, "SeriesInstanceUID", ""))
    with pytest.raises(DicomSeriesError, match="SeriesInstanceUID is missing or blank in 3 image"):
        read_series(tmp_path / "a", slice_index=0)
    copy_series(ct3, tmp_path / "b", lambda ds, i: setattr(ds, "StudyInstanceUID", "1.2.abc") if i == 0 else None)
    with pytest.raises(DicomSeriesError, match=r"StudyInstanceUID \(a value of 7 characters, not shown\) is not"):
        read_series(tmp_path / "b", slice_index=0)


def test_duplicate_sop_instance_uid_is_refused(ct3, tmp_path):
    copy_series(ct3, tmp_path)
    shutil.copy(ct3 / "01.dcm", tmp_path / "01-copy.dcm")
    with pytest.raises(DicomSeriesError, match="share one SOPInstanceUID"):
        read_series(tmp_path, slice_index=0)


def test_gantry_tilt_is_sorted_by_projection_and_warned(ct3, tmp_path, dciodvfy):
    angle = np.radians(5.0)

    def tilt(dataset, index):
        dataset.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(angle)), float(np.sin(angle))]

    copy_series(ct3, tmp_path / "in", tilt)
    with pytest.warns(DicomSeriesWarning, match=r"5\.00 degrees off the slice normal \(gantry tilt"):
        series = read_series(tmp_path / "in", slice_index=1)
    assert [p.name for p in series.files] == ["03.dcm", "02.dcm", "01.dcm"]
    assert series.geometry.tilt_degrees == pytest.approx(5.0, abs=1e-3)
    written = write_segmentation(tmp_path / "seg.dcm", series.source, disk((512, 512), (256, 256), 30), "liver")
    assert dciodvfy_errors(dciodvfy, written.path) == []


def test_variable_spacing_is_warned_and_still_sorted(philips, tmp_path):
    files = sorted(philips.iterdir())
    with pytest.warns(DicomSeriesWarning, match=r"variable slice spacing: 5\.000 to 10\.000 mm"):
        series = read_series([p for p in files if p.name != "I150"], slice_index=0)
    assert series.slice_count == 27 and not series.geometry.uniform_spacing
    assert np.all(np.diff(series.geometry.slice_positions) > 0)


def test_mixed_orientation_and_stacked_volumes_are_refused(ct3, tmp_path):
    copy_series(ct3, tmp_path / "a", lambda ds, i: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])
                if i == 2 else None)
    with pytest.raises(DicomSeriesError, match="ImageOrientationPatient differs"):
        read_series(tmp_path / "a", slice_index=0)
    copy_series(ct3, tmp_path / "b", lambda ds, i: setattr(ds, "ImagePositionPatient", [0, 0, 0]))
    with pytest.raises(DicomSeriesError, match="share a position"):
        read_series(tmp_path / "b", slice_index=0)


def test_missing_geometry_falls_back_to_instance_number(ct3, tmp_path, dciodvfy):
    def strip(dataset, index):
        del dataset.ImagePositionPatient, dataset.ImageOrientationPatient

    copy_series(ct3, tmp_path, strip)
    with pytest.warns(DicomSeriesWarning, match="sorted by InstanceNumber"):
        series = read_series(tmp_path, slice_index=0)
    assert series.geometry.sorted_by == "instance_number"
    assert [p.name for p in series.files] == ["01.dcm", "02.dcm", "03.dcm"]
    written = write_segmentation(tmp_path / "seg" / "seg.dcm", series.source, disk((512, 512), (99, 99), 9), "liver")
    assert dciodvfy_errors(dciodvfy, written.path) == []  # PatientOrientation (Type 2C) added without geometry


def _jpeg2000_copy(ct3: Path, target: Path) -> Path:
    """The series with 02.dcm JPEG 2000 lossless: encoded when an encoder exists, else fake bytes."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_encoder
    from pydicom.uid import JPEG2000Lossless

    copy_series(ct3, target)
    dataset = pydicom.dcmread(ct3 / "02.dcm")
    if get_encoder(JPEG2000Lossless).is_available:
        dataset.compress(JPEG2000Lossless)
    else:  # the header says JPEG 2000; the bytes only matter once a decoder runs
        dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.save_as(target / "02.dcm")
    return target


def test_jpeg2000_slice_decodes_losslessly(ct3, tmp_path, dciodvfy):
    from pydicom.pixels import get_decoder, get_encoder
    from pydicom.uid import JPEG2000Lossless

    if not (get_encoder(JPEG2000Lossless).is_available and get_decoder(JPEG2000Lossless).is_available):
        pytest.skip("no JPEG 2000 encoder/decoder here (pip install pylibjpeg pylibjpeg-openjpeg)")
    folder = _jpeg2000_copy(ct3, tmp_path / "in")
    assert pydicom.dcmread(folder / "02.dcm").file_meta.TransferSyntaxUID == JPEG2000Lossless
    compressed, original = read_series(folder, slice_index=1), read_series(ct3, slice_index=1)
    assert np.array_equal(compressed.volume, original.volume)
    written = write_segmentation(tmp_path / "seg.dcm", compressed.source, disk((512, 512), (256, 256), 30), "liver")
    assert dciodvfy_errors(dciodvfy, written.path) == []


def test_jpeg2000_without_decoder_names_what_is_missing(ct3, tmp_path, monkeypatch):
    folder = _jpeg2000_copy(ct3, tmp_path)
    monkeypatch.setattr(pixels_module, "_decoder_status",
                        lambda syntax: (False, ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]))
    with pytest.raises(DicomSeriesError, match=r"02\.dcm: pixel data is compressed as JPEG 2000 .*no decoder is "
                                               r"installed here: pylibjpeg - requires .*pip install pylibjpeg"):
        read_series(folder, slice_index=0)


def test_no_patient_data_in_messages_logs_or_warnings(ct3, tmp_path, caplog):
    name, patient_id = "JANEDOEPHI", "PID-98765"
    long_name = name + "^" + "X" * 70  # a component over 64 characters: pydicom warns and logs, quoting it

    def identify(dataset, index):
        dataset.PatientName, dataset.PatientID = (name if index else long_name), patient_id
        dataset.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(0.1)), float(np.sin(0.1))]  # a tilt warning

    copy_series(ct3, tmp_path / "in", identify)
    copy_series(ct3, tmp_path / "bad",
                lambda ds, i: (setattr(ds, "PatientName", name), setattr(ds, "SOPInstanceUID", "")))
    (tmp_path / "in" / "junk.txt").write_text("x")  # a skip log line
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for index in (0, 1):  # the single-component name (highdicom warns) and the over-long one (pydicom)
            series = read_series(tmp_path / "in", slice_index=index)
            written = write_segmentation(tmp_path / f"seg{index}.dcm", series.source,
                                         disk((512, 512), (256, 256), 30), "organ x", trajectory={})
            segment_mask(written.path, series.sop_instance_uid)
        with pytest.raises(DicomSeriesError) as refused:
            read_series(tmp_path / "bad", slice_index=0)
    texts = [record.getMessage() for record in caplog.records] + [str(w.message) for w in caught] + [str(refused.value)]
    assert caught and caplog.records  # there was something to check
    assert not [text for text in texts if name in text or patient_id in text]
    assert name not in (tmp_path / "seg1.json").read_text()


def test_malformed_birth_date_is_emptied_in_the_seg_and_never_quoted(ct3, tmp_path, dciodvfy, caplog):
    copy_series(ct3, tmp_path / "in", lambda ds, i: setattr(ds, "PatientBirthDate", "1970-01-31"))  # not a DA
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        series = read_series(tmp_path / "in", slice_index=0)
        written = write_segmentation(tmp_path / "seg.dcm", series.source, disk((512, 512), (256, 256), 9), "liver")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert pydicom.dcmread(written.path).PatientBirthDate == ""
    texts = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert not [text for text in texts if "1970-01-31" in text]


def test_mr_demo_gets_a_percentile_window_and_a_valid_seg(tmp_path, dciodvfy):
    series = read_series(get_testdata_file("examples_overlay.dcm"))
    assert series.modality == "MR" and series.window == "percentile" and series.rgb.shape == (300, 484, 3)
    mask = disk((300, 484), (150, 120), 30)
    written = write_segmentation(tmp_path / "seg.dcm", series.source, mask, "liver")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert np.array_equal(segment_mask(written.path, series.sop_instance_uid), mask)


def test_colour_ultrasound_passes_through_and_gets_a_valid_seg(tmp_path, dciodvfy):
    path = get_testdata_file("examples_rgb_color.dcm")
    series = read_series(path)
    assert series.window == "colour" and np.array_equal(series.rgb, pydicom.dcmread(path).pixel_array)
    mask = disk((240, 320), (120, 160), 40)
    written = write_segmentation(tmp_path / "seg.dcm", series.source, mask, "fetal head")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert np.array_equal(segment_mask(written.path, series.sop_instance_uid), mask)


def test_cine_without_frame_of_reference_reads_but_cannot_get_a_seg(tmp_path):
    series = read_series(get_testdata_file("examples_ybr_color.dcm"), slice_index=5)
    assert series.slice_count == 30 and series.frame_index == 5 and series.geometry.sorted_by == "frame_order"
    with pytest.raises(SegWriteError, match="without a Frame of Reference"):
        write_segmentation(tmp_path / "seg.dcm", series.source, np.zeros((240, 320), bool), "fetal head",
                           frame_index=series.frame_index)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- one pixel path
# `ibis segment FILE.dcm` (read_image) and the series reader share dicom/pixels.py: same display, same errors.

@pytest.mark.parametrize("name, frame", [
    ("SC_ybr_full_422_uncompressed.dcm", None), ("SC_rgb_dcmtk_+eb+cy+n1.dcm", None),  # YBR, uncompressed / JPEG
    ("examples_ybr_color.dcm", 10), ("examples_palette.dcm", None), ("examples_rgb_color.dcm", None),
    ("SC_rgb_rle_16bit.dcm", None), ("examples_overlay.dcm", None), ("CT_small.dcm", None),
])
def test_single_file_reader_shows_what_the_series_reader_shows(name, frame):
    path = get_testdata_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomSeriesWarning)
        series = read_series([path], slice_index=frame)
    single = read_image(path, slice_index=frame)
    assert np.array_equal(single.rgb, series.rgb) and single.window == series.window


def test_ybr_colour_is_decoded_once():
    # The same colour bars stored as YBR_FULL_422 and as RGB: pydicom already converts YBR, a second
    # conversion turned them green.
    ybr = read_image(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")).rgb.astype(int)
    rgb = read_image(get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm")).rgb.astype(int)
    assert np.abs(ybr - rgb).mean() < 2 and rgb[5, 50].tolist() == [255, 0, 0]


def test_palette_colour_goes_through_its_lookup_table():
    shown = read_image(get_testdata_file("examples_palette.dcm")).rgb
    banner = shown[:60].reshape(-1, 3).mean(axis=0)  # the scanner's blue title bar
    assert banner[2] > banner[0] + 30  # in colour, not the palette indices shown as grey


def test_single_file_monochrome1_windows_real_hounsfield_units(ct3, tmp_path):
    copy_series(ct3, tmp_path, lambda ds, i: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    normal, inverted = read_image(ct3 / "02.dcm"), read_image(tmp_path / "02.dcm")
    assert normal.window == inverted.window == "abdomen"
    assert np.array_equal(inverted.rgb, 255 - normal.rgb)


def test_single_file_enhanced_multiframe_uses_each_frames_rescale(ct3, tmp_path):
    converted = enhanced_copy(ct3, tmp_path / "multiframe.dcm")
    files = sorted(ct3.iterdir())
    by_position = {tuple(map(float, pydicom.dcmread(f).ImagePositionPatient)): f for f in files}
    for frame, item in enumerate(converted.PerFrameFunctionalGroupsSequence):
        position = tuple(map(float, item.PlanePositionSequence[0].ImagePositionPatient))
        shown = read_image(tmp_path / "multiframe.dcm", slice_index=frame)
        assert np.array_equal(shown.rgb, read_image(by_position[position]).rgb)


def test_single_file_errors_name_the_file_and_the_reason(ct3, tmp_path):
    for name, reason in [("reportsi.dcm", "a structured report, not an image"),
                         ("liver_1frame.dcm", "a Segmentation, not a source image"),
                         ("rtdose.dcm", "an RT Dose, not a source image"),
                         ("MR_truncated.dcm", r"pixel data cannot be decoded \(ValueError: .*less than expected")]:
        with pytest.raises(ImageReadError, match=rf"^{re.escape(name)}: {reason}"):
            read_image(get_testdata_file(name))


def test_unreadable_frame_count_is_refused_by_both_readers(ct3, tmp_path):
    from pydicom.dataelem import DataElement

    dataset = pydicom.dcmread(ct3 / "02.dcm")
    dataset[0x00280008] = DataElement(0x00280008, "LO", "1A")  # NumberOfFrames, not a number
    dataset.save_as(tmp_path / "02.dcm")
    message = r"02\.dcm: NumberOfFrames \(a value of 2 characters, not shown\) is not a positive whole number"
    with pytest.raises(ImageReadError, match=message):
        read_image(tmp_path / "02.dcm")
    with pytest.raises(DicomSeriesError, match=message):
        read_series(tmp_path)


def test_jpeg_lossless_decodes_with_the_runtime_install():
    # JPEG Lossless (Process 14) is what many archives send; its decoder is a runtime dependency.
    lossless, rle = get_testdata_file("SC_rgb_jpeg_gdcm.dcm"), get_testdata_file("SC_rgb_rle.dcm")
    assert pydicom.dcmread(lossless).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(read_image(lossless).rgb, read_image(rle).rgb)
    assert np.array_equal(read_series([lossless]).rgb, read_image(rle).rgb)


@pytest.mark.parametrize("how", ["slices", "enhanced multi-frame"])
def test_the_file_window_is_the_series_own(ct3, tmp_path, how):
    # dcmqi's CT carries WindowCenter 40 / WindowWidth 400, the abdomen preset: the same picture within one grey
    # level (DICOM's linear window has half-pixel offsets); the enhanced copy keeps it in its functional groups.
    path = ct3
    if how == "enhanced multi-frame":
        assert "WindowCenter" not in enhanced_copy(ct3, tmp_path / "multiframe.dcm")
        path = tmp_path / "multiframe.dcm"
    own, preset = read_series(path, slice_index=1, window="file"), read_series(path, slice_index=1, window="abdomen")
    assert own.window == "file" and np.abs(own.rgb.astype(int) - preset.rgb).max() <= 1
    single = read_image(path / "02.dcm" if path.is_dir() else path, slice_index=None if path.is_dir() else 1,
                        window="file")
    assert np.array_equal(single.rgb, own.rgb)


def test_the_file_window_follows_a_voi_lut_and_is_refused_where_there_is_none(ct3, tmp_path):
    source = pydicom.dcmread(ct3 / "02.dcm")
    hu = read_series(ct3, slice_index=1).volume[1]
    lut = Dataset()  # a curve over -200..300 HU (the VOI LUT reads modality values), 12-bit output
    lut.LUTDescriptor = [501, -200, 12]
    lut["LUTDescriptor"].VR = "SS"
    lut.LUTData = np.round(4095 * np.linspace(0, 1, 501) ** 0.5).astype(np.uint16).tolist()
    lut["LUTData"].VR = "US"
    source.VOILUTSequence = [lut]
    del source.WindowCenter, source.WindowWidth
    source.save_as(tmp_path / "lut.dcm")
    shown = read_image(tmp_path / "lut.dcm", window="file").rgb[..., 0].astype(float)
    expected = 255 * np.sqrt(np.clip(hu + 200, 0, 500) / 500)
    assert np.abs(shown - expected).max() <= 1.5
    del source.VOILUTSequence
    source.save_as(tmp_path / "none.dcm")
    with pytest.raises(ImageReadError, match=r"none\.dcm: no display window of its own"):
        read_image(tmp_path / "none.dcm", window="file")
    with pytest.raises(ValueError, match="unknown window 'liver'; choose one of .*percentile, file"):
        read_image(ct3 / "02.dcm", window="liver")


# ----------------------------------------------------------------------------- codes

def test_every_manifest_label_has_a_specific_code():
    import csv

    with _need(SHARED / "med2d" / "manifest.csv").open() as stream:
        labels = {row["label"] for row in csv.DictReader(stream)}
    with _need(SHARED / "volumes" / "manifest.csv").open() as stream:
        labels |= {name for row in csv.DictReader(stream) for name in json.loads(row["labels"]).values()}
    from pydicom.sr.codedict import codes

    categories = {getattr(codes.cid7150, k).value for k in codes.cid7150.dir()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownLabelWarning)
        for label in sorted(labels):
            code = code_for_label(label)
            assert code.known and code.category.value in categories and code.type.scheme_designator == "SCT", label


def test_code_lookup_is_case_insensitive_with_laterality():
    liver = code_for_label("LIVER")
    assert (liver.category.meaning, liver.type.value, liver.modifier, liver.known) == \
        ("Anatomical Structure", "10200004", None, True)
    left = code_for_label("Kidney_Left")
    assert (left.type.value, left.modifier.meaning) == ("64033007", "Left")
    assert code_for_label("left kidney") == left
    assert code_for_label("rib right 9").modifier.meaning == "Right"
    assert code_for_label("lungs").modifier.meaning == "Bilateral"
    assert code_for_label("Brain stem").type.value == "119238007"
    parotid = code_for_label("left parotid gland")
    assert (parotid.type.value, parotid.modifier.meaning) == ("45289007", "Left")
    assert code_for_label("cell nuclei").type.value == "84640000"
    # the whole BraTS tumour includes edema: a lesion of brain, not a neoplasm
    assert (code_for_label("brain tumor").type.value, code_for_label("brain tumor core").type.value) == \
        ("301766008", "108369006")


def test_unknown_label_gets_a_generic_code_and_a_warning():
    with pytest.warns(UnknownLabelWarning, match="generic"):
        code = code_for_label("Segment the liver.")  # a query is not a label: not parsed
    assert (code.category.meaning, code.type.meaning, code.modifier, code.known) == ("Tissue", "Tissue", None, False)


# ----------------------------------------------------------------------------- the segment-dicom handler

class DiskTool:
    """A stand-in segmentation tool: a disk around the last positive click (no model)."""

    name = "disk"

    def encode(self, image):
        return image.shape[:2]

    def predict(self, embedding, clicks, mask_input=None):
        from ibisagent.tools.base import ToolOutput

        height, width = embedding
        click = [c for c in clicks if c.positive][-1]
        mask = disk((height, width), (int(click.y * height), int(click.x * width)), 25)
        return ToolOutput(mask, np.zeros((1, 1, 256, 256), np.float32), 0.9)


def test_segment_dicom_writes_a_valid_seg_and_trajectory(ct3, tmp_path, dciodvfy):
    from ibisagent.dicom.pipeline import segment_dicom
    from ibisagent.policies.scripted import ScriptedPolicy

    policy = ScriptedPolicy(["<think>t</think><action>Positive Point (0.6000, 0.5000)</action>",
                             "<think>done</think><action>Terminate</action>"])
    series = read_series(ct3, slice_index=1)  # what the CLI does first: input errors before any model loads
    run = segment_dicom(ct3, "Segment the liver.", tmp_path / "out", DiskTool(), policy, label="liver", series=series)
    assert run.series is series and run.series.index == 1
    assert run.completed and run.written is not None
    assert dciodvfy_errors(dciodvfy, run.written.path) == []
    assert np.array_equal(segment_mask(run.written.path, run.series.sop_instance_uid), run.result.mask)
    sidecar = json.loads(run.written.sidecar.read_text())
    assert sidecar["trajectory"]["label"] == "liver" and sidecar["trajectory"]["status"] == "terminated"
    assert sidecar["trajectory"]["clicks"] == [{"x": 0.6, "y": 0.5, "positive": True}]


def test_segment_dicom_writes_nothing_when_the_run_fails(ct3, tmp_path):
    from ibisagent.dicom.pipeline import segment_dicom
    from ibisagent.policies.scripted import ScriptedPolicy

    run = segment_dicom(ct3, "Segment the liver.", tmp_path / "out", DiskTool(), ScriptedPolicy(["nonsense"] * 5),
                        slice_index=0, label="liver")
    assert not run.completed and run.written is None and not (tmp_path / "out").exists()


def test_a_prone_series_is_shown_in_the_standard_display_and_its_seg_maps_back(ct3, tmp_path, dciodvfy,
                                                                                segimage2itkimage):
    from ibisagent.dicom.pipeline import segment_dicom
    from ibisagent.policies.scripted import ScriptedPolicy

    copy_series(ct3, tmp_path / "prone", lambda dataset, index: turn_prone(dataset))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DicomSeriesWarning)  # nothing is wrong with a prone series
        prone = read_series(tmp_path / "prone", slice_index=1)
    standard = read_series(ct3, slice_index=1)
    assert np.array_equal(prone.rgb, standard.rgb)  # the agent sees the same picture
    assert prone.display == DisplayTransform(flip_rows=True, flip_columns=True) and standard.display.is_identity
    assert prone.display_note.startswith("axial slice stored with the image's right toward the patient's right and "
                                         "its bottom toward the patient's anterior (ImageOrientationPatient -1, 0, 0, "
                                         "0, -1, 0)") and standard.display_note is None

    click = ["<think>t</think><action>Positive Point (0.7000, 0.4000)</action>", "<think>d</think><action>Terminate</action>"]
    runs = {name: segment_dicom(source, "Segment the liver.", tmp_path / name / "out", DiskTool(),
                                ScriptedPolicy(list(click)), label="liver", series=series)
            for name, source, series in (("prone", tmp_path / "prone", prone), ("standard", ct3, standard))}
    masks = {name: segment_mask(run.written.path, run.series.sop_instance_uid) for name, run in runs.items()}
    assert np.array_equal(masks["prone"], masks["standard"][::-1, ::-1]) and masks["prone"].any()
    assert not np.array_equal(masks["prone"], masks["standard"])
    assert dciodvfy_errors(dciodvfy, runs["prone"].written.path) == []
    sidecar = json.loads(runs["prone"].written.sidecar.read_text())["trajectory"]
    assert "flipped top-to-bottom, then flipped left-to-right" in sidecar["display"]
    assert sidecar["clicks"] == [{"x": 0.7, "y": 0.4, "positive": True}]  # where the agent clicked, in its view

    def centre_in_patient_space(seg: Path, name: str) -> np.ndarray:  # where dcmqi places the segment
        (mask, affine), = dcmqi_masks(segimage2itkimage, seg, tmp_path / name / "dcmqi")
        rows, columns = np.nonzero(mask)
        return (affine @ np.array([columns.mean(), rows.mean(), 0.0, 1.0]))[:3]

    assert np.allclose(centre_in_patient_space(runs["prone"].written.path, "prone"),
                       centre_in_patient_space(runs["standard"].written.path, "standard"), atol=0.5)

    def coronal(dataset, index):
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        dataset.ImagePositionPatient = [0, 5.0 * index, 0]

    copy_series(ct3, tmp_path / "coronal", coronal)
    assert read_series(tmp_path / "coronal", slice_index=0).display.is_identity  # already the standard coronal view


def _chest_radiograph(folder: Path, pixels: np.ndarray, patient_orientation: tuple[str, str], study: str) -> Path:
    """The real chest X-ray wrapped as a Secondary Capture that says how it is stored (PatientOrientation only)."""
    import highdicom as hd

    folder.mkdir(parents=True)
    image = hd.sc.SCImage(np.ascontiguousarray(pixels), "MONOCHROME2", 8, "PATIENT", study, generate_uid(), 1,
                          generate_uid(), 1, "ibisagent tests", patient_orientation=patient_orientation)
    image.save_as(folder / "xray.dcm")
    return folder / "xray.dcm"


def test_a_mirrored_or_turned_radiograph_is_shown_in_the_standard_display_and_its_seg_maps_back(tmp_path, dciodvfy):
    from ibisagent.imaging.io import read_mask
    from PIL import Image

    lungs_png = _need(SHARED / "med2d" / "images" / "lung-segmentation-2d-demo" / "1.png")
    xray = np.asarray(Image.open(lungs_png).convert("L"))
    lungs = read_mask(SHARED / "med2d" / "masks" / "lung-segmentation-2d-demo" / "1__lungs.png", xray.shape)
    study = generate_uid()
    standard = read_series(_chest_radiograph(tmp_path / "standard", xray, ("L", "F"), study))
    assert standard.display.is_identity and standard.display_note is None
    for name, stored, orientation in [("mirrored", xray[:, ::-1], ("R", "F")), ("turned", xray.T, ("F", "L")),
                                      ("upside down", xray[::-1], ("L", "H"))]:
        path = _chest_radiograph(tmp_path / name, stored, orientation, study)
        series, single = read_series(path), read_image(path)
        assert np.array_equal(series.rgb, standard.rgb) and np.array_equal(single.rgb, standard.rgb), name
        assert "PatientOrientation " + "\\".join(orientation) in series.display_note
        assert single.display_note == series.display_note
    # the lungs drawn on what the agent saw, written for the mirrored file: the SEG holds them mirrored
    series = read_series(tmp_path / "mirrored")
    written = write_segmentation(tmp_path / "seg.dcm", series.source, series.display.to_stored(lungs), "lungs")
    assert dciodvfy_errors(dciodvfy, written.path) == []
    assert np.array_equal(segment_mask(written.path, series.sop_instance_uid), lungs[:, ::-1])
