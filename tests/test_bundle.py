"""`python -m monai.bundle run` builds the agent from configs/inference.yaml and runs a datalist."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bundle_run(*overrides, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "configs" / "inference.yaml"),
         *map(str, overrides)], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_bundle_run_over_a_plain_list_datalist_says_what_it_did(tmp_path, real_pairs):
    """A plain JSON list works like MONAI's {"testing": [...]}; relative paths are relative to the file."""
    import shutil

    items = [{"image": str(p.image), "label": str(p.mask), "query": f"Segment the {p.label}."} for p in real_pairs[:2]]
    shutil.copy(real_pairs[0].image, tmp_path / "near.png")
    items.append({"image": "near.png", "query": "Segment the target."})
    items.append({"image": str(tmp_path / "missing.png"), "label": str(real_pairs[0].mask), "query": "x"})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(items))
    out = tmp_path / "bundle_out"
    done = bundle_run("--datalist", datalist, "--output_dir", out, "--max_turns", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["status"] for entry in summary][:3] != ["failed"] * 3
    assert summary[3]["status"] == "failed" and "no such file" in summary[3]["error"]
    scores = [entry["reference_iou"] for entry in summary[:2]]
    assert all(0.0 <= score <= 1.0 for score in scores)  # the default (lite) policy, scored
    assert "4 item(s): " in done.stdout and f"mean IoU {sum(scores) / 2:.3f} against 2 reference(s)" in done.stdout
    assert f"outputs in {out}" in done.stdout and "item 3 (missing.png): failed" in done.stdout
    written = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert written == [entry["output"] for entry in summary[:3]] and written[2] == "0002_near"
    assert all(not name.endswith(".png") and (out / name / "mask.png").is_file() for name in written)
    for noise in ("logging.conf does not exist", "optional_packages_version", "Traceback"):
        assert noise not in done.stdout + done.stderr, noise


@pytest.mark.parametrize("content, message", [
    ({"training": [{"image": "a.png", "query": "q"}]}, "an object needs a 'testing' list"),
    ([{"image": "a.png"}], "item 0 has no 'query'"),
    ("a.png", "expected a list of items"),
    ("{not json", "not valid JSON"),
])
def test_bundle_run_refuses_a_bad_datalist_in_one_line(tmp_path, content, message):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(content if content == "{not json" else json.dumps(content))
    done = bundle_run("--datalist", datalist, "--output_dir", tmp_path / "out")
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("ibisagent: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_bundle_metadata_is_valid_json():
    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert metadata["name"] == "ibisagent" and "version" in metadata


def test_bundle_run_on_a_dicom_series_writes_a_seg(tmp_path):
    from conftest import SHARED_DATA

    series = SHARED_DATA / "dicom" / "dcmqi-ct-3slice"
    if not series.is_dir():
        pytest.skip(f"real DICOM absent: {series}")
    answers = ["<think>liver</think><action>Positive Point (0.3000, 0.4500)</action>",
               "<think>done</think><action>Terminate</action>"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": str(series), "slice": 1, "query": "Segment the liver.",
                                                 "target": "liver"}]}))
    out = tmp_path / "out"
    done = bundle_run("--datalist", datalist, "--output_dir", out, "--policy", "scripted",
                      "--policy_options", json.dumps({"responses": answers}))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["status"] == "terminated" and summary[0]["clicks"] == 1
    from ibisagent.dicom.seg_writer import list_segments

    seg = next(out.glob("*/seg.dcm"))
    assert [s.label for s in list_segments(seg)] == ["liver"]


def test_bundle_run_on_a_volume_writes_the_whole_structure(tmp_path):
    """A volume item (an npz of ../shared/data/volumes, its own labels as the reference): the oracle on the key
    slice, propagation, mask.nii.gz on the volume's grid, and the summary's score and key-slice confidence."""
    import nibabel as nib
    import numpy as np

    from conftest import SHARED_DATA

    volume = SHARED_DATA / "volumes" / "acdc" / "patient001_ED.npz"
    if not volume.is_file():
        pytest.skip(f"real volumes absent: {volume}")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps([{"image": str(volume), "query": "Segment the left ventricle.",
                                     "target": "heart ventricle left"}]))
    out = tmp_path / "out"
    done = bundle_run("--datalist", datalist, "--output_dir", out, "--policy", "oracle", "--max_turns", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    entry = json.loads((out / "summary.json").read_text())[0]
    assert entry["status"] in ("terminated", "max_turns"), entry
    assert entry["reference_dice"] > 0.5 and entry["mask_voxels"] > 0, entry
    assert 0.0 <= entry["confidence"] <= 1.0 and isinstance(entry["unreliable"], bool), entry
    folder = out / entry["output"]
    assert {"mask.nii.gz", "trajectory.json", "montage.png"} <= {p.name for p in folder.iterdir()}
    labels = np.load(volume)["labels"]
    mask = np.asarray(nib.load(folder / "mask.nii.gz").dataobj)
    assert mask.shape == labels.shape and int(mask.sum()) == entry["mask_voxels"]
