"""The MONAI Deploy application on real series of ../shared/data/dicom: a DICOM-SEG and a TID 1500 SR.

The SDK's own loader and selector run (monai-deploy-app-sdk on holoscan, on
the CPU); the agent is the embedded default (IBIS-lite + LiteMedSAM). Every
DICOM object written is checked by dciodvfy (0 errors) and read back with
highdicom. Bad inputs must end with a clear error and no DICOM file written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from conftest import SHARED_DATA

DICOM = SHARED_DATA / "dicom"
HEAD_RULES = ('{"selections": [{"name": "Head CT", "conditions": {"Modality": "(?i)^CT$", '
              '"SeriesDescription": "(?i)brain"}}]}')
MR_RULES = '{"selections": [{"name": "MR", "conditions": {"Modality": "(?i)^MR$"}}]}'
TARGETS = "targets:\n  - label: brain\n    query: Segment the brain.\n  - label: skull\n    query: Segment the skull.\n"


@pytest.fixture(scope="module")
def dciodvfy() -> str:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    return tool


def dciodvfy_errors(tool: str, path: Path) -> list[str]:
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """One input folder holding two real CT series: dcmqi's 3 abdominal slices and the 28-slice Philips head CT."""
    sources = {"ct3": DICOM / "dcmqi-ct-3slice", "head": DICOM / "philips-head-ct"}
    missing = [str(path) for path in sources.values() if not path.is_dir()]
    if missing:
        pytest.skip(f"real DICOM series absent: {', '.join(missing)} (../shared/data is provided beside the repo)")
    root = tmp_path_factory.mktemp("study")
    for name, source in sources.items():
        shutil.copytree(source, root / name)
    return root


@pytest.fixture(scope="module")
def sdk():
    return pytest.importorskip("monai.deploy.core",
                               reason="monai-deploy-app-sdk not installed (pip install -e .[deploy])")


@pytest.fixture(scope="module")
def agent_parts(lite_tool):
    from ibisagent.policies import build_policy

    return lite_tool, build_policy("lite")


def _run(sdk, study, out, agent_parts, rules=HEAD_RULES, policy=None, targets=TARGETS, tmp=None):
    from ibisagent.deploy.app import run_deploy
    from ibisagent.deploy.config import load_targets
    from ibisagent.deploy.provenance import algorithm_parameters

    targets_file = Path(tmp or out.parent) / "targets.yaml"
    targets_file.write_text(targets)
    tool, default_policy = agent_parts
    policy = policy or default_policy
    return run_deploy(study, out, load_targets(targets_file), rules, tool, policy, rules_name="the test rules",
                      algorithm_parameters=algorithm_parameters("lite-medsam", "lite", policy))


# ----------------------------------------------------------------------------- the application, in process

