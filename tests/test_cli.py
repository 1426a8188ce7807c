"""The `ibis` command as a user runs it: real processes, real files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def ibis(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ibisagent.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_demo_main_job(tmp_path):
    out = tmp_path / "demo"
    done = ibis("demo", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "turn  1: Positive Point" in done.stdout and "against the reference" in done.stdout
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["input"] == "examples_overlay.dcm" and trajectory["policy"] == "lite"
    mask = np.asarray(Image.open(out / "mask.png"))
    # A plausible liver: nearly all of the mask on the (approximate) reference liver, and much of the liver found.
    from ibisagent.demo import DEMO_REFERENCE

    reference = np.asarray(Image.open(DEMO_REFERENCE)) > 0
    assert ((mask > 0) & reference).sum() / max((mask > 0).sum(), 1) > 0.9
    assert trajectory["reference_iou"] > 0.5, trajectory["reference_iou"]
    assert mask.shape == (300, 484) and set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == trajectory["final_mask_area"]
    assert len(list(out.glob("turn_*.png"))) == len(trajectory["turns"])
    assert not list(out.glob(".staging-*"))


def test_segment_png_with_scripted_policy(tmp_path, med2d_manifest):
    from ibisagent.evaluation import read_manifest

    pair = read_manifest(med2d_manifest, "test")[0]
    responses = tmp_path / "answers.txt"
    responses.write_text("<think>centre</think><action>Positive Point (0.5000, 0.5000)</action>\n"
                         "<think>ok</think><action>Terminate</action>\n")
    out = tmp_path / "run"
    done = ibis("segment", pair.image, "--query", "Segment the aorta.", "--policy", "scripted",
                "--responses", responses, "--out", out)
    assert done.returncode == 0, done.stderr
    trajectory = json.loads((out / "trajectory.json").read_text())
    assert trajectory["status"] == "terminated" and len(trajectory["clicks"]) == 1
    assert np.asarray(Image.open(out / "mask.png")).shape == np.asarray(Image.open(pair.image)).shape[:2]


def test_segment_reports_its_confidence_and_warns_when_unreliable(tmp_path, med2d_manifest):
    """The issue's chest X-ray example through the CLI: the confidence is printed and stored; a mask that is not
    right (IoU < 0.5) must come with the warning on stderr and `unreliable` in trajectory.json."""
    from ibisagent.evaluation import read_manifest
    from ibisagent.imaging.io import read_mask
    from ibisagent.metrics import iou

    pair = sorted((p for p in read_manifest(med2d_manifest, "test") if p.source == "v7-covid-cxr"),
                  key=lambda p: str(p.image))[0]
    out = tmp_path / "run"
    done = ibis("segment", pair.image, "--query", "Segment the lungs.", "--out", out)
    assert done.returncode == 0, done.stderr
    trajectory = json.loads((out / "trajectory.json").read_text())
    confidence = trajectory["confidence"]
    assert confidence["source"] == "lite" and trajectory["unreliable"] is confidence["unreliable"]
    assert f"confidence {confidence['value']:.2f} (lite; unreliable below {confidence['threshold']:.2f})" in done.stdout
    assert ("warning: the result is unreliable" in done.stderr) is trajectory["unreliable"]
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert iou(mask, read_mask(pair.mask, mask.shape)) >= 0.5 or trajectory["unreliable"]


def mark_at(picture: np.ndarray, x: float, y: float) -> str | None:
    """'positive' / 'negative' when a click mark's disc covers (x, y) (normalised) in a picture, else None."""
    from ibisagent.imaging.overlay import click_radius

    height, width = picture.shape[:2]
    offset = click_radius(picture.shape) // 2 + 1  # inside the disc, off the plus/minus sign
    r, g, b = (int(v) for v in picture[min(int(y * height) + offset, height - 1), min(int(x * width) + offset, width - 1)])
    return "positive" if g > 200 and r < 60 and b < 60 else "negative" if r > 200 and g < 60 and b < 60 else None


