"""The MONAI Label app against a real `monailabel` server process, on real images of ../shared/data.

The server runs from `.venv-label` (`ibis label-serve --setup`, done by .ci/run); tests skip when it is absent.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from ibisagent.label.client import get, infer, put_label
from PIL import Image
from test_triton import free_ports

from conftest import MED2D, REPO

IMAGE = "ABD_035_51"  # a BTCV test-split CT slice (liver visible)
OTHER = "ABD_035_61"
PROMPT = "Segment the liver."
VOLUME = MED2D.parent / "volumes" / "acdc" / "patient001_ED.npz"  # a real cine-MRI stack (10 slices, test split)
VOLUME_ID = "acdc_patient001_ED"
VOLUME_PROMPT = "Segment the left ventricle of the heart."


@pytest.fixture(scope="module")
def label_env():
    from ibisagent.label.environment import label_env_path

    env = label_env_path(REPO / ".venv-label")
    if not (env / "bin" / "monailabel").is_file():
        pytest.skip(f"no MONAI Label environment at {env}: run `ibis label-serve --setup`")
    return env


@pytest.fixture(scope="module")
def studies(tmp_path_factory, med2d_manifest):
    folder = tmp_path_factory.mktemp("studies")
    for name in (IMAGE, OTHER):
        shutil.copy(MED2D / "images" / "imis-btcv" / f"{name}.png", folder / f"{name}.png")
    if VOLUME.is_file():  # MONAI Label's datastore lists NIfTI, not npz: the same voxels as a NIfTI file, stored LPS
        import nibabel as nib

        with np.load(VOLUME) as archive:
            image, spacing = archive["image"], archive["spacing"]
        affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])  # (i, j, k) toward L, P, S
        nib.save(nib.Nifti1Image(np.ascontiguousarray(image.transpose(2, 1, 0)), affine),
                 str(folder / f"{VOLUME_ID}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def server(label_env, studies, tmp_path_factory):
    from ibisagent.label.server import LabelServer

    logs: list[str] = []
    server = LabelServer(studies, tmp_path_factory.mktemp("app"), port=free_ports(1)[0], label_env=label_env,
                         log=logs.append)
    server.start(900)
    server.logs = logs
    yield server
    server.stop()


def label_of(answer) -> tuple[np.ndarray, dict]:
    import json

    assert answer.status == 200, answer.body[:500]
    parts = answer.parts()
    return np.asarray(Image.open(io.BytesIO(parts["image"]))) > 0, json.loads(parts["params"])


def test_info_lists_the_task_with_its_config(server):
    info = get(server.url, "/info/").json()
    task = info["models"]["ibisagent"]
    assert task["type"] == "deepgrow" and task["dimension"] == 3  # both clients then send every point
    assert set(task["config"]) == {"prompt", "label", "policy", "max_turns", "agent_turns_after_user", "store_seg"}
    assert task["config"]["policy"][0] == "lite" and "liver" in task["labels"]


def test_prompt_then_one_more_point_in_one_session(server, studies, lite_tool):
    """The server's mask is the in-process agent's, pixel for pixel; a click then re-encodes nothing."""
    from ibisagent.agent import Agent
    from ibisagent.imaging.io import read_image
    from ibisagent.policies import build_policy
    from ibisagent.tools.base import Click

    params = {"prompt": PROMPT, "label": "liver", "client_id": "annotator-1"}
    mask, result = label_of(infer(server.url, IMAGE, params))
    rgb = read_image(studies / f"{IMAGE}.png").rgb
    embedding = lite_tool.encode(rgb)
    expected = Agent(lite_tool, build_policy("lite"), max_turns=10).run(rgb, PROMPT, embedding=embedding)
    assert result["encoded"] is True and result["algorithm_type"] == "AUTOMATIC"
    assert np.array_equal(mask, expected.mask) and mask.any()
    assert [c["origin"] for c in result["clicks"]] == ["agent"] * len(expected.clicks)
    assert all(step["by"] == "agent" and step["think"] for step in result["trajectory"])

    point = [300, 250]  # (column, row) of the PNG, as MONAI Label clients send for 2D images
    mask2, result2 = label_of(infer(server.url, IMAGE, {**params, "foreground": [point]}))
    assert result2["encoded"] is False and result2["encode_seconds"] == 0
    assert result2["algorithm_type"] == "SEMIAUTOMATIC"
    assert [c["origin"] for c in result2["clicks"]][-1] == "person" and result2["clicks"][-1]["point"] == point
    person = Click((point[0] + 0.5) / rgb.shape[1], (point[1] + 0.5) / rgb.shape[0], True)
    updated = lite_tool.predict(embedding, [*expected.clicks, person], expected.low_res_logits)
    assert np.array_equal(mask2, updated.mask) and not np.array_equal(mask2, mask)
    assert result2["trajectory"][-1]["by"] == "person"

    # the client resends the same point: nothing new, the same mask, still no encoding
    mask3, result3 = label_of(infer(server.url, IMAGE, {**params, "foreground": [point]}))
    assert np.array_equal(mask3, mask2) and result3["encoded"] is False and len(result3["clicks"]) == len(
        result2["clicks"])


def test_the_label_comes_from_the_prompt_when_none_is_given(server):
    """No `label`: the segment is named (and its SEG coded) from the prompt, as segment-dicom does."""
    _, result = label_of(infer(server.url, OTHER, {"prompt": PROMPT, "client_id": "namer"}))
    assert result["label_names"] == {"liver": 1} and result["session"]["label"] == "liver"
    assert result["label_choice"]["how"] == "named in the query" and result["label_choice"]["matched"] == "liver"
    _, given = label_of(infer(server.url, OTHER, {"prompt": PROMPT, "label": "organ", "client_id": "namer"}))
    assert given["label_names"] == {"organ": 1} and given["label_choice"]["how"] == "given"


def test_a_prompt_that_names_no_target_goes_through_the_query_encoder(lite_tool):
    from ibisagent.label.task import AgentLabelTask
    from ibisagent.labels import choose_label
    from ibisagent.policies import build_policy
    from ibisagent.policies.query_encoder import shared_query_encoder

    task = AgentLabelTask(lite_tool, build_policy, ["lite"], [REPO], query_encoder=shared_query_encoder)
    question = "Which organ filters the blood and stores iron, on the left under the ribs?"
    expected = choose_label(None, question, shared_query_encoder)
    request = task._read({"prompt": question})
    assert expected.how in ("query encoder", "no match")
    assert request.label == expected.segment_label and request.label_choice == expected
    assert task._read({}).label == "target"  # points only: the generic label


def test_a_volume_prompt_then_a_point_on_another_slice(server, studies, tmp_path):
    """3D through VolumeSession: the server's label is the in-process session's, voxel for voxel; a person's point
    on another slice changes what add_clicks changes, and no slice is encoded twice."""
    import json

    import nibabel as nib

    from ibisagent.policies import build_policy
    from ibisagent.tools.factory import build_tool
    from ibisagent.volume.readers import read_volume, write_mask_nifti
    from ibisagent.volume.session import VolumeSession

    if not VOLUME.is_file():
        pytest.skip(f"real volume absent: {VOLUME}")
    with np.load(VOLUME) as archive:
        reference = archive["labels"] == 3  # the left ventricle: where the person clicks
    key = int(np.argmax(reference.sum(axis=(1, 2))))
    volume = read_volume(studies / f"{VOLUME_ID}.nii.gz")
    session = VolumeSession(build_tool("lite-medsam"), volume)  # the tool the server runs
    session.run_agent(build_policy("lite"), VOLUME_PROMPT, key, max_turns=10)

    def label_file(answer) -> tuple[np.ndarray, dict]:
        assert answer.status == 200, answer.body[:500]
        parts = answer.parts()
        path = tmp_path / f"label-{len(list(tmp_path.iterdir()))}.nii.gz"
        path.write_bytes(parts["image"])
        return np.asarray(nib.load(str(path)).dataobj), json.loads(parts["params"])

    def expected() -> np.ndarray:
        path = write_mask_nifti(volume, session.mask(), tmp_path / f"expected-{len(list(tmp_path.iterdir()))}.nii.gz")
        return np.asarray(nib.load(str(path)).dataobj)

    params = {"prompt": VOLUME_PROMPT, "slice": key, "client_id": "volume-reader"}
    label, first = label_file(infer(server.url, VOLUME_ID, params))
    assert first["dimension"] == 3 and first["key_slice"] == key and first["algorithm_type"] == "AUTOMATIC"
    assert label.shape == volume.shape[::-1] and label.any()
    assert np.array_equal(label, expected())
    assert sorted(first["encoded_slices"]) == sorted(session.encoder.encoded)
    assert {c["origin"] for c in first["clicks"]} == {"agent"}

    # the person clicks inside the ventricle on another slice the agent's mask misses most of
    before = session.mask()
    others = [k for k in range(volume.slice_count) if k != key and reference[k].any()]
    second_slice = max(others, key=lambda k: int((reference[k] & ~before[k]).sum()))
    rows, columns = np.nonzero(reference[second_slice] & ~before[second_slice]) if (
        reference[second_slice] & ~before[second_slice]).any() else np.nonzero(reference[second_slice])
    row, column = int(rows[len(rows) // 2]), int(columns[len(columns) // 2])
    # file voxel (i, j, k) of the LPS-stored file: i = columns - 1 - column, j = rows - 1 - row, k = slice
    point = [volume.shape[2] - 1 - column, volume.shape[1] - 1 - row, second_slice]
    encoded_before = len(session.encoder.encoded)
    session.add_clicks(second_slice, [session.click_at(second_slice, row, column, True)], author="person")
    label2, second = label_file(infer(server.url, VOLUME_ID, {**params, "foreground": [point]}))
    assert np.array_equal(label2, expected())
    after = session.mask()
    assert second["changed_slices"] == [int(k) for k in np.nonzero((after != before).any(axis=(1, 2)))[0]]
    assert second["clicked_slices"] == [second_slice] and second["algorithm_type"] == "SEMIAUTOMATIC"
    assert second["encoded_slices"] == session.encoder.encoded[encoded_before:]
    assert not set(second["encoded_slices"]) & set(first["encoded_slices"])  # no slice encoded twice
    assert [c["origin"] for c in second["clicks"] if c["slice"] == second_slice][-1] == "person"
    assert second["trajectory"][-1]["by"] == "person" and second["trajectory"][-1]["points"] == [point]

    # the client resends the same point: nothing changes and nothing is encoded
    label3, third = label_file(infer(server.url, VOLUME_ID, {**params, "foreground": [point]}))
    assert np.array_equal(label3, label2) and third["changed_slices"] == [] and third["encoded_slices"] == []

    # the person removes the point: the session is rebuilt from the agent's pass, without encoding
    label4, fourth = label_file(infer(server.url, VOLUME_ID, params))
    assert np.array_equal(label4, label) and fourth["encoded_slices"] == []
    assert fourth["algorithm_type"] == "AUTOMATIC" and fourth["trajectory"][-1]["action"] == "remove points"


def test_two_clients_interleaved_keep_separate_sessions(server):
    a = {"prompt": PROMPT, "label": "liver", "client_id": "reader-a"}
    b = {"label": "liver", "client_id": "reader-b"}
    _, first_a = label_of(infer(server.url, OTHER, a))
    mask_b, first_b = label_of(infer(server.url, OTHER, {**b, "foreground": [[200, 260]]}))
    _, second_a = label_of(infer(server.url, OTHER, {**a, "background": [[100, 100]]}))
    mask_b2, second_b = label_of(infer(server.url, OTHER, {**b, "foreground": [[200, 260]]}))
    assert first_b["encoded"] is False  # the embedding is shared; the state is not
    assert [c["origin"] for c in first_b["clicks"]] == ["person"]
    assert [c["origin"] for c in second_a["clicks"]] == [c["origin"] for c in first_a["clicks"]] + ["person"]
    assert len(second_b["clicks"]) == 1 and np.array_equal(mask_b, mask_b2)
    assert second_a["session"]["client_id"] == "reader-a" and second_b["session"]["client_id"] == "reader-b"
    # reset_state starts the client's session again
    _, reset = label_of(infer(server.url, OTHER, {**b, "foreground": [[200, 260]], "reset_state": True}))
    assert reset["session"]["requests"] == 1


@pytest.mark.parametrize("image, params, status, message", [
    ("no_such_image", {"prompt": PROMPT}, 404, "unknown image"),
    ("../../etc/passwd", {"prompt": PROMPT}, 404, "unknown image"),
    (IMAGE, {"foreground": [[5000, 10]]}, 400, "outside the image"),
    (IMAGE, {"foreground": [[10, 10, 3]]}, 400, "outside the image"),
    (IMAGE, {}, 400, "give a prompt"),
    (IMAGE, {"prompt": PROMPT, "max_turns": "many"}, 400, "max_turns"),
    (IMAGE, {"prompt": PROMPT, "foreground": "here"}, 400, "foreground"),
    (IMAGE, {"prompt": PROMPT, "policy": "nonsense"}, 400, "unknown policy"),
    (IMAGE, {"prompt": PROMPT, "label": "../../x"}, 400, "label may hold"),
    (IMAGE, {"foreground": [[1, 1]] * 500}, 413, "at most"),
    (IMAGE, "{not json", 400, "not valid JSON"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, image, params, status, message):
    answer = infer(server.url, image, params)
    assert answer.status == status, answer.body[:300]
    assert message in answer.json()["detail"]
    assert get(server.url, "/info/").status == 200


def test_a_saved_label_survives_a_restart(server):
    mask, _ = label_of(infer(server.url, IMAGE, {"prompt": PROMPT, "label": "liver", "client_id": "saver"}))
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    assert put_label(server.url, IMAGE, buffer.getvalue(), f"{IMAGE}.png").status == 200
    server.stop()
    server.start(900)
    answer = get(server.url, f"/datastore/label?label={IMAGE}&tag=final")
    assert answer.status == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer.body))) > 0, mask)
    assert "ibisagent" in get(server.url, "/info/").json()["models"]


# ---------------------------------------------------------------------------------------------- a real PACS

CT_SLICES = MED2D.parent / "dicom" / "dcmqi-ct-3slice"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Debian's Orthanc with its DICOMweb plugin, on loopback, holding the dcmqi CT series."""
    import json
    import subprocess
    import time
    import urllib.request

    executable, plugin = shutil.which("Orthanc"), "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
    if executable is None or not Path(plugin).is_file():
        pytest.skip("Orthanc with its DICOMweb plugin is absent (apt-get install orthanc orthanc-dicomweb)")
    if not CT_SLICES.is_dir():
        pytest.skip(f"real DICOM absent: {CT_SLICES}")
    folder = tmp_path_factory.mktemp("orthanc")
    port = free_ports(1)[0]
    config = {"Name": "ibisagent-test", "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "index"), "HttpPort": port, "DicomServerEnabled": False,
              "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [plugin],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([executable, str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/system", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        for path in sorted(CT_SLICES.glob("*.dcm")):
            request = urllib.request.Request(f"{url}/instances", data=path.read_bytes(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            urllib.request.urlopen(request, timeout=30).read()
        yield url
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture(scope="module")
def pacs_server(label_env, orthanc, tmp_path_factory):
    from ibisagent.label.server import LabelServer

    server = LabelServer(f"{orthanc}/dicom-web", tmp_path_factory.mktemp("pacs-app"), port=free_ports(1)[0],
                         label_env=label_env, log=lambda line: None)
    server.start(900)
    yield server
    server.stop()


PACS_POINT = [256, 300, 1]  # [column, row, slice] of the series sorted along its normal, as Slicer and OHIF send


@pytest.fixture(scope="module")
def pacs_result(pacs_server):
    """The agent's pass on the middle slice of the series in Orthanc, propagated through the series, then a
    person's point; each request stores the SEG of the whole series back."""
    import json

    from ibisagent.dicom.series import read_series

    series = read_series(CT_SLICES, slice_index=1)
    params = {"prompt": PROMPT, "label": "liver", "slice": 1, "client_id": "pacs-reader", "store_seg": True}
    first = infer(pacs_server.url, series.series_instance_uid, params)
    assert first.status == 200, first.body[:300]
    first_result = json.loads(first.parts()["params"])
    assert first_result["algorithm_type"] == "AUTOMATIC" and first_result["seg"]["stored"] is True
    answer = infer(pacs_server.url, series.series_instance_uid, {**params, "foreground": [PACS_POINT]})
    assert answer.status == 200, answer.body[:300]
    parts = answer.parts()
    return series, json.loads(parts["params"]), parts["image"]


def test_next_sample_from_the_pacs_is_a_file_slicer_can_load(pacs_server, tmp_path):
    """Slicer's Next Sample on a DICOMweb datastore: the sample names an NRRD file, and `GET /datastore/image`
    serves it (MONAI Label's own download answers 404 for a series kept as DICOM) with the series' values on
    the grid of the labels the task returns. Runs before the round trip stores a SEG (the series is then
    labelled, and the random strategy picks only unlabelled series)."""
    import urllib.parse

    import nrrd

    from ibisagent.dicom.series import read_series
    from ibisagent.label.client import next_sample

    series = read_series(CT_SLICES, slice_index=0)
    answer = next_sample(pacs_server.url)
    assert answer.status == 200, answer.body[:300]
    sample = answer.json()
    assert sample["id"] == series.series_instance_uid
    assert sample["name"] == f"{sample['id']}.nrrd" and sample["path"].endswith(".nrrd")  # Slicer reads by extension
    download = get(pacs_server.url, f"/datastore/image?{urllib.parse.urlencode({'image': sample['id']})}")
    assert download.status == 200, download.body[:300]
    (tmp_path / "image.nrrd").write_bytes(download.body)
    values, header = nrrd.read(str(tmp_path / "image.nrrd"))
    assert header["space"] == "left-posterior-superior" and values.shape == (512, 512, 3)
    assert np.array_equal(values.transpose(2, 1, 0), series.volume)  # modality values, (slice, row, column)
    for k, dataset in enumerate(series.datasets):
        position = header["space origin"] + k * header["space directions"][2]
        assert np.allclose(position, [float(v) for v in dataset.ImagePositionPatient], atol=1e-3)
    assert get(pacs_server.url, "/datastore/image?image=1.2.3.4.5").status == 404  # no such series in the PACS


def test_orthanc_round_trip_stores_our_seg_and_reads_it_back(pacs_result, orthanc, tmp_path):
    """A series in Orthanc segmented in 3D through MONAI Label: the label is the in-process volume session's,
    voxel for voxel, on the series' grid; our SEG over the series stored back (STOW), read back (WADO), valid."""
    import subprocess

    import nrrd
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from ibisagent.dicom.seg_writer import list_segments, read_segmentation, segment_mask
    from ibisagent.policies import build_policy
    from ibisagent.tools.factory import build_tool
    from ibisagent.volume.readers import read_volume
    from ibisagent.volume.session import VolumeSession

    series, result, label_file = pacs_result
    assert result["dimension"] == 3 and result["volume_source"] == "dicom" and result["clicked_slices"] == [1]
    assert result["encoded_slices"] == [] and result["seg"]["stored"] is True  # the click encoded nothing
    assert result["algorithm_type"] == "SEMIAUTOMATIC" and result["trajectory"][-1]["points"] == [PACS_POINT]
    (tmp_path / "label.nrrd").write_bytes(label_file)
    label, header = nrrd.read(str(tmp_path / "label.nrrd"))
    assert label.shape == (512, 512, 3) and header["space"] == "left-posterior-superior"
    for k, dataset in enumerate(series.datasets):  # voxel (0, 0, k) lies at slice k's position
        position = header["space origin"] + k * header["space directions"][2]
        assert np.allclose(position, [float(v) for v in dataset.ImagePositionPatient], atol=1e-3)

    volume = read_volume(CT_SLICES)  # the same series, in process, with the tool the server runs
    session = VolumeSession(build_tool("lite-medsam"), volume)
    session.run_agent(build_policy("lite"), PROMPT, 1, max_turns=10)
    column, row, index = PACS_POINT
    session.add_clicks(index, [session.click_at(index, row, column, True)], author="person")
    expected = session.mask()  # (slice, row, column)
    assert expected.any() and np.array_equal(label.transpose(2, 1, 0) > 0, expected)

    client = DICOMwebClient(f"{orthanc}/dicom-web")
    seg = client.retrieve_instance(str(series.source.StudyInstanceUID), result["seg"]["series_instance_uid"],
                                   result["seg"]["sop_instance_uid"])
    path = tmp_path / "seg.dcm"
    pydicom.dcmwrite(path, seg, enforce_file_format=True)
    stored = read_segmentation(path)
    assert stored.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert list_segments(stored)[0].label == "liver" and "RecommendedDisplayCIELabValue" in stored.SegmentSequence[0]
    framed = {str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
              for frame in stored.PerFrameFunctionalGroupsSequence}
    holding = [k for k in range(volume.slice_count) if expected[k].any()]
    assert framed == {str(series.datasets[k].SOPInstanceUID) for k in holding}  # a frame per slice holding it
    for k in holding:
        assert np.array_equal(segment_mask(stored, str(series.datasets[k].SOPInstanceUID)), expected[k])
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors


def test_ohif_shows_our_seg_over_its_series(pacs_result, orthanc):
    """OHIF (npm's prebuilt @ohif/app) on loopback against Orthanc, in headless Chromium: our SEG over the CT.

    IBIS_OHIF_SCREENSHOT=docs/images/ohif_seg.png keeps the screenshot (the one in docs/monailabel.md).
    """
    import os

    dist = REPO / ".ohif" / "package" / "dist"
    if not (dist / "index.html").is_file():
        pytest.skip(f"OHIF Viewer absent: {dist} (npm pack @ohif/app@3.13.2 into .ohif/, as .ci/run does)")
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is absent (apt-get install chromium)")
    pytest.importorskip("playwright", reason="playwright (test extra) drives Chromium")
    from ohif_viewer import OhifServer, green_pixels, show_seg

    series, result, _ = pacs_result
    with OhifServer(dist, orthanc, free_ports(1)[0]) as ohif:
        before, after, console = show_seg(ohif.url, str(series.source.StudyInstanceUID), "ibisagent segmentation")
    assert any("SEG parse complete" in line for line in console), console[-10:]
    assert green_pixels(after) > green_pixels(before) + 200  # the liver overlay in the SEG's colour
    if os.environ.get("IBIS_OHIF_SCREENSHOT"):
        Path(os.environ["IBIS_OHIF_SCREENSHOT"]).write_bytes(after)


def test_the_agent_continues_on_the_clicked_slice_in_3d(lite_tool, tmp_path):
    """agent_turns_after_user in a volume: after the person's point the agent goes on from the person's mask on
    that slice (as Agent.run from that state would), before propagation; 0 leaves the person the last word."""
    from ibisagent.agent import Agent, StartState
    from ibisagent.label.sessions import SessionKey
    from ibisagent.label.task import AgentLabelTask
    from ibisagent.policies import build_policy

    if not CT_SLICES.is_dir():
        pytest.skip(f"real DICOM absent: {CT_SLICES}")
    task = AgentLabelTask(lite_tool, build_policy, ["lite"], [CT_SLICES.parent])
    params = {"prompt": PROMPT, "label": "liver", "slice": 1, "foreground": [PACS_POINT]}
    _, alone = task.infer(CT_SLICES, "ct", {**params, "client_id": "alone"}, tmp_path)
    assert alone["trajectory"][-1]["by"] == "person" and alone["clicks"][-1]["origin"] == "person"
    person_state = task.sessions.get(SessionKey("alone", "ct", "liver")).session.states[1]

    turns = 2
    _, mixed = task.infer(CT_SLICES, "ct", {**params, "client_id": "mixed", "agent_turns_after_user": turns},
                          tmp_path)
    person_at = max(i for i, event in enumerate(mixed["trajectory"]) if event["by"] == "person")
    after = mixed["trajectory"][person_at + 1:]
    assert 1 <= len(after) <= turns and all(e["by"] == "agent" and e["after_person"] for e in after)
    def without_propagation(events: list[dict]) -> list[dict]:
        return [{k: v for k, v in event.items() if k != "propagation"} for event in events]

    # the same agent pass and person click (what propagation did then differs: the slice differs)
    assert without_propagation(mixed["trajectory"][:person_at + 1]) == without_propagation(alone["trajectory"])
    assert mixed["encoded_slices"] == []  # the second client reuses the shared encoder

    encoder = task.sessions.get(SessionKey("mixed", "ct", "liver")).session.encoder
    start = StartState(tuple(c.click for c in person_state.clicks), person_state.mask, person_state.logits,
                       (float(person_state.predicted_iou),), len(person_state.clicks))
    expected = Agent(lite_tool, build_policy("lite"), max_turns=turns).run(
        encoder.rgb(1), PROMPT, embedding=encoder.embedding(1), start=start)
    state = task.sessions.get(SessionKey("mixed", "ct", "liver")).session.states[1]
    assert np.array_equal(state.mask, expected.mask)
    assert [c.click for c in state.clicks] == list(expected.clicks)
    assert [c.author for c in state.clicks][len(person_state.clicks):] == ["agent:lite"] * (
        len(expected.clicks) - len(person_state.clicks))

    # the client resends the same point: no new turn; removing it rebuilds the agent's pass alone
    _, again = task.infer(CT_SLICES, "ct", {**params, "client_id": "mixed", "agent_turns_after_user": turns},
                          tmp_path)
    assert again["trajectory"] == mixed["trajectory"] and again["changed_slices"] == []
    _, removed = task.infer(CT_SLICES, "ct", {**params, "client_id": "mixed", "foreground": [],
                                              "agent_turns_after_user": turns}, tmp_path)
    assert removed["algorithm_type"] == "AUTOMATIC" and removed["trajectory"][-1]["action"] == "remove points"
