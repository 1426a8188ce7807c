"""The MAP image (scripts/package_map.py): its layout, manifests and layers, and a run equal to the in-process one.

Runs whenever docker answers and the image is built (`python scripts/package_map.py`); building it
takes longer than CI allows (docs/deploy.md, docs/results.md), so the test never builds it itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import SHARED_DATA

from test_deploy import HEAD_RULES, MR_RULES, TARGETS, dciodvfy_errors

REPO = Path(__file__).resolve().parents[1]
IMAGE = "ibisagent-map:0.1.0"
GRAPH_KINDS = ["lite-medsam", "lite-policy", "query-encoder"]  # every model the default run uses


def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (docs/deploy.md)")
    if docker("version", "--format", "{{.Server.Version}}", timeout=30).returncode != 0:
        pytest.skip("no docker daemon answers (start dockerd as docs/deploy.md says)")
    inspect = docker("image", "inspect", IMAGE, timeout=30)
    if inspect.returncode != 0:
        pytest.skip(f"the MAP image {IMAGE} is not built (python scripts/package_map.py)")
    sys.path.insert(0, str(REPO / "scripts"))
    from package_map import source_digest

    labels = json.loads(inspect.stdout)[0]["Config"].get("Labels") or {}
    if labels.get("ibisagent.source") != source_digest():
        pytest.skip(f"the MAP image {IMAGE} was built from other code than this checkout's "
                    "(rebuild: python scripts/package_map.py)")
    return IMAGE


def in_image(image: str, *command: str) -> str:
    run = docker("run", "--rm", "--network", "none", "--entrypoint", command[0], image, *command[1:])
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_the_image_has_the_map_layout_manifests_and_no_torch(image):
    # one container for every look inside: with vfs each `docker run` copies the whole image
    paths = ["/opt/holoscan/app/app.yaml", "/opt/holoscan/app/targets.yaml", "/opt/holoscan/app/rules.json",
             "/opt/holoscan/app/lib/ibisagent/deploy/app.py", "/var/holoscan/input", "/var/holoscan/output",
             "/var/holoscan/app.yaml",
             "/etc/holoscan/app.json", "/etc/holoscan/pkg.json"]
    script = (f"ls -d {' '.join(paths)} && echo @@ && cat /etc/holoscan/app.json && echo @@ && "
              "cat /etc/holoscan/pkg.json && echo @@ && /opt/holoscan/venv/bin/python -m pip list --format freeze "
              "&& echo @@ && ls /opt/holoscan/models/graphs/*/*.onnx")
    listing, app_text, pkg_text, packages, graphs = in_image(image, "/bin/sh", "-c", script).split("@@")
    assert len(listing.split()) == len(paths)
    app, pkg = json.loads(app_text), json.loads(pkg_text)
    assert app["environment"]["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input/"
    assert app["environment"]["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output/"
    assert app["environment"]["IBISAGENT_CACHE"] == "/opt/holoscan/models"
    assert app["sdk"] == "monai-deploy" and app["version"] == "0.1.0"
    assert pkg["applicationRoot"] == "/opt/holoscan/app" and pkg["modelRoot"] == "/opt/holoscan/models/"
    assert sorted(pkg["models"]) == GRAPH_KINDS
    for kind, path in pkg["models"].items():  # each named entry holds its graphs
        assert any(line.startswith(f"{path}/") for line in graphs.split()), (kind, graphs)
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["/opt/holoscan/venv/bin/python", "-m", "ibisagent.deploy"]
    assert json.loads(app["command"]) == config["Entrypoint"]
    names = {line.split("==")[0].lower() for line in packages.split()}
    assert {"onnxruntime", "monai-deploy-app-sdk", "holoscan-cu13", "highdicom"} <= names
    assert not names & {"torch", "torchvision", "sentence-transformers", "transformers", "monai", "cupy-cuda13x"}
    assert not any(name.startswith(("nvidia-cudnn", "nvidia-cublas")) for name in names)


def test_the_application_is_the_last_and_a_small_layer(image):
    """A code change rebuilds only the last layer: the application's, a few MB (map/Dockerfile)."""
    history = docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}",
                     image).stdout.splitlines()
    copies = [(int(size), made) for size, made in (line.split("\t", 1) for line in history) if " COPY " in made]
    assert len(copies) == 3, history  # newest first: the application, the graphs, the venv
    (app_size, app_made), (models_size, models_made), (venv_size, venv_made) = copies
    assert app_made.rstrip().endswith(" in /") and app_size < 50e6, copies
    assert models_made.rstrip().endswith(" in /opt/holoscan/models") and venv_made.rstrip().endswith(
        " in /opt/holoscan/venv"), copies
    assert venv_size > models_size > app_size


def _report_values(sr_path: Path) -> list[dict]:
    from ibisagent.dicom.sr_writer import AGENT_SCHEME, read_report

    groups = read_report(sr_path).content.get_volumetric_roi_measurement_groups()
    values = []
    for group in groups:
        texts = {item.ConceptNameCodeSequence[0].CodeMeaning: str(item.TextValue)
                 for item in group[0].ContentSequence if item.ValueType == "TEXT"
                 and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == AGENT_SCHEME}
        values.append({"volume": group.get_measurements()[0].value, "texts": texts})
    return values