def test_overlays_mark_the_clicks_made_so_far(tmp_path, demo_image):
    """turn_NN.png shows the clicks up to that turn: a green plus disc for positive, a red minus disc for negative."""
    image = tmp_path / "mr.png"
    Image.fromarray(demo_image).save(image)  # grey: no pixel of its own is pure green or red
    responses = tmp_path / "answers.txt"
    responses.write_text("<think>in</think><action>Positive Point (0.2500, 0.4500)</action>\n"
                         "<think>out</think><action>Negative Point (0.7000, 0.6000)</action>\n"
                         "<think>done</think><action>Terminate</action>\n")
    out = tmp_path / "run"
    done = ibis("segment", image, "--query", "Segment the liver.", "--policy", "scripted", "--responses", responses,
                "--out", out)
    assert done.returncode == 0, done.stderr
    first, second, last = (np.asarray(Image.open(out / f"turn_{i:02d}.png").convert("RGB")) for i in range(3))
    assert (mark_at(first, 0.25, 0.45), mark_at(first, 0.7, 0.6)) == ("positive", None)
    for picture in (second, last, np.asarray(Image.open(out / "overlay.png").convert("RGB"))):
        assert (mark_at(picture, 0.25, 0.45), mark_at(picture, 0.7, 0.6)) == ("positive", "negative")


@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["segment", d / "absent.png", "--query", "liver"], "no such file"),
    (lambda d: ["segment", d / "corrupt.png", "--query", "liver"], "not a readable image"),
    (lambda d: ["segment", d / "ok.png", "--query", "  "], "query is empty"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--policy", "oracle"], "needs a ground-truth mask"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--policy", "scripted"], "needs --responses"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--policy", "hf"], "needs --model-path"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--tool", "warp"], "unknown tool"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--policy", "oracle", "--ground-truth", d / "small.png"],
     "is 3x2, the image 8x6"),
    (lambda d: ["evaluate", "--manifest", d / "absent.csv"], "cannot read manifest"),
])
def test_errors_are_one_line_and_write_nothing(tmp_path, make_args, message):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG junk")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((2, 3), np.uint8)).save(tmp_path / "small.png")
    out = tmp_path / "out"
    done = ibis(*make_args(tmp_path), "--out", out) if make_args(tmp_path)[0] == "segment" else ibis(*make_args(tmp_path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ibis: error:") and message in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--out", d / "a_file"], "is an existing file"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--out", d / "a_file" / "sub"], "a_file is a file"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--out", "/proc/ibis-out"], "is not writable"),
    (lambda d: ["demo", "--out", d / "a_file"], "is an existing file"),
    (lambda d: ["segment-dicom", d, "--query", "liver", "--out", d / "a_file"], "is an existing file"),
    (lambda d: ["evaluate", "--manifest", d / "m.csv", "--json", d], "is an existing folder"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--max-turns", "0"], "give 1 to 100"),
    (lambda d: ["segment", d / "ok.png", "--query", "liver", "--max-turns", "1000000000"], "give 1 to 100"),
    (lambda d: ["demo", "--max-turns", "many"], "'many' is not a whole number"),
    (lambda d: ["bench", "--agent", "lite", "--manifest", d / "absent.csv"], "cannot read manifest"),
])
def test_arguments_and_the_output_place_are_checked_before_any_model_loads(tmp_path, make_args, message):
    """Bad arguments are refused at once: no torch, no onnxruntime, no sentence encoder imported."""
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "a_file").write_text("keep me")
    probe = ("import sys\nfrom ibisagent.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
             "except SystemExit as exit:\n    code = exit.code\n"
             "loaded = [m for m in ('torch', 'onnxruntime', 'sentence_transformers') if m in sys.modules]\n"
             "print('loaded:', loaded, 'code:', code)")
    done = subprocess.run([sys.executable, "-c", probe, *map(str, make_args(tmp_path))], capture_output=True,
                          text=True, timeout=120)
    assert "loaded: [] code: 2" in done.stdout, (done.stdout, done.stderr)
    assert message in done.stderr.strip().splitlines()[-1], done.stderr
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_unknown_policy_is_refused(tmp_path):
    done = ibis("segment", tmp_path / "x.png", "--query", "liver", "--policy", "gpt")
    assert done.returncode == 2 and "invalid choice: 'gpt'" in done.stderr


def test_failed_run_writes_nothing(tmp_path):
    """A policy that never answers validly ends the run with a clear error and no outputs."""
    Image.fromarray(np.full((6, 8), 90, np.uint8)).save(tmp_path / "ok.png")
    responses = tmp_path / "junk.txt"
    responses.write_text("no\nstill no\nnope\n")
    out = tmp_path / "out"
    done = ibis("segment", tmp_path / "ok.png", "--query", "liver", "--policy", "scripted", "--responses", responses,
                "--out", out)
    assert done.returncode == 2 and "invalid_output" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_export_onnx_and_bench(tmp_path):
    done = ibis("export-onnx", "--out", tmp_path / "onnx")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "onnx" / "tool.json").read_text())
    assert manifest["input_size"] == 256 and manifest["mask_side"] == 256
    done = ibis("bench", "--runs", "2", "--warmup", "1", "--cold-runs", "1")
    assert done.returncode == 0, done.stderr
    warm, cold = done.stdout.split("Cold start")
    assert "| onnxruntime |" in warm and "ratio onnxruntime/torch" in warm and "policy ms/turn" in warm
    assert "s to the first turn | s to the written mask" in cold and cold.count("| torch |") == 1
    first, written = (float(v) for v in cold.split("| onnxruntime |")[1].split("|")[:2])
    assert 0 < first < written


