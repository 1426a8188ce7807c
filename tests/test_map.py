"""The MAP image (scripts/package_map.py): its layout and manifests, and a run equal to the in-process one.

Runs whenever docker answers and the image is built (`python scripts/package_map.py`); building it
takes longer than CI allows (docs/deploy.md, docs/results.md), so the test never builds it itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import SHARED_DATA

from test_deploy import HEAD_RULES, TARGETS, dciodvfy_errors

IMAGE = "ibisagent-map:0.1.0"


def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed (docs/deploy.md)")
    if docker("version", "--format", "{{.Server.Version}}", timeout=30).returncode != 0:
        pytest.skip("no docker daemon answers (start dockerd as docs/deploy.md says)")
    if docker("image", "inspect", IMAGE, timeout=30).returncode != 0:
        pytest.skip(f"the MAP image {IMAGE} is not built (python scripts/package_map.py)")
    return IMAGE


def in_image(image: str, *command: str) -> str:
    run = docker("run", "--rm", "--network", "none", "--entrypoint", command[0], image, *command[1:])
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_the_image_has_the_map_layout_and_manifests(image):
    # one container for every look inside: with vfs each `docker run` copies the whole image
    paths = ["/opt/holoscan/app/app.yaml", "/opt/holoscan/app/targets.yaml", "/opt/holoscan/app/rules.json",
             "/opt/holoscan/models/lite-medsam-onnx/encoder.onnx", "/opt/holoscan/models/lite-medsam-onnx/decoder.onnx",
             "/var/holoscan/input", "/var/holoscan/output", "/etc/holoscan/app.json", "/etc/holoscan/pkg.json"]
    script = (f"ls -d {' '.join(paths)} && echo @@ && cat /etc/holoscan/app.json && echo @@ && "
              "cat /etc/holoscan/pkg.json && echo @@ && /opt/holoscan/venv/bin/python -m pip list --format freeze")
    listing, app_text, pkg_text, packages = in_image(image, "/bin/sh", "-c", script).split("@@")
    assert len(listing.split()) == len(paths)
    app, pkg = json.loads(app_text), json.loads(pkg_text)
    assert app["environment"]["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input/"
    assert app["environment"]["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output/"
    assert app["sdk"] == "monai-deploy" and app["version"] == "0.1.0"
    assert pkg["applicationRoot"] == "/opt/holoscan/app" and pkg["modelRoot"] == "/opt/holoscan/models/"
    assert pkg["models"] == {"lite-medsam-onnx": "/opt/holoscan/models/lite-medsam-onnx"}
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"][:3] == ["/opt/holoscan/venv/bin/python", "-m", "ibisagent.deploy"]
    names = {line.split("==")[0].lower() for line in packages.split()}  # no CUDA torch, no torchvision
    assert "onnxruntime" in names and "torchvision" not in names
    assert not any(name.startswith(("nvidia-cudnn", "nvidia-cublas")) for name in names)


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


def test_the_map_run_equals_the_in_process_run(image, tmp_path):
    """The same study, rules and targets, in the container (network off) and in this process with the
    image's own graphs: the same masks, volumes and texts; both outputs pass dciodvfy."""
    sources = {"ct3": SHARED_DATA / "dicom/dcmqi-ct-3slice", "head": SHARED_DATA / "dicom/philips-head-ct"}
    if not all(path.is_dir() for path in sources.values()):
        pytest.skip("real DICOM series absent (../shared/data is provided beside the repo)")
    study, site = tmp_path / "study", tmp_path / "site"
    for name, source in sources.items():
        shutil.copytree(source, study / name)
    site.mkdir()
    (site / "rules.json").write_text(HEAD_RULES)
    (site / "targets.yaml").write_text(TARGETS)
    out = tmp_path / "map_out"
    out.mkdir()
    run = docker("run", "--rm", "--network", "none", "-v", f"{study}:/var/holoscan/input:ro",
                 "-v", f"{out}:/var/holoscan/output", "-v", f"{site}:/site:ro", image,
                 "--targets", "/site/targets.yaml", "--rules", "/site/rules.json", timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    graphs = tmp_path / "graphs"
    assert docker("create", "--name", f"ibis-map-graphs-{tmp_path.name}", image).returncode == 0
    try:
        assert docker("cp", f"ibis-map-graphs-{tmp_path.name}:/opt/holoscan/models/lite-medsam-onnx",
                      str(graphs)).returncode == 0
    finally:
        docker("rm", f"ibis-map-graphs-{tmp_path.name}")
    local = tmp_path / "local_out"
    from ibisagent.cli import main

    assert main(["deploy", "-i", str(study), "-o", str(local), "--targets", str(site / "targets.yaml"),
                 "--rules", str(site / "rules.json"), "--tool", f"onnx:{graphs}"]) == 0
    dciodvfy = shutil.which("dciodvfy")
    for folder in (out, local):
        assert sorted(p.name for p in folder.iterdir()) == ["run.json", "seg.dcm", "sr.dcm"]
        if dciodvfy:
            assert dciodvfy_errors(dciodvfy, folder / "seg.dcm") == []
            assert dciodvfy_errors(dciodvfy, folder / "sr.dcm") == []
    assert np.array_equal(pydicom.dcmread(out / "seg.dcm").pixel_array, pydicom.dcmread(local / "seg.dcm").pixel_array)
    assert _report_values(out / "sr.dcm") == _report_values(local / "sr.dcm")
