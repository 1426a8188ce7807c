"""`python -m monai.bundle run` builds the agent from configs/inference.yaml and runs a datalist."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bundle_run_over_a_real_datalist(tmp_path, real_pairs):
    items = [{"image": str(p.image), "label": str(p.mask), "query": f"Segment the {p.label}."} for p in real_pairs[:2]]
    items.append({"image": str(tmp_path / "missing.png"), "label": str(real_pairs[0].mask), "query": "x"})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": items}))
    out = tmp_path / "bundle_out"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "configs" / "inference.yaml"),
         "--datalist", str(datalist), "--output_dir", str(out), "--max_turns", "3"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["status"] for entry in summary][:2] != ["failed", "failed"]
    assert summary[2]["status"] == "failed" and "no such file" in summary[2]["error"]
    assert all(0.0 <= entry["reference_iou"] <= 1.0 for entry in summary[:2])  # the default (lite) policy, scored
    written = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert len(written) == 2 and all((out / name / "mask.png").is_file() for name in written)


def test_bundle_metadata_is_valid_json():
    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert metadata["name"] == "ibisagent" and "version" in metadata


def test_bundle_run_on_a_dicom_series_writes_a_seg(tmp_path):
    from conftest import SHARED_DATA

    series = SHARED_DATA / "dicom" / "dcmqi-ct-3slice"
    if not series.is_dir():
        import pytest

        pytest.skip(f"real DICOM absent: {series}")
    answers = ["<think>liver</think><action>Positive Point (0.3000, 0.4500)</action>",
               "<think>done</think><action>Terminate</action>"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": str(series), "slice": 1, "query": "Segment the liver.",
                                                 "target": "liver"}]}))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "configs" / "inference.yaml"),
         "--datalist", str(datalist), "--output_dir", str(out), "--policy", "scripted",
         "--policy_options", json.dumps({"responses": answers})],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary[0]["status"] == "terminated" and summary[0]["clicks"] == 1
    from ibisagent.dicom.seg_writer import list_segments

    seg = next(out.glob("*/seg.dcm"))
    assert [s.label for s in list_segments(seg)] == ["liver"]