@pytest.fixture(scope="module")
def deployed(sdk, study, agent_parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deployed") / "out"
    written = _run(sdk, study, out, agent_parts)
    assert [p.name for p in written] == ["seg.dcm", "sr.dcm", "run.json"]
    return out


def test_seg_and_sr_are_valid_dicom(deployed, dciodvfy):
    assert dciodvfy_errors(dciodvfy, deployed / "seg.dcm") == []
    assert dciodvfy_errors(dciodvfy, deployed / "sr.dcm") == []


def test_the_selector_picked_the_head_series_and_the_seg_maps_onto_its_instances(deployed, study):
    import highdicom as hd

    from ibisagent.dicom import list_segments, read_series, segment_mask

    head = read_series(study / "head", slice_index=0)
    seg = hd.seg.segread(str(deployed / "seg.dcm"))
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    head_uids = [str(d.SOPInstanceUID) for d in head.datasets]  # sorted, as the run's slice indices
    assert referenced and referenced <= set(head_uids)  # the head series, none of the abdominal slices
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == head.series_instance_uid
    assert [s.label for s in list_segments(seg)] == ["brain", "skull"]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert len(item.RecommendedDisplayCIELabValue) == 3
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion
        assert "lite_policy.pt sha256:" in algorithm.AlgorithmParameters
        assert "lite_medsam_click_decoder.pt sha256:" in algorithm.AlgorithmParameters
    record = json.loads((deployed / "run.json").read_text())
    assert record["slice_count"] == head.slice_count == 28
    assert record["encoded_slices"] <= head.slice_count  # one encoder for both targets: no slice twice
    for number, target in enumerate(record["targets"], 1):
        assert 0 <= target["key_slice"] < head.slice_count
        masks = {k: segment_mask(seg, uid, number) for k, uid in enumerate(head_uids) if uid in referenced}
        assert all(mask.shape == head.volume.shape[1:] for mask in masks.values())
        holding = sorted(k for k, mask in masks.items() if mask.any())
        assert holding == target["mask_slices"]  # the whole-series mask, each plane on its own instance
        assert sum(int(mask.sum()) for mask in masks.values()) == target["mask_voxels"]
        if target["final_mask_area"]:
            assert target["key_slice"] in holding and len(holding) > 1  # propagated beyond the key slice


def test_the_report_holds_volume_reasoning_status_and_confidence_and_references_the_seg(deployed, study):
    from pydicom.sr.codedict import codes

    from ibisagent.dicom import read_series
    from ibisagent.dicom.sr_writer import read_report

    seg = pydicom.dcmread(deployed / "seg.dcm")
    sr = read_report(deployed / "sr.dcm")
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    record = json.loads((deployed / "run.json").read_text())
    head = read_series(study / "head", slice_index=0)
    voxel_ml = head.geometry.pixel_spacing[0] * head.geometry.pixel_spacing[1] * head.geometry.slice_spacing / 1000
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    head_uids = {str(d.SOPInstanceUID) for d in head.datasets}
    for number, (group, target) in enumerate(zip(groups, record["targets"], strict=True), 1):
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert reference.referenced_segment_numbers == [number]
        sources = {image.referenced_sop_instance_uid for image in reference.source_images_for_segmentation}
        assert sources and sources <= head_uids
        (volume,) = group.get_measurements()
        assert volume.unit.value == "ml"
        assert volume.value == pytest.approx(target["mask_voxels"] * voxel_ml, abs=1e-3)  # the whole series
        texts = {item.ConceptNameCodeSequence[0].CodeMeaning: str(item.TextValue)
                 for item in group[0].ContentSequence if item.ValueType == "TEXT"}
        thinks = [turn["think"] for turn in target["turns"] if turn["think"]]
        assert thinks and all(think.strip() in texts["Agent reasoning"] for think in thinks)
        assert texts["Agent run status"] == target["status"]
        assert texts["Clinician request"] == target["query"]
        assert f"key slice {target['key_slice'] + 1} " in texts["Segmented extent"]
        assert f"{target['confidence']['value']:.3f}" in texts["Agent confidence"]
        evaluations = group.get_qualitative_evaluations()
        (evaluation,) = [e for e in evaluations if e.name.meaning == "Unreliable result"]
        assert evaluation.value == (codes.SCT.Yes if target["unreliable"] else codes.SCT.No)
    evidence = {item.SeriesInstanceUID for study_item in sr.CurrentRequestedProcedureEvidenceSequence
                for item in study_item.ReferencedSeriesSequence}
    assert evidence == {seg.SeriesInstanceUID, head.series_instance_uid}


# ----------------------------------------------------------------------------- bad input

def test_no_matching_series_is_a_clear_error_and_writes_nothing(sdk, study, agent_parts, tmp_path):
    from ibisagent.deploy import DeployError

    out = tmp_path / "out"
    with pytest.raises(DeployError, match=r"no series in the input matches the test rules; the input holds: "
                                          r".*'STD BRAIN 5MM' CT: 28 object\(s\)"):
        _run(sdk, study, out, agent_parts, rules=MR_RULES)
    assert list(out.iterdir()) == []


def test_a_run_the_agent_fails_writes_nothing(sdk, study, agent_parts, tmp_path):
    from ibisagent.deploy import DeployError
    from ibisagent.policies import build_policy

    out = tmp_path / "out"
    garbage = build_policy("scripted", responses=["I would rather not."] * 10)
    with pytest.raises(DeployError, match="target 'brain': the agent's run ended with invalid_output"):
        _run(sdk, study, out, agent_parts, policy=garbage)
    assert list(out.iterdir()) == []


def test_a_series_with_a_missing_slice_is_refused_before_the_agent_runs(study, agent_parts, tmp_path):
    from ibisagent.deploy import DeployError
    from ibisagent.deploy.config import Target
    from ibisagent.deploy.study import segment_series
    from ibisagent.dicom import read_series

    files = list(read_series(study / "head", slice_index=0).files)
    del files[len(files) // 2]
    tool, policy = agent_parts
    with pytest.raises(DeployError, match="the slice spacing is uneven .a slice is probably missing."):
        segment_series(files, [Target("brain", "Segment the brain.")], tool, policy)


def test_a_series_of_one_image_is_segmented_on_that_image(study, agent_parts, tmp_path, dciodvfy):
    """A rule may select a single image (a radiograph, one slice): the SEG holds its one frame."""
    import highdicom as hd

    from ibisagent.deploy.config import Target
    from ibisagent.deploy.study import segment_series, write_study
    from ibisagent.dicom import read_series, segment_mask

    one = read_series(study / "ct3", slice_index=1).files[1]
    tool, policy = agent_parts
    result = segment_series([one], [Target("liver", "Segment the liver.")], tool, policy)
    write_study(tmp_path / "out", result)
    assert dciodvfy_errors(dciodvfy, tmp_path / "out" / "seg.dcm") == []
    assert dciodvfy_errors(dciodvfy, tmp_path / "out" / "sr.dcm") == []
    (target,) = json.loads((tmp_path / "out" / "run.json").read_text())["targets"]
    seg = hd.seg.segread(str(tmp_path / "out" / "seg.dcm"))
    mask = segment_mask(seg, str(pydicom.dcmread(one, stop_before_pixels=True).SOPInstanceUID), 1)
    assert int(mask.sum()) == target["mask_voxels"] == target["final_mask_area"]
    assert target["key_slice_from"] == "the only image"


@contextlib.contextmanager
def read_only(folder: Path):
    """A folder nobody can write into, root included (immutable where we are root)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a read-only folder for root here (chattr +i failed)")
        try:
            yield folder
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


def test_a_read_only_output_folder_is_refused_before_any_model_runs(study, tmp_path):
    from ibisagent.deploy import DeployError
    from ibisagent.deploy.app import check_folders

    with read_only(tmp_path / "out") as out:
        with pytest.raises(DeployError, match=r"cannot write to the output folder .*out: (Permission denied|"
                                              r"Operation not permitted)"):
            check_folders(study, out)
        assert list(out.iterdir()) == []


BAD_INPUT = {  # case: (extra arguments, what the one error line says)
    "no matching series": (["--rules", "{tmp}/rules.json"],
                           "no series in the input matches the rules in rules.json; the input holds: "),
    "the agent fails": (["--rules", "{tmp}/rules.json", "--policy", "scripted", "--responses", "{tmp}/garbage.txt"],
                        "target 'brain': the agent's run ended with invalid_output"),
    "read-only output": ([], "cannot write to the output folder "),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_the_application_reports_bad_input_in_one_line_exits_non_zero_and_writes_nothing(study, tmp_path, case):
    """What a gateway sees: `python -m ibisagent.deploy` (the MAP's command) on each bad input of the issue."""
    arguments, message = BAD_INPUT[case]
    (tmp_path / "rules.json").write_text(MR_RULES if case == "no matching series" else HEAD_RULES)
    (tmp_path / "garbage.txt").write_text("I would rather not.\n" * 10)
    (tmp_path / "targets.yaml").write_text(TARGETS)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ibisagent.deploy", "-i", str(study), "-o", str(out), "--targets",
               str(tmp_path / "targets.yaml"), *(a.format(tmp=tmp_path) for a in arguments)]
    with read_only(out) if case == "read-only output" else contextlib.nullcontext():
        run = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert run.returncode == 2, run.stderr[-2000:]
        errors = [line for line in run.stderr.splitlines() if line.startswith("ibis: error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"ibis: error: {message}"), run.stderr[-2000:]
        assert not any(out.rglob("*"))  # no DICOM, no side-car, no staging folder left behind


def test_bad_targets_and_rules_files_are_named(tmp_path):
    from ibisagent.deploy import DeployConfigError, load_rules, load_targets

    bad = tmp_path / "targets.yaml"
    bad.write_text("targets:\n  - label: liver\n")
    with pytest.raises(DeployConfigError, match="entry 1: expected exactly 'label' and 'query'"):
        load_targets(bad)
    bad.write_text("targets:\n  - {label: liver, query: a}\n  - {label: Liver, query: b}\n")
    with pytest.raises(DeployConfigError, match="liver appear more than once"):
        load_targets(bad)
    rules = tmp_path / "rules.json"
    rules.write_text('{"selections": []}')
    with pytest.raises(DeployConfigError, match="expected"):
        load_rules(rules)
    assert [t.label for t in load_targets()] == ["liver"]  # the packaged defaults read
    assert "selections" in load_rules()


def test_a_report_on_a_seg_of_one_segment(tmp_path):
    """highdicom puts a one-segment SEG's Segment Identification in the shared functional group, then cannot
    reference that segment from an SR (an AttributeError): `ibis deploy` with its one default target failed so
    (found by the canary run of tests/test_security.py)."""
    import numpy as np

    from ibisagent.dicom.series import read_series
    from ibisagent.dicom.seg_writer import write_segmentation
    from ibisagent.dicom.sr_writer import TargetFinding, build_report

    source = SHARED_DATA / "dicom" / "dcmqi-ct-3slice"
    if not source.is_dir():
        pytest.skip(f"real DICOM absent: {source}")
    series = read_series(source, slice_index=1)
    mask = np.zeros((int(series.source.Rows), int(series.source.Columns)), bool)
    mask[200:260, 220:300] = True
    written = write_segmentation(tmp_path / "seg.dcm", series.source, mask, "liver")
    seg = pydicom.dcmread(written.path)
    assert "SegmentIdentificationSequence" in seg.SharedFunctionalGroupsSequence[0]  # the case highdicom misses
    report = build_report(seg, list(series.datasets), [TargetFinding(1, "Segment the liver.", "t", "terminated", 1.5)])
    assert str(seg.SOPInstanceUID) in str(report)