def _segments(seg: pydicom.Dataset) -> list[tuple]:
    """Each segment's label, codes, colour, algorithm type and parameters (the weights' sha256)."""
    return [(item.SegmentLabel, item.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
             item.SegmentedPropertyTypeCodeSequence[0].CodeValue, tuple(item.RecommendedDisplayCIELabValue),
             item.SegmentAlgorithmType, item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters)
            for item in seg.SegmentSequence]


def _frames(seg: pydicom.Dataset) -> list[tuple]:
    """Each frame's segment and source instance."""
    return [(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber,
             frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for frame in seg.PerFrameFunctionalGroupsSequence]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A study folder with two real CT series, the rules picking the head CT, two targets."""
    sources = {"ct3": SHARED_DATA / "dicom/dcmqi-ct-3slice", "head": SHARED_DATA / "dicom/philips-head-ct"}
    if not all(path.is_dir() for path in sources.values()):
        pytest.skip("real DICOM series absent (../shared/data is provided beside the repo)")
    root = tmp_path_factory.mktemp("map")
    for name, source in sources.items():
        shutil.copytree(source, root / "study" / name)
    (root / "site").mkdir()
    (root / "site/rules.json").write_text(HEAD_RULES)
    (root / "site/mr_rules.json").write_text(MR_RULES)
    (root / "site/targets.yaml").write_text(TARGETS)
    return root


def run_map(image: str, site: Path, out: Path, *arguments: str) -> subprocess.CompletedProcess:
    """The MAP as a gateway runs it: network off, the study read-only, site files mounted."""
    out.mkdir()
    return docker("run", "--rm", "--network", "none", "--ulimit", "stack=33554432",
                  "-v", f"{site / 'study'}:/var/holoscan/input:ro", "-v", f"{out}:/var/holoscan/output",
                  "-v", f"{site / 'site'}:/site:ro", image, "--targets", "/site/targets.yaml", *arguments,
                  timeout=1200)


def test_the_map_run_equals_the_in_process_run(image, site, tmp_path):
    """The same study, rules and targets in the container (no torch, network off) and in this host's venv with
    the image's own graphs: the same masks pixel for pixel, the same segments, codes, weights' hashes, frame
    references, volumes and texts; both outputs pass dciodvfy."""
    out = tmp_path / "map_out"
    run = run_map(image, site, out, "--rules", "/site/rules.json")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    cache = tmp_path / "cache"
    container = f"ibis-map-graphs-{os.getpid()}"
    assert docker("create", "--name", container, image).returncode == 0
    try:
        assert docker("cp", f"{container}:/opt/holoscan/models", str(cache)).returncode == 0
    finally:
        docker("rm", container)
    entries = sorted(p.name for p in (cache / "graphs").iterdir() if p.is_dir())
    local = tmp_path / "local_out"
    host = subprocess.run([sys.executable, "-m", "ibisagent.deploy", "-i", str(site / "study"), "-o", str(local),
                           "--targets", str(site / "site/targets.yaml"), "--rules", str(site / "site/rules.json")],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "IBISAGENT_CACHE": str(cache)})
    assert host.returncode == 0, host.stderr[-3000:]
    assert sorted(p.name for p in (cache / "graphs").iterdir() if p.is_dir()) == entries  # it ran the image's graphs
    dciodvfy = shutil.which("dciodvfy")
    for folder in (out, local):
        assert sorted(p.name for p in folder.iterdir()) == ["run.json", "seg.dcm", "sr.dcm"]
        if dciodvfy:
            assert dciodvfy_errors(dciodvfy, folder / "seg.dcm") == []
            assert dciodvfy_errors(dciodvfy, folder / "sr.dcm") == []
    map_seg, local_seg = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(local / "seg.dcm")
    assert np.array_equal(map_seg.pixel_array, local_seg.pixel_array)
    assert _segments(map_seg) == _segments(local_seg)
    assert _frames(map_seg) == _frames(local_seg)
    assert _report_values(out / "sr.dcm") == _report_values(local / "sr.dcm")
    map_run, local_run = (json.loads((folder / "run.json").read_text()) for folder in (out, local))
    assert _turns(map_run) == _turns(local_run)


def _turns(run: dict) -> list[list[dict]]:
    """Every turn of every target, without its timings."""
    return [[{k: v for k, v in turn.items() if not k.endswith("_seconds")} for turn in target["turns"]]
            for target in run["targets"]]


def test_the_map_on_a_study_without_a_matching_series_exits_non_zero_and_writes_nothing(image, site, tmp_path):
    out = tmp_path / "out"
    run = run_map(image, site, out, "--rules", "/site/mr_rules.json")
    assert run.returncode == 2, (run.stdout + run.stderr)[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("ibis: error: ")]
    assert errors == [line for line in errors if "no series in the input matches the rules in mr_rules.json" in line]
    assert len(errors) == 1, run.stderr[-3000:]
    assert not any(out.rglob("*"))
