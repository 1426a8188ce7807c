"""Volumes on the real data of ../shared/data/volumes: geometry in and out, propagation, corrections.

The geometry tests need no model: a reference label map goes out through the
writer and must come back on the same voxels with the input's own affine.
The session tests run the real LiteMedSAM tool on the real spleen CT
(embeddings cached per module, so each slice is encoded once).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from ibisagent.clicks import normalised_to_pixel, pixel_to_normalised
from ibisagent.metrics import dice
from ibisagent.policies import build_policy
from ibisagent.tools.base import Click
from ibisagent.volume.propagation import PropagationSettings, largest_component, seed_click, without_refused_blobs
from ibisagent.volume.readers import read_label_map, read_volume, volume_from_series, write_mask_nifti
from ibisagent.volume.session import VolumeSession
from ibisagent.volume.slices import SliceEncoder
from ibisagent.volume.volume import Volume, VolumeError

REPO = Path(__file__).resolve().parents[1]
VOLUMES = REPO.parent / "shared" / "data" / "volumes"
TOTALSEG = VOLUMES / "totalseg-example"
SPLEEN = VOLUMES / "msd-spleen" / "spleen2_ivadomed_crop.npz"
PHILIPS = REPO.parent / "shared" / "data" / "dicom" / "philips-head-ct"
LIVER = 5  # TotalSegmentator's `total` map (class_map.json)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data absent: {path} not found (../shared/data is provided beside the repo)")
    return path


# ----------------------------------------------------------------------------- readers and geometry

@pytest.mark.parametrize("image, labels", [("example_ct_sm.nii.gz", "example_seg.nii.gz"),
                                           ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz")])
def test_nifti_mask_goes_back_onto_the_same_voxels_with_the_same_affine(image, labels, tmp_path):
    """RAS-stored CT and LPS-stored MR: reordered to slices on reading, back in the file's order on writing."""
    volume = read_volume(_need(TOTALSEG / image))
    reference = read_label_map(volume, TOTALSEG / labels)
    written = write_mask_nifti(volume, reference.labels == LIVER, tmp_path / "mask.nii.gz")
    original, back = nib.load(TOTALSEG / labels), nib.load(written)
    assert np.array_equal(back.affine, original.affine)
    assert back.shape == original.shape and back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(back.dataobj) == 1, np.asarray(original.dataobj) == LIVER)


def test_slices_reach_the_tool_in_the_radiological_display():
    """The liver is on the patient's right: the image's left in the standard display, whatever the file order."""
    for image, labels in (("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_mr_sm.nii.gz",
                                                                            "example_seg_mr.nii.gz")):
        volume = read_volume(_need(TOTALSEG / image))
        liver = read_label_map(volume, TOTALSEG / labels).mask(LIVER)
        key = int(np.argmax(liver.sum(axis=(1, 2))))
        shown = volume.to_display(liver[key])
        assert shown.shape == volume.slice_rgb(key).shape[:2]
        assert np.nonzero(shown)[1].mean() < 0.45 * shown.shape[1], image
        assert np.array_equal(volume.to_stored(shown), liver[key])


def test_mr_slices_reach_the_policy_as_its_training_slices_were_made():
    """uint8 MR is windowed like med2d's PNGs of the same volumes (the policy's training data), not shown as stored.

    med2d's brats2015 PNG is the 0.5-99.5 percentile window of the whole
    volume, with its rows in the file's order (posterior up; the volume shows
    anterior up, the standard display). Its acdc PNG is a per-slice window of
    the same stack: close to the volume's window, far from the stored values.
    """
    from PIL import Image

    med2d = REPO.parent / "shared" / "data" / "med2d" / "images"
    brats = read_volume(_need(VOLUMES / "brats2015" / "brats_2013_pat0006_1_flair.npz"), modality="MRI")
    png = np.asarray(Image.open(_need(med2d / "brats2015" / "brats_2013_pat0006_1_z084_flair.png")), np.int16)
    shown = brats.slice_rgb(84)[::-1, :, 0].astype(np.int16)
    assert brats.window.name == "percentile"
    assert np.abs(shown - png).max() <= 1  # rounding only
    acdc = read_volume(_need(VOLUMES / "acdc" / "patient001_ED.npz"), modality="MRI")
    png = np.asarray(Image.open(_need(med2d / "acdc" / "patient001_frame01_s05.png")), np.int16)
    assert np.abs(acdc.slice_rgb(5)[..., 0].astype(np.int16) - png).mean() < 3  # as stored: 9.1


