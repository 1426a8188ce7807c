"""Whole-series DICOM-SEG: one frame per source slice holding a structure, several segments, real series.

Every SEG is checked by tools nobody here wrote: dciodvfy must report 0
errors, highdicom and dcmqi's segimage2itkimage must put each segment back on
the right source instances. The writer tests draw masks (no model); the CLI
test runs the oracle through the real tool on dcmqi's 3-slice CT against
dcmqi's own liver SEG.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ibisagent.cli import main
from ibisagent.dicom import list_segments, read_segmentation, segment_mask
from ibisagent.dicom.seg_writer import Segment, SegWriteError, write_segments
from ibisagent.metrics import dice
from ibisagent.volume.readers import read_label_map, read_volume, write_mask_nifti
from scipy import ndimage

from test_dicom import CT3, DCMQI_SEG, PHILIPS, _need, dciodvfy, dciodvfy_errors, segimage2itkimage  # noqa: F401


def _dcmqi_segments(tool: str, seg: Path, out: Path, volume) -> dict[int, np.ndarray]:
    """Each segment as dcmqi writes it (a NIfTI on the series grid), put on the volume's voxels."""
    out.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([tool, "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nifti"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = {}
    for path in out.glob("*.nii.gz"):
        found[int(path.name.split(".")[0])] = read_label_map(volume, path).labels > 0
    return found


@pytest.fixture(scope="module")
def philips_volume():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_volume(_need(PHILIPS))


def test_series_seg_has_a_frame_per_slice_holding_each_segment(philips_volume, tmp_path, dciodvfy,
                                                               segimage2itkimage):
    volume = philips_volume
    series = volume.source.series
    bone = volume.voxels > 300
    labelled, _ = ndimage.label(bone)
    bone = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    ball = np.zeros(volume.shape, bool)
    slices, rows, columns = np.ogrid[:volume.shape[0], :volume.shape[1], :volume.shape[2]]
    ball[((slices - 12) * 5.0) ** 2 + ((rows - 250) * 0.45) ** 2 + ((columns - 260) * 0.45) ** 2 <= 15.0 ** 2] = True
    written = write_segments(tmp_path / "seg.dcm", list(series.datasets),
                             [Segment("bone", bone), Segment("lesion", ball, colour=(255, 0, 0), human_clicked=True)],
                             trajectory={"note": "drawn"})
    assert dciodvfy_errors(dciodvfy, written.path) == []
    seg = read_segmentation(written.path)
    holding = [int(bone.any(axis=(1, 2)).sum()), int(ball.any(axis=(1, 2)).sum())]
    assert int(seg.NumberOfFrames) == sum(holding) and 0 < holding[1] < holding[0] < volume.slice_count
    for index, dataset in enumerate(series.datasets):  # highdicom: every instance gets back exactly its plane
        for number, mask in ((1, bone), (2, ball)):
            assert np.array_equal(segment_mask(seg, str(dataset.SOPInstanceUID), number), mask[index])
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    assert referenced == {str(d.SOPInstanceUID) for d in series.datasets}
    infos = list_segments(seg)
    assert [i.label for i in infos] == ["bone", "lesion"]
    assert [str(item.SegmentAlgorithmType) for item in seg.SegmentSequence] == ["AUTOMATIC", "SEMIAUTOMATIC"]
    dcmqi = _dcmqi_segments(segimage2itkimage, written.path, tmp_path / "dcmqi", volume)
    assert np.array_equal(dcmqi[1], bone) and np.array_equal(dcmqi[2], ball)
    sidecar = json.loads(written.sidecar.read_text())
    assert sidecar["segments"][1]["slices"] == [int(k) for k in np.nonzero(ball.any(axis=(1, 2)))[0]]
    assert sidecar["source_slices"] == volume.slice_count


def test_an_empty_series_result_is_an_explicit_empty_seg(philips_volume, tmp_path, dciodvfy):
    series = philips_volume.source.series
    written = write_segments(tmp_path / "empty.dcm", list(series.datasets),
                             [Segment("spleen", np.zeros(philips_volume.shape, bool))])
    assert dciodvfy_errors(dciodvfy, written.path) == []
    seg = read_segmentation(written.path)
    assert int(seg.NumberOfFrames) == philips_volume.slice_count
    assert not segment_mask(seg, str(series.datasets[3].SOPInstanceUID)).any()


def test_series_writer_refuses_misaligned_masks(philips_volume, tmp_path):
    series = philips_volume.source.series
    with pytest.raises(SegWriteError, match="one plane per source slice"):
        write_segments(tmp_path / "a.dcm", list(series.datasets), [Segment("bone", np.zeros((3, 512, 512), bool))])
    with pytest.raises(SegWriteError, match="same number of mask planes"):
        write_segments(tmp_path / "a.dcm", list(series.datasets[:2]),
                       [Segment("a", np.zeros((2, 512, 512), bool)), Segment("b", np.zeros((1, 512, 512), bool))])
    assert not (tmp_path / "a.dcm").exists()


def test_segment_dicom_whole_series_on_the_dcmqi_liver(tmp_path, dciodvfy, segimage2itkimage):
    """The oracle, steered by dcmqi's liver SEG, through the real tool: our SEG lands on the same instances."""
    volume = read_volume(_need(CT3))
    series = volume.source.series
    reference_seg = read_segmentation(_need(DCMQI_SEG / "liver.dcm"))
    liver = np.stack([segment_mask(reference_seg, str(d.SOPInstanceUID)) for d in series.datasets])
    reference = write_mask_nifti(volume, liver, tmp_path / "reference.nii.gz")
    out = tmp_path / "out"
    code = main(["segment-dicom", str(CT3), "--whole-series", "--query", "Segment the liver.", "--label", "liver",
                 "--policy", "oracle", "--ground-truth", str(reference), "--reference-label", "1",
                 "--max-turns", "5", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "montage.png", "seg.dcm", "seg.json",
                                                     "trajectory.json"]
    assert dciodvfy_errors(dciodvfy, out / "seg.dcm") == []
    mask = read_label_map(volume, out / "mask.nii.gz").labels > 0
    assert dice(mask, liver) > 0.8
    seg = read_segmentation(out / "seg.dcm")
    assert int(seg.NumberOfFrames) == int(mask.any(axis=(1, 2)).sum())
    for index, dataset in enumerate(series.datasets):
        assert np.array_equal(segment_mask(seg, str(dataset.SOPInstanceUID)), mask[index])
    assert list_segments(seg)[0].type == "Liver"
    dcmqi = _dcmqi_segments(segimage2itkimage, out / "seg.dcm", tmp_path / "dcmqi", volume)
    assert np.array_equal(dcmqi[1], mask)
    affine = nib.load(out / "mask.nii.gz").affine
    assert np.allclose(affine, nib.load(reference).affine)
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["key_slice"] == int(np.argmax(liver.sum(axis=(1, 2))))
    assert trajectory["reference_dice"] == pytest.approx(dice(mask, liver), abs=1e-4)
