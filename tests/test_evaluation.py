import json
import subprocess
import sys

import numpy as np
import pytest

from ibisagent.clicks import next_click
from ibisagent.evaluation import choose_query, evaluate, markdown_table, read_manifest, summarise
from ibisagent.metrics import boundary_f1, dice, iou, noc
from ibisagent.policies import build_policy


def test_metrics_on_hand_made_masks():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True  # 16 px
    b[4:8, 4:8] = True  # 16 px, overlap 4
    assert iou(a, b) == pytest.approx(4 / 28)
    assert dice(a, b) == pytest.approx(8 / 32)
    assert iou(a, a) == dice(a, a) == boundary_f1(a, a) == 1.0
    empty = np.zeros_like(a)
    assert iou(empty, empty) == 1.0 and iou(a, empty) == 0.0 and boundary_f1(a, empty) == 0.0
    assert 0.0 < boundary_f1(a, b) < 1.0
    assert noc([0.5, 0.86, 0.95], 0.85) == 2 and noc([0.5, 0.6], 0.9, max_clicks=20) == 20
    with pytest.raises(ValueError, match="differ in shape"):
        iou(a, a[:5])


def test_click_simulator_clicks_the_centre_of_the_larger_error():
    target = np.zeros((21, 21), bool)
    target[5:16, 5:16] = True
    click, summary = next_click(np.zeros_like(target), target)
    assert click.positive and (summary.false_negative, summary.false_positive) == (121, 0)
    assert (round(click.x * 21 - 0.5), round(click.y * 21 - 0.5)) == (10, 10)
    prediction = target.copy()
    prediction[0:3, :] = True  # 63 false-positive pixels, no false negatives
    click, _ = next_click(prediction, target)
    assert not click.positive and click.y * 21 < 3
    assert next_click(target, target)[0] is None


def test_summary_is_unweighted_over_sources():
    def record(source, value):
        return {"source": source, "clicks": 3, "iou": value, "dsc": value, "f1": value, "iou_at": {k: value for k in "1 3 5 10".split()},
                "noc85": 1, "noc90": 2, "box_iou": value}

    summary = summarise([record("big", 1.0)] * 9 + [record("small", 0.0)])
    assert summary["by_source"]["big"]["n"] == 9 and summary["overall"]["iou"] == pytest.approx(0.5)
    assert summary["overall"]["n"] == 10 and summary["overall"]["iou_at"]["5"] == pytest.approx(0.5)
    assert "**overall**" in markdown_table(summary)


def test_queries_are_deterministic_and_reasoning_never_names_the_label(med2d_manifest):
    queries = json.loads((med2d_manifest.parent / "queries.json").read_text())
    pairs = read_manifest(med2d_manifest, "test")
    liver = next(p for p in pairs if p.label == "liver")
    assert choose_query(liver, queries, "referring") == choose_query(liver, queries, "referring")
    assert "liver" in choose_query(liver, queries, "referring")
    assert choose_query(liver, queries, "reasoning") in queries["reasoning"]["liver"]
    with pytest.raises(ValueError, match="no pairs in split"):
        read_manifest(med2d_manifest, "nonexistent")


def test_oracle_evaluation_on_real_pairs(lite_tool, real_pairs):
    records = evaluate(real_pairs[:4], lite_tool, lambda gt: build_policy("oracle", ground_truth=gt), max_turns=5)
    assert len(records) == 4
    for r in records:
        assert 0 <= r["iou"] <= 1 and 0 <= r["dsc"] <= 1 and 0 <= r["f1"] <= 1
        assert r["iou_at"]["10"] == r["iou_at"]["5"] or r["clicks"] > 5  # carried forward after 5 turns
        assert 0 <= r["box_iou"] <= 1 and 1 <= r["noc90"] <= 5
    assert summarise(records)["overall"]["box_iou"] > 0.3  # the box is LiteMedSAM's trained prompt


def test_evaluate_command_writes_json(tmp_path, med2d_manifest):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "ibisagent.cli", "evaluate", "--manifest", str(med2d_manifest),
                           "--split", "test", "--per-source", "1", "--limit", "2", "--max-turns", "3",
                           "--queries", str(med2d_manifest.parent / "queries.json"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report) >= {"by_source", "overall", "runs", "command"} and report["overall"]["n"] == 2
    assert len(report["runs"]) == 1 and len(report["runs"][0]["pairs"]) == 2
    assert set(report["overall"]) >= {"iou", "dsc", "f1", "iou_at", "noc85", "noc90", "box_iou", "n"}
    assert "| source |" in done.stdout


def test_auroc_and_calibration_of_confidence():
    from ibisagent.evaluation import calibration
    from ibisagent.metrics import auroc

    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([1, 1, 1], [True, False, True]) == pytest.approx(0.5)  # ties: no information
    assert auroc([0.2, 0.3], [True, True]) != auroc([0.2, 0.3], [True, True])  # NaN without both classes

    def record(source, value, confidence, threshold=0.5):
        return {"source": source, "iou": value, "confidence": confidence, "unreliable": confidence < threshold}

    records = [record("a", 0.9, 0.8), record("a", 0.1, 0.3), record("b", 0.7, 0.6), record("b", 0.4, 0.45),
               record("b", 0.2, 0.65)]  # the last failure scores above a good run's confidence: not perfect
    result = calibration(records)
    assert result["n"] == 5 and result["failures"] == 3 and result["flagged"] == 2
    assert result["flagged_failures"] == 2
    assert result["auroc"] == pytest.approx(5 / 6)
    assert result["iou_unflagged"] == pytest.approx((0.9 + (0.7 + 0.2) / 2) / 2)  # mean of the sources' means
    assert result["iou_flagged"] == pytest.approx((0.1 + 0.4) / 2)