def test_npz_affine_is_converted_to_lps_once():
    volume = read_volume(_need(SPLEEN))
    with np.load(SPLEEN) as archive:
        ras = archive["affine"]
    voxel = np.array([3, 40, 70, 1.0])
    lps = volume.affine @ voxel
    assert np.allclose(lps[:3] * [-1, -1, 1], (ras @ voxel)[:3])
    assert volume.spacing == pytest.approx((5.0, 0.794922, 0.794922), rel=1e-5)
    assert volume.orientation_known and volume.window.name == "abdomen"


def test_npz_without_affine_is_shown_as_stored_and_says_so():
    volume = read_volume(_need(VOLUMES / "acdc" / "patient001_ED.npz"))
    assert not volume.orientation_known and volume.display.is_identity
    assert any("orientation unknown" in note for note in volume.notes)
    assert volume.spacing == pytest.approx((10.0, 1.5625, 1.5625))


def test_dicom_series_affine_follows_the_positions():
    volume = read_volume(_need(PHILIPS))
    series = volume.source.series
    last = volume.affine @ np.array([volume.slice_count - 1, 0, 0, 1.0])
    assert np.allclose(last[:3], series.geometry.positions[-1], atol=1e-3)
    corner = volume.affine @ np.array([0, 10, 20, 1.0])
    orientation = np.asarray(series.geometry.orientation)
    row_spacing, column_spacing = series.geometry.pixel_spacing
    expected = series.geometry.positions[0] + 20 * column_spacing * orientation[:3] + 10 * row_spacing * orientation[3:]
    assert np.allclose(corner[:3], expected, atol=1e-3)


# ----------------------------------------------------------------------------- bad input

def test_dicom_series_with_a_missing_slice_is_refused_unless_allowed(tmp_path):
    import shutil

    files = sorted(p for p in _need(PHILIPS).iterdir() if p.is_file() and p.name != "DIRFILE")
    series = read_volume(PHILIPS).source.series
    middle = series.files[len(series.files) // 2]
    for path in files:
        if path != middle:
            shutil.copy(path, tmp_path / path.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VolumeError, match="a slice is probably missing"):
            read_volume(tmp_path)
        volume = read_volume(tmp_path, allow_uneven_spacing=True)
    assert not volume.uniform_spacing and volume.slice_count == series.slice_count - 1
    with pytest.raises(VolumeError, match="uneven slice spacing"):
        write_mask_nifti(volume, np.zeros(volume.shape, bool), tmp_path / "out" / "mask.nii.gz")
    assert not (tmp_path / "out" / "mask.nii.gz").exists()


def test_a_2d_image_is_not_a_volume(tmp_path):
    np.savez(tmp_path / "flat.npz", image=np.zeros((64, 64), np.int16), spacing=np.ones(3))
    with pytest.raises(VolumeError, match="2D image"):
        read_volume(tmp_path / "flat.npz")
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 1), np.int16), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(VolumeError, match="2D image"):
        read_volume(tmp_path / "flat.nii.gz")
    with pytest.raises(VolumeError, match="single slice"):
        Volume(np.zeros((1, 64, 64)), np.eye(4))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.int16), np.eye(4)), tmp_path / "time.nii.gz")
    with pytest.raises(VolumeError, match="4D data"):
        read_volume(tmp_path / "time.nii.gz")


def test_a_label_map_of_another_shape_or_grid_is_refused(tmp_path):
    volume = read_volume(_need(TOTALSEG / "example_ct_sm.nii.gz"))
    original = nib.load(TOTALSEG / "example_seg.nii.gz")
    data = np.asarray(original.dataobj)
    nib.save(nib.Nifti1Image(np.zeros((130, 101, 30), np.uint8), original.affine), tmp_path / "wider.nii.gz")
    with pytest.raises(VolumeError, match="reaches outside the volume"):
        read_label_map(volume, tmp_path / "wider.nii.gz")
    moved = original.affine.copy()
    moved[0, 3] += 4.5  # one and a half voxels: another grid
    nib.save(nib.Nifti1Image(data, moved), tmp_path / "moved.nii.gz")
    with pytest.raises(VolumeError, match="another grid"):
        read_label_map(volume, tmp_path / "moved.nii.gz")
    cropped = original.affine.copy()
    cropped[:3, 3] = (original.affine @ [0, 0, 10, 1])[:3]  # slices 10.. only, as dcmqi writes a segment
    nib.save(nib.Nifti1Image(data[:, :, 10:], cropped), tmp_path / "cropped.nii.gz")
    full = read_label_map(volume, TOTALSEG / "example_seg.nii.gz").labels
    part = read_label_map(volume, tmp_path / "cropped.nii.gz").labels
    assert np.array_equal(part[10:], full[10:]) and not part[:10].any()


