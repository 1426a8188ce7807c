import numpy as np
import pytest
from PIL import Image

from ibisagent.imaging.io import ImageReadError, read_image
from ibisagent.imaging.orientation import (
    IDENTITY,
    DisplayTransform,
    orientation_note,
    patient_orientation_cosines,
    standard_display,
)
from ibisagent.imaging.overlay import MASK_COLOR, overlay_mask
from ibisagent.imaging.transform import ImageTransform
from ibisagent.imaging.windowing import apply_window, to_display
from ibisagent.prompting import load_prompts

from conftest import SHARED_DATA


def test_default_prompts_and_custom_file(tmp_path):
    default = load_prompts()
    assert "Segment the liver" in default.first("Segment the liver")
    custom = tmp_path / "p.yaml"
    custom.write_text("system: S\nfirst_turn: 'Q={query}'\nrefinement_turn: 'R={query}'\n")
    prompts = load_prompts(custom)
    assert (prompts.system, prompts.first("x"), prompts.refinement("y")) == ("S", "Q=x", "R=y")


@pytest.mark.parametrize("content, message", [
    ("system: S\nfirst_turn: F\n", "lacks text for: refinement_turn"),
    ("- a\n- b\n", "must be a mapping"),
    ("system: S\nfirst_turn: '{label}'\nrefinement_turn: R\n", "placeholder"),
    ("system: [unclosed\n", "not valid YAML"),
])
def test_bad_prompt_files(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_prompts(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_prompts(tmp_path / "missing.yaml")


def test_overlay_is_green_at_alpha_0_4():
    image = np.full((4, 5, 3), 100, np.uint8)
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    out = overlay_mask(image, mask)
    expected = np.round(0.6 * 100 + 0.4 * np.array(MASK_COLOR)).astype(np.uint8)
    assert out[1, 2].tolist() == expected.tolist()
    assert (out[~mask] == 100).all()
    with pytest.raises(ValueError):
        overlay_mask(image, mask[:3])


def test_transform_geometry_maps_back():
    transform = ImageTransform(256, "minmax")
    image = np.zeros((300, 484, 3), np.uint8)
    image[50:150, 100:300] = 200
    model_input, frame = transform(image)
    assert model_input.shape == (1, 3, 256, 256)
    assert frame.resized == (159, 256)
    assert model_input[0, :, 159:, :].max() == 0  # padding bottom
    assert model_input.max() == pytest.approx(1.0)
    # a logit map that is positive exactly inside the scaled square comes back at the right place
    low = np.full((256, 256), -1.0, np.float32)
    r0, r1, c0, c1 = (np.array([50, 150, 100, 300]) * frame.scale).round().astype(int)
    low[r0:r1, c0:c1] = 1.0
    back = frame.logits_to_image(low) > 0
    truth = image[..., 0] > 0
    assert (back & truth).sum() / (back | truth).sum() > 0.97
    # the centre of pixel (row 0, col 0) lands on SAM's pixel-index 0 after scaling
    assert frame.points_to_input(np.array([[0.5 / 484, 0.5 / 300]]))[0] == pytest.approx([0.5 * frame.scale - 0.5] * 2)


def test_transform_refuses_an_image_too_elongated_for_the_encoder():
    transform = ImageTransform(256, "minmax")
    assert transform(np.zeros((4000, 16, 3), np.uint8))[1].resized == (256, 1)  # thin, still a column of pixels
    with pytest.raises(ValueError, match=r"a 3x20000 image is too elongated .* short side would be 0\.04 px of 256"):
        transform(np.zeros((20000, 3, 3), np.uint8))


def test_windowing():
    assert apply_window(np.array([-160.0, 40.0, 240.0]), 40, 400).tolist() == [0, 128, 255]
    assert to_display(np.array([[-1000.0, 3000.0]]), modality="CT").tolist() == [[0, 255]]
    with pytest.raises(ValueError, match="unknown window"):
        to_display(np.zeros((2, 2)), window="liver")


def test_read_png_dicom_and_errors(tmp_path, demo_image):
    assert demo_image.shape == (300, 484, 3) and demo_image.dtype == np.uint8
    grey = tmp_path / "grey.png"
    Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5)).save(grey)
    loaded = read_image(grey)
    assert loaded.rgb.shape == (4, 5, 3) and loaded.kind == "raster"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="corrupt.png: not a readable image"):
        read_image(corrupt)
    text = tmp_path / "notes.dcm"
    text.write_text("hello")
    with pytest.raises(ImageReadError, match="not a DICOM file"):
        read_image(text)
    with pytest.raises(ImageReadError, match=r"slice 3 out of range 0\.\.0"):
        read_image(grey, slice_index=3)
    with pytest.raises(ImageReadError, match=r"a display window applies to DICOM and NIfTI values"):
        read_image(grey, window="abdomen")
    renamed = tmp_path / "IM0001"  # no name ending: taken as DICOM (PACS exports), and the error says what else is read
    renamed.write_bytes(corrupt.read_bytes())
    with pytest.raises(ImageReadError, match=r"IM0001: not a DICOM file \(other images are recognised by their name: "
                                             r"\.bmp, .*\.nii\.gz\)"):
        read_image(renamed)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_read_real_ct_dicom_in_hounsfield_window():
    path = SHARED_DATA / "dicom" / "dcmqi-ct-3slice" / "01.dcm"
    if not path.is_file():
        pytest.skip(f"real DICOM absent: {path}")
    loaded = read_image(path)
    assert loaded.modality == "CT" and loaded.rgb.shape == (512, 512, 3)
    assert 0 < loaded.rgb.mean() < 255