def test_a_nifti_slice_says_how_it_is_shown_and_its_mask_lies_on_the_input_grid(tmp_path):
    """TotalSegmentator's CT and liver, as stored (RAS) and reoriented (P, L, I axes): mask.nii.gz matches the
    reference liver voxel for voxel in each file's own order, without any transpose or turn."""
    import nibabel as nib
    from conftest import SHARED_DATA
    from ibisagent.imaging.io import radiological_slice, read_nifti_volume
    from ibisagent.metrics import iou
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    folder = SHARED_DATA / "volumes" / "totalseg-example"
    if not (folder / "example_seg.nii.gz").is_file():
        pytest.skip(f"real NIfTI absent: {folder}")
    liver = (read_nifti_volume(folder / "example_seg.nii.gz") == 5).astype(np.uint8)  # class_map.json: 5 = liver
    Image.fromarray(radiological_slice(liver, 24) * 255).save(tmp_path / "liver_view.png")  # as the agent sees it
    ct, seg = nib.load(str(folder / "example_ct_sm.nii.gz")), nib.load(str(folder / "example_seg.nii.gz"))
    turn = ornt_transform(io_orientation(ct.affine), axcodes2ornt(("P", "L", "I")))
    nib.save(ct.as_reoriented(turn), str(tmp_path / "ct_pli.nii.gz"))
    nib.save(seg.as_reoriented(turn), str(tmp_path / "seg_pli.nii.gz"))
    for name, image, reference in (("ras", folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"),
                                   ("pli", tmp_path / "ct_pli.nii.gz", tmp_path / "seg_pli.nii.gz")):
        out = tmp_path / name
        done = ibis("segment", image, "--slice", "24", "--query", "Segment the liver.", "--policy", "oracle",
                    "--ground-truth", tmp_path / "liver_view.png", "--max-turns", "6", "--out", out)
        assert done.returncode == 0, done.stderr
        trajectory = json.loads((out / "trajectory.json").read_text())
        assert trajectory["display"].startswith("NIfTI slice 24 of 30 along the superior axis") and \
            "mask.nii.gz is on the input's voxel grid" in trajectory["display"]
        written, source = nib.load(str(out / "mask.nii.gz")), nib.load(str(reference))
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        mask, target = np.asarray(written.dataobj) > 0, np.asarray(source.dataobj) == 5
        planes = np.nonzero(mask.any(axis=(0, 1)))[0]  # the file axis k: superior (RAS) or inferior (PLI)
        assert list(planes) == [24 if name == "ras" else 29 - 24]  # one slice: the inferior axis counts down
        plane = planes[0]
        assert iou(mask[..., plane], target[..., plane]) > 0.8, name
        view = np.asarray(Image.open(out / "mask.png")) > 0  # mask.png: the agent's view, as the record says
        assert view.shape == (101, 122) and iou(view, radiological_slice(liver, 24) > 0) > 0.8


def test_segment_dicom_writes_a_valid_seg(tmp_path):
    from conftest import SHARED_DATA
    from ibisagent.dicom.seg_writer import list_segments, segment_mask

    series = SHARED_DATA / "dicom" / "dcmqi-ct-3slice"
    if not series.is_dir():
        pytest.skip(f"real DICOM absent: {series}")
    responses = tmp_path / "answers.txt"
    responses.write_text("<think>liver</think><action>Positive Point (0.3000, 0.4500)</action>\n"
                         "<think>done</think><action>Terminate</action>\n")
    out = tmp_path / "out"
    done = ibis("segment-dicom", series, "--slice", "1", "--query", "Segment the liver.", "--label", "liver",
                "--policy", "scripted", "--responses", responses, "--out", out)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((out / "seg.json").read_text())
    trajectory = sidecar["trajectory"]
    assert trajectory["status"] == "terminated" and trajectory["label"] == "liver"
    assert [s.label for s in list_segments(out / "seg.dcm")] == ["liver"]
    mask = segment_mask(out / "seg.dcm", sidecar["source_sop_instance_uid"])
    assert int(mask.sum()) == trajectory["final_mask_area"] > 0
    overlay = np.asarray(Image.open(out / "seg_overlay.png").convert("RGB"))  # the segmented slice, for a person
    assert overlay.shape[:2] == mask.shape and mark_at(overlay, 0.3, 0.45) == "positive"
    assert "seg_overlay.png" in done.stdout


@pytest.mark.parametrize("query, label, how, code_type", [
    ("Segment the liver.", "liver", "named in the query", "Liver"),
    ("Which organ produces bile? Segment it.", "liver", "query encoder", "Liver"),
    ("Segment the thyroid gland.", "target", "no match", "Tissue"),
])
def test_segment_dicom_takes_the_label_from_the_query(tmp_path, query, label, how, code_type):
    """No --label: the segment is named and coded from the query; one plain line says how, no raw warning."""
    from conftest import SHARED_DATA
    from ibisagent.dicom.seg_writer import list_segments

    series = SHARED_DATA / "dicom" / "dcmqi-ct-3slice"
    if not series.is_dir():
        pytest.skip(f"real DICOM absent: {series}")
    responses = tmp_path / "answers.txt"
    responses.write_text("<think>here</think><action>Positive Point (0.3000, 0.4500)</action>\n"
                         "<think>done</think><action>Terminate</action>\n")
    out = tmp_path / "out"
    done = ibis("segment-dicom", series, "--slice", "1", "--query", query, "--policy", "scripted",
                "--responses", responses, "--out", out)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((out / "seg.json").read_text())
    assert sidecar["trajectory"]["label"] == label and sidecar["trajectory"]["label_choice"]["how"] == how
    segment = sidecar["segments"][0]
    assert (segment["label"], segment["type"]) == (label, code_type)
    assert "Warning" not in done.stderr and str(REPO) not in done.stderr, done.stderr
    lines = [line for line in done.stdout.splitlines() if "segment label" in line]
    assert len(lines) == 1 and (f"'{label}'" in lines[0] or how == "no match"), done.stdout
    written = list_segments(out / "seg.dcm")[0]
    assert (written.label, written.type) == (label, code_type)


def test_segment_dicom_refuses_a_folder_without_dicom(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    done = ibis("segment-dicom", tmp_path / "series", "--query", "liver", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.startswith("ibis: error:") and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_segment_a_prone_dicom_file_agent_sees_the_standard_display_mask_png_lies_on_its_pixels(tmp_path):
    """A prone slice and its supine original give one run; mask.png follows each file's own pixel order."""
    import pydicom
    from conftest import SHARED_DATA, turn_prone
    from ibisagent.dicom.seg_writer import segment_mask

    series, liver = SHARED_DATA / "dicom" / "dcmqi-ct-3slice", SHARED_DATA / "dicom" / "dcmqi-seg" / "liver.dcm"
    if not liver.is_file():
        pytest.skip(f"real DICOM absent: {liver}")
    source = sorted(p for p in series.iterdir() if p.is_file())[1]
    dataset = pydicom.dcmread(source)
    reference = segment_mask(liver, str(dataset.SOPInstanceUID))  # dcmqi's liver on this slice
    turn_prone(dataset)
    dataset.save_as(tmp_path / "prone.dcm")
    Image.fromarray(reference.astype(np.uint8) * 255).save(tmp_path / "supine_liver.png")
    Image.fromarray(reference[::-1, ::-1].astype(np.uint8) * 255).save(tmp_path / "prone_liver.png")
    runs = {}
    for name, image in (("supine", source), ("prone", tmp_path / "prone.dcm")):
        done = ibis("segment", image, "--query", "Segment the liver.", "--policy", "oracle", "--ground-truth",
                    tmp_path / f"{name}_liver.png", "--max-turns", "5", "--out", tmp_path / name)
        assert done.returncode == 0, done.stderr
        runs[name] = (json.loads((tmp_path / name / "trajectory.json").read_text()),
                      np.asarray(Image.open(tmp_path / name / "mask.png")) > 0)
    (supine, supine_mask), (prone, prone_mask) = runs["supine"], runs["prone"]
    assert supine["display"] == "as stored" and "flipped top-to-bottom, then flipped left-to-right" in prone["display"]
    assert prone["clicks"] == supine["clicks"]  # the same picture, so the same clicks in the agent's view
    assert np.array_equal(prone_mask, supine_mask[::-1, ::-1])  # ... and each mask on its own file's pixels
    assert prone["reference_iou"] == supine["reference_iou"] > 0.5