def test_npz_of_another_layout_names_what_it_lacks(tmp_path):
    np.savez(tmp_path / "recist.npz", imgs=np.zeros((4, 8, 8), np.uint8), gts=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(VolumeError, match="lacks image, spacing"):
        read_volume(tmp_path / "recist.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(VolumeError, match="not a readable npz"):
        read_volume(tmp_path / "broken.npz")


def test_key_slice_outside_the_volume_is_refused(lite_tool):
    volume = read_volume(_need(SPLEEN))
    session = VolumeSession(lite_tool, volume)
    policy = build_policy("oracle", ground_truth=np.zeros(volume.display_shape, bool))
    for index in (-1, volume.slice_count):
        with pytest.raises(VolumeError, match="outside the volume"):
            session.run_agent(policy, "Segment the spleen.", index)
    assert session.encoder.encoded == []


def test_largest_component_keeps_clicked_components():
    mask = np.zeros((5, 20, 20), bool)
    mask[1:4, 2:10, 2:10] = True  # large
    mask[2, 15:18, 15:18] = True  # small, unclicked
    mask[0, 15:17, 0:2] = True  # small, clicked
    kept = largest_component(mask, keep=[(0, 15, 0)])
    assert kept[1:4, 2:10, 2:10].all() and kept[0, 15:17, 0:2].all() and not kept[2, 15:18, 15:18].any()


def test_a_seed_stands_for_a_corrected_mask_unless_a_negative_click_refutes_its_core():
    rows, columns = np.indices((100, 100))
    disc = (rows - 50) ** 2 + (columns - 30) ** 2 <= 20 ** 2
    leak = (abs(rows - 50) <= 4) & (columns >= 30) & (columns < 90)
    mask = disc | leak

    def at(row, column, positive=False):
        return Click(*pixel_to_normalised(row, column, mask.shape), positive)

    seed = seed_click(mask, (at(50, 75),))  # "not this" on the leak: the disc is still asked for
    assert seed.positive and disc[normalised_to_pixel(seed.x, seed.y, mask.shape)]
    assert seed_click(mask, (at(50, 30),)) is None  # at the disc's centre: the whole mask is refuted
    assert seed_click(mask, (at(50, 75), at(50, 30, positive=True))) is None  # a positive click needs no stand-in
    assert seed_click(np.zeros_like(mask), (at(50, 75),)) is None
    assert not without_refused_blobs(mask, (at(50, 75),)).any()  # no positive click: no blob was asked for
    stray = rows < 5
    assert np.array_equal(without_refused_blobs(mask | stray, (seed, at(50, 75))), mask | stray)


# ----------------------------------------------------------------------------- the session on the real spleen CT

@pytest.fixture(scope="module")
def spleen(lite_tool, tmp_path_factory):
    volume = read_volume(_need(SPLEEN))
    reference = read_label_map(volume).mask("spleen")
    encoder = SliceEncoder(lite_tool, volume, tmp_path_factory.mktemp("slice-cache"))
    return volume, reference, encoder


def _oracle_session(spleen, directions="both", on_slice=None):
    volume, reference, encoder = spleen
    key = int(np.argmax(reference.sum(axis=(1, 2))))
    session = VolumeSession(encoder.tool, volume, directions=directions, encoder=encoder, on_slice=on_slice)
    oracle = build_policy("oracle", ground_truth=volume.to_display(reference[key]), target_iou=0.9)
    session.run_agent(oracle, "Segment the spleen.", key, max_turns=5)
    return session, key


def test_propagation_segments_the_spleen_both_ways_and_encodes_each_slice_once(spleen):
    volume, reference, encoder = spleen
    progress = []
    session, key = _oracle_session(spleen, on_slice=lambda state, index, ended: progress.append(index))
    mask = session.mask()
    assert mask.shape == volume.shape
    assert dice(mask, reference) > 0.75
    assert min(session.reached) < key < max(session.reached)
    assert len(encoder.encoded) == len(set(encoder.encoded))
    assert set(encoder.encoded) <= set(progress) | {key}
    trajectory = session.trajectory()
    assert trajectory["key_slice"] == key and trajectory["slices"][0]["origin"] in ("propagated", "agent")
    assert {s["slice"] for s in trajectory["slices"] if s["clicks"]} == {key}
    assert all(c["author"] == "agent:oracle" for s in trajectory["slices"] for c in s["clicks"])


def test_forward_only_never_reaches_below_the_key_slice(spleen):
    session, key = _oracle_session(spleen, directions="forward")
    assert min(session.reached) == key and max(session.reached) > key
    both, _ = _oracle_session(spleen)
    assert dice(session.mask(), spleen[1]) < dice(both.mask(), spleen[1])


def test_a_corrective_click_changes_the_slices_it_should_and_only_those(spleen):
    volume, reference, encoder = spleen
    session, key = _oracle_session(spleen)
    before = {index: session.slice_mask(index) for index in range(volume.slice_count)}
    encoded_before = list(encoder.encoded)
    errors = (session.mask() ^ reference).sum(axis=(1, 2))
    refinable = [i for i in session.reached if i != key and reference[i].sum() >= 200]  # a mask to refine
    worst = max(refinable, key=lambda i: errors[i])
    from ibisagent.clicks import next_click

    click, _ = next_click(volume.to_display(session.slice_mask(worst)), volume.to_display(reference[worst]))
    interaction = session.add_clicks(worst, [click], author="oracle")
    touched = {worst} | {i for run in interaction.runs for i in run.reached + run.cleared}
    changed = {index for index in range(volume.slice_count)
               if not np.array_equal(session.slice_mask(index), before[index])}
    assert worst in changed
    assert changed <= touched  # nothing beyond the re-propagated slices moved
    assert key not in touched  # the agent's clicked slice is an anchor: never overwritten
    for run in interaction.runs:
        if run.reason == "agrees with the previous result":
            last = run.reached[-1]
            assert dice(session.slice_mask(last), before[last]) >= session.settings.agreement_dice
    assert dice(session.slice_mask(worst), reference[worst]) > dice(before[worst], reference[worst])
    assert encoder.encoded[:len(encoded_before)] == encoded_before and len(set(encoder.encoded)) == len(encoder.encoded)
    assert session.states[worst].clicks[-1].author == "oracle"


def test_a_correction_re_prompts_only_the_slices_nearer_to_it_than_to_the_key_slice(spleen):
    """A wrong click far from the key slice must not overwrite the agent's slices all the way back to it."""
    volume, reference, encoder = spleen
    session, key = _oracle_session(spleen)
    far = max(session.reached)
    assert far - key >= 4
    before = {index: session.slice_mask(index) for index in range(volume.slice_count)}
    rows, columns = np.nonzero(volume.to_display(session.slice_mask(far)))
    centre = len(rows) // 2
    click = Click(*pixel_to_normalised(int(rows[centre]), int(columns[centre]), volume.display_shape), False)
    interaction = session.add_clicks(far, [click], author="user")
    toward_key = next(run for run in interaction.runs if run.step == -1)
    half = {index for index in range(key + 1, far) if far - index < index - key}
    assert set(toward_key.reached + toward_key.cleared) <= half
    assert not np.array_equal(session.slice_mask(far), before[far])
    for index in range(key, far):
        if index not in half:
            assert np.array_equal(session.slice_mask(index), before[index]), f"slice {index} belongs to the key slice"


def test_a_lone_negative_click_on_a_false_blob_removes_it_and_nothing_on_the_key_side(spleen):
    """No blob keeps a negative click: the decoder, asked with a lone negative click, kept part of such a blob."""
    from ibisagent.clicks import next_click

    volume, reference, encoder = spleen
    session, key = _oracle_session(spleen)
    false = [i for i in session.reached if not reference[i].any() and session.slice_mask(i).any()]
    assert false  # propagation runs past the spleen's ends (a mask where there is no spleen)
    index = max(false, key=lambda i: abs(i - key))
    before = {i: session.slice_mask(i) for i in range(volume.slice_count)}
    click, _ = next_click(volume.to_display(before[index]), volume.to_display(reference[index]))
    assert not click.positive
    session.add_clicks(index, [click], author="user")
    after = volume.to_display(session.slice_mask(index))
    assert not after[normalised_to_pixel(click.x, click.y, after.shape)]
    assert after.sum() < before[index].sum()
    step = 1 if index > key else -1
    for i in range(key, index, step):
        assert np.array_equal(session.slice_mask(i), before[i]), f"slice {i} was prompted from the key side"
    if not after.any():  # nothing prompts the slices beyond it any more
        assert not any(session.slice_mask(i).any() for i in range(index + step, volume.slice_count if step > 0 else -1,
                                                                   step))


def test_clicks_on_voxels_map_through_the_flipped_display(spleen):
    volume, _, encoder = spleen
    assert volume.display.flip_rows and volume.display.flip_columns  # this CT is stored RAS: both flipped
    session = VolumeSession(encoder.tool, volume, encoder=encoder)
    click = session.click_at(5, row=30, column=100)
    assert session._stored_voxel(5, click) == (5, 30, 100)
    with pytest.raises(VolumeError, match="outside the"):
        session.click_at(5, row=volume.shape[1], column=0)


def test_clicks_alone_start_a_session_and_an_empty_slice_clears_its_neighbours(spleen):
    volume, reference, encoder = spleen
    key = int(np.argmax(reference.sum(axis=(1, 2))))
    session = VolumeSession(encoder.tool, volume, PropagationSettings(), encoder=encoder)
    rows, columns = np.nonzero(reference[key])
    centre = len(rows) // 2
    session.add_clicks(key, [session.click_at(key, int(rows[centre]), int(columns[centre]))], author="user")
    assert session.key_slice == key and len(session.reached) > 1
    # A negative click joins the positive one on the slice; an emptied slice would prompt no neighbour.
    session.add_clicks(key, [session.click_at(key, int(rows[centre]), int(columns[centre]), positive=False)])
    state = session.states[key]
    assert [(c.click.positive, c.author) for c in state.clicks] == [(True, "user"), (False, "user")]
    assert (len(session.reached) > 1) == bool(state.mask.any())


# ----------------------------------------------------------------------------- the command line

def test_segment_volume_refuses_bad_input_before_any_model_and_writes_nothing(tmp_path, capsys):
    from ibisagent.cli import main

    out = tmp_path / "out"
    np.savez(tmp_path / "flat.npz", image=np.zeros((64, 64), np.int16), spacing=np.ones(3))
    cases = [([str(_need(SPLEEN)), "--key-slice", "26"], "slice 26 is outside the volume"),
             ([str(tmp_path / "flat.npz")], "2D image"),
             ([str(tmp_path / "missing.nii.gz")], "no such file"),
             ([str(SPLEEN), "--policy", "oracle", "--reference-label", "liver"], "no label 'liver'")]
    for arguments, message in cases:
        assert main(["segment-volume", *arguments, "--query", "Segment the spleen.", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a person's file")
    arguments = [str(SPLEEN), "--query", "Segment the spleen.", "--policy", "oracle", "--label", "spleen"]
    assert main(["segment-volume", *arguments, "--out", str(foreign)]) == 2
    assert "not an earlier volume run's" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]  # a folder is replaced whole only when it is ours


# ----------------------------------------------------------------------------- evaluation

def test_evaluate_volumes_scores_every_strategy_on_one_key_slice_and_resumes(spleen, tmp_path):
    from ibisagent.volume.evaluation import (evaluate_volumes, markdown_tables, read_volume_manifest,
                                             summarise_volumes)

    volume, reference, encoder = spleen
    items = read_volume_manifest(_need(VOLUMES / "manifest.csv"), "test", ["msd-spleen"])
    assert [item.file.name for item in items] == [SPLEEN.name]
    makers = {"oracle": lambda truth: build_policy("oracle", ground_truth=truth, target_iou=0.9)}
    records_path = tmp_path / "records.jsonl"
    cache = encoder.directory.parent  # the module's slice cache: the same embeddings as the session tests
    rows = evaluate_volumes(items, encoder.tool, makers, max_turns=5, cache_dir=cache, records_path=records_path)
    (row,) = rows["oracle"]
    assert row["key_slice"] == int(np.argmax(reference.sum(axis=(1, 2))))
    assert row["dice_at"]["1"] == row["both"]["dice"]
    assert row["both"]["dice"] > row["forward"]["dice"]  # the spleen reaches below its largest slice
    for strategy in ("baseline", "forward", "both", "final"):
        assert 0.0 <= row[strategy]["dice"] <= 1.0 and 0.0 <= row[strategy]["surface_dice"] <= 1.0
    assert row["final"]["hd95"] >= 0.0
    again = evaluate_volumes(items, encoder.tool, makers, max_turns=5, cache_dir=cache, records_path=records_path)
    assert again["oracle"] == [row] and len(records_path.read_text().splitlines()) == 1  # resumed, not rerun
    assert row["window"]["name"] == volume.window.name  # the display is part of the measurement
    from ibisagent.volume.evaluation import _row_key
    for other in ({**row, "window": {**row["window"], "name": "as stored"}}, {k: v for k, v in row.items()
                                                                              if k != "window"}):
        assert _row_key(other) != _row_key(row)  # a row shown otherwise (or before windows were kept) reruns
    summary = summarise_volumes(rows["oracle"])
    assert summary["overall"]["dice_at"] == summary["by_source"]["msd-spleen"]["dice_at"]
    table = markdown_tables(summary)
    assert "| msd-spleen | 1 |" in table and f"{row['baseline']['dice']:.3f}" in table