def test_read_nifti_slice_needs_an_index():
    path = SHARED_DATA / "volumes" / "totalseg-example" / "example_ct_sm.nii.gz"
    if not path.is_file():
        pytest.skip(f"real NIfTI absent: {path}")
    with pytest.raises(ImageReadError, match="choose one with --slice"):
        read_image(path)
    loaded = read_image(path, slice_index=10, window="abdomen")
    assert loaded.kind == "nifti" and loaded.rgb.ndim == 3 and loaded.rgb.std() > 0
    default = read_image(path, slice_index=10)  # values in HU: CT's default window, as for DICOM CT
    assert default.window == "abdomen" and np.array_equal(default.rgb, loaded.rgb)
    assert read_image(path, slice_index=10, window="percentile").window == "percentile"
    mr = read_image(path.with_name("example_mr_sm.nii.gz"), slice_index=10)
    assert mr.window == "percentile" and mr.rgb.std() > 0
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, slice_index=100000)


_UNIT = [np.eye(3)[axis] * sign for axis in range(3) for sign in (1, -1)]
_PLANES = {2: ((0, 1), (1, 1)), 1: ((0, 1), (2, -1)), 0: ((1, 1), (2, -1))}  # normal axis: (right, bottom) wanted


@pytest.mark.parametrize("row, column", [(r, c) for r in _UNIT for c in _UNIT if abs(r @ c) < 0.5])
def test_every_orthogonal_orientation_is_shown_in_the_standard_display(row, column):
    """A patient coordinate grid stored with this orientation must grow toward the standard directions."""
    transform = standard_display([*row, *column])
    rows, columns = np.mgrid[0:3, 0:5]  # not square: a missing or extra transpose changes the shape
    patient = rows[..., None] * column + columns[..., None] * row  # LPS position of each stored pixel
    shown = transform.to_display(patient)
    (right_axis, right_sign), (bottom_axis, bottom_sign) = _PLANES[int(np.argmax(np.abs(np.cross(row, column))))]
    assert np.all(np.diff(shown[..., right_axis], axis=1) == right_sign)
    assert np.all(np.diff(shown[..., bottom_axis], axis=0) == bottom_sign)
    assert np.array_equal(transform.to_stored(shown), patient)
    assert transform.stored_shape(shown.shape) == patient.shape[:2]
    assert transform.is_identity == (transform.describe() == "as stored")


def test_standard_orientations_stay_as_stored_and_a_prone_slice_is_named():
    for standard in ([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1], [0.999, 0.04, 0, -0.04, 0.999, 0]):
        assert standard_display(standard).is_identity
    for unusable in (None, [1, 0, 0], [1, 0, 0, 1, 0, 0], [float("nan")] * 6, [0.7, 0, 0.7, 0, 1, 0]):
        assert standard_display(unusable).is_identity
    prone = standard_display([-1, 0, 0, 0, -1, 0])
    assert prone == DisplayTransform(flip_rows=True, flip_columns=True)
    note = orientation_note([-1, 0, 0, 0, -1, 0], prone)
    assert note.startswith("axial slice stored with the image's right toward the patient's right and its bottom "
                           "toward the patient's anterior (ImageOrientationPatient -1, 0, 0, 0, -1, 0)")
    assert "flipped top-to-bottom, then flipped left-to-right" in note
    assert orientation_note([1, 0, 0, 0, 1, 0], IDENTITY) is None


def test_patient_orientation_letters_name_the_same_directions_as_cosines():
    assert patient_orientation_cosines(["L", "F"]) == (1, 0, 0, 0, 0, -1)  # a standard frontal radiograph
    assert standard_display(patient_orientation_cosines(["L", "F"])).is_identity
    assert standard_display(patient_orientation_cosines(["P", "FL"])).is_identity  # first letter is principal
    assert standard_display(patient_orientation_cosines(["R", "F"])) == DisplayTransform(flip_columns=True)
    assert standard_display(patient_orientation_cosines(["A", "H"])) == DisplayTransform(flip_rows=True,
                                                                                        flip_columns=True)
    assert standard_display(patient_orientation_cosines(["F", "L"])) == DisplayTransform(transpose=True)
    for unusable in (None, "L", ["L"], ["L", "R"], ["X", "F"], ["", "F"], ["L", "F", "A"]):
        assert patient_orientation_cosines(unusable) is None
    note = orientation_note(patient_orientation_cosines(["A", "F"]), DisplayTransform(flip_columns=True), ["A", "F"])
    assert note.startswith("lateral image stored with the image's right toward the patient's anterior")
    assert "(PatientOrientation A\\F)" in note
