"""Load, quick: concurrent sessions against a real Triton whose embedding cache is smaller than the image set,
and concurrent annotators on a real MONAI Label server.

The long run (more sessions, minutes, the shipped cache size) is `ibis stress` (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient[grpc]) is not installed")

from test_triton import copy_models, start_server, triton_install  # noqa: E402,F401

from ibisagent.serving.repository import SAM_MODELS, prepare_repository  # noqa: E402
from ibisagent.stress.load import run_load  # noqa: E402
from ibisagent.stress.run import StressSettings, pair_name, reference_pairs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESIDENT = 4  # embeddings the server keeps: fewer than the images, so sessions evict each other's


@pytest.fixture(scope="module")
def small_cache_server(tmp_path_factory, onnx_dir, triton_install):
    repository = copy_models(SAM_MODELS, tmp_path_factory.mktemp("load") / "triton_models")
    config = repository / "sam_decoder" / "config.pbtxt"
    text = config.read_text()
    assert 'key: "resident_embeddings" value: { string_value: "64" }' in text
    config.write_text(text.replace('{ string_value: "64" }', f'{{ string_value: "{RESIDENT}" }}'))
    assert prepare_repository(repository, f"onnx:{onnx_dir}")
    server = start_server(repository, triton_install)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def load_pairs(real_pairs):
    from ibisagent.imaging.io import read_image, read_mask

    pairs = []
    for pair in real_pairs[::2][:2 * RESIDENT]:  # one image per source, twice the cache
        image = read_image(pair.image).rgb
        pairs.append((pair_name(pair), image, read_mask(pair.mask, image.shape[:2])))
    return pairs


def test_concurrent_sessions_get_their_solo_masks_and_memory_stays_bounded(small_cache_server, load_pairs):
    sessions = RESIDENT - 1  # each session holds one image at a time: all fit, stale ones are evicted
    report = run_load(small_cache_server.grpc_url, load_pairs, sessions, seconds=30,
                      server_pid=small_cache_server.process.pid)
    print(f"\n{report.runs} runs, {report.requests} requests, latency {report.latency_ms} ms, "
          f"server memory {report.server_rss_mb} MB")
    assert report.errors == [] and report.mismatches == []
    assert report.runs >= sessions and len(load_pairs) > RESIDENT
    assert report.resident_after == RESIDENT  # the cache evicted the least recently used, as documented
    rss = report.server_rss_mb
    assert rss["max"] - rss["after_solo_runs"] < 256, rss  # nothing piles up: the LRU holds 4 x 4 MiB


def test_a_repeated_pair_name_is_refused_before_any_request():
    """Runs are checked against the solo run of their name: two references under one name would compare one
    target's runs with another's solo run (the long run's "2 of 8 sessions unlike their solo run" was that:
    an ACDC slice and a BTCV slice each listed once per label, under the image's name alone)."""
    image, reference = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool)
    with pytest.raises(ValueError, match="repeated"):
        run_load("127.0.0.1:1", [("a.png", image, reference), ("a.png", image, ~reference)], 1, seconds=1)


def test_the_long_runs_images_have_a_name_each(med2d_manifest):
    """The long run's selection (images of several targets give several pairs) names every pair apart."""
    settings = StressSettings(shared_data=med2d_manifest.parents[1])
    names = [name for name, _, _ in reference_pairs(settings, 80)]
    assert len(names) == 80 and len(set(names)) == 80
    assert any(name.startswith("acdc/") for name in names)
    images = {name.rpartition(" (")[0] for name, _, _ in reference_pairs(settings, 80, one_per_image=True)}
    assert len(images) == 80  # more than the 64 embeddings the server keeps: the long run makes it evict


@pytest.fixture(scope="module")
def label_server(tmp_path_factory, real_pairs):
    """A real MONAI Label server with our app over three real 2D images (one target each)."""
    import shutil

    from ibisagent.label.environment import label_env_path
    from ibisagent.label.server import LabelServer
    from ibisagent.stress.run import free_ports

    env = label_env_path(REPO / ".venv-label")
    if not (env / "bin" / "monailabel").is_file():
        pytest.skip(f"no MONAI Label environment at {env}: run `ibis label-serve --setup`")
    studies = tmp_path_factory.mktemp("label-load") / "studies"
    studies.mkdir()
    chosen = list({pair.image: pair for pair in real_pairs[::4]}.values())[:3]
    for pair in chosen:
        shutil.copy(pair.image, studies / pair.image.name)
    server = LabelServer(studies, tmp_path_factory.mktemp("app"), port=free_ports(1)[0], label_env=env,
                         log=lambda line: None)
    server.start(900)
    yield server, chosen
    server.stop()


def test_concurrent_annotators_on_monai_label_get_their_solo_labels(label_server):
    """Two annotators at once, each in its own sessions: every label equals the image's solo one and the person's
    point encodes nothing again, whatever the other client did meanwhile."""
    from ibisagent.imaging.io import read_mask
    from ibisagent.stress.label_load import LabelStudy, run_label_load

    server, pairs = label_server
    studies = [LabelStudy.for_target(pair.image.stem, pair.label, read_mask(pair.mask)) for pair in pairs]
    report = run_label_load(server.url, studies, sessions=2, seconds=30, server_pid=server.process.pid)
    print(f"\n{report.runs} runs, latency {report.latency_ms} ms, server memory {report.server_rss_mb} MB")
    assert report.errors == [] and report.mismatches == [] and report.runs >= 2
    with pytest.raises(ValueError, match="image of its own"):
        run_label_load(server.url, [studies[0], studies[0]], sessions=1, seconds=1)
