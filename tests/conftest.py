"""Shared fixtures: the real LiteMedSAM tool, its ONNX export, real data from ../shared/data."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MED2D = SHARED_DATA / "med2d"


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests(tmp_path_factory):
    """Every server, stub, worker or writer a test starts is gone when the tests end.

    What a test starts names this session's temporary folder on its command
    line (a model repository, an app folder, an output): any such process
    still alive at the end is killed here and reported as an error (a leaked
    triton_python_backend_stub was found once).
    """
    import os
    import time

    try:
        import psutil
    except ImportError:  # the stress extra is absent: nothing to look with
        yield
        return
    base, started = str(tmp_path_factory.getbasetemp()), time.time()
    yield

    def leaked() -> list:
        found = []
        for process in psutil.process_iter(["pid", "cmdline", "create_time"]):
            info = process.info
            if (info["pid"] != os.getpid() and (info["create_time"] or 0) >= started - 1
                    and any(base in part for part in info["cmdline"] or [])):
                found.append(process)
        return found

    deadline = time.monotonic() + 10  # a server told to stop may take a moment to be reaped
    while (left := leaked()) and time.monotonic() < deadline:
        time.sleep(0.5)
    described = [f"{p.pid} {' '.join(p.info['cmdline'])[:160]}" for p in left]
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    assert not described, "processes started by the tests outlived them (killed now):\n" + "\n".join(described)


@pytest.fixture(scope="session")
def lite_tool():
    from ibisagent.tools.factory import build_tool

    return build_tool("lite-medsam", backend="torch")


@pytest.fixture(scope="session")
def onnx_dir(lite_tool, tmp_path_factory):
    from ibisagent.tools.onnx_export import export_onnx

    return export_onnx(lite_tool.parts, lite_tool.transform, tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="session")
def demo_image() -> np.ndarray:
    from pydicom.data import get_testdata_file

    from ibisagent.imaging.io import read_image

    return read_image(get_testdata_file("examples_overlay.dcm")).rgb


@pytest.fixture(scope="session")
def demo_reference() -> np.ndarray:
    from PIL import Image

    from ibisagent.demo import DEMO_REFERENCE

    return np.asarray(Image.open(DEMO_REFERENCE)) > 0


@pytest.fixture(scope="session")
def med2d_manifest() -> Path:
    manifest = MED2D / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"real med2d data absent: {manifest} not found (../shared/data is provided beside the repo)")
    return manifest


def first_test_pairs(manifest, per_source: int, sources: tuple[str, ...] | None = None) -> list:
    """The first `per_source` test pairs of each source (of `sources`, or all), in a fixed order."""
    from ibisagent.evaluation import read_manifest

    by_source: dict[str, list] = {}
    for pair in sorted(read_manifest(manifest, "test"), key=lambda p: (str(p.image), p.label)):
        if sources is None or pair.source in sources:
            by_source.setdefault(pair.source, []).append(pair)
    return [pair for pairs in by_source.values() for pair in pairs[:per_source]]


@pytest.fixture(scope="session")
def real_pairs(med2d_manifest):
    """Two test pairs per source, in a fixed order."""
    return first_test_pairs(med2d_manifest, 2)


def turn_prone(dataset) -> None:
    """What a scanner stores for an axial slice with the patient prone: pixels turned 180 degrees, geometry to match."""
    pixels = dataset.pixel_array
    rows, columns = pixels.shape
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    row_direction = np.asarray(dataset.ImageOrientationPatient[:3], float)
    column_direction = np.asarray(dataset.ImageOrientationPatient[3:], float)
    last = (np.asarray(dataset.ImagePositionPatient, float) + (columns - 1) * column_spacing * row_direction
            + (rows - 1) * row_spacing * column_direction)  # the old last pixel becomes the first
    dataset.PixelData = np.ascontiguousarray(pixels[::-1, ::-1]).tobytes()
    dataset.ImageOrientationPatient = [float(v) for v in -np.concatenate([row_direction, column_direction])]
    dataset.ImagePositionPatient = [float(v) for v in last]
