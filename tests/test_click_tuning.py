"""Click fine-tuning of LiteMedSAM's decoder: sampling, caching, a short real run, resume, loading."""

import json

import numpy as np
import pytest

from ibisagent.training.click_sampling import jittered_box, sample_click


def test_sampled_clicks_lie_deep_in_the_error_region():
    target = np.zeros((40, 40), bool)
    target[10:30, 10:30] = True
    rng = np.random.default_rng(0)
    for _ in range(50):
        row, col, positive = sample_click(np.zeros_like(target), target, rng)
        assert positive and 14 <= row <= 25 and 14 <= col <= 25  # at least half as deep as the centre
    prediction = target.copy()
    prediction[0:6, :] = True
    row, col, positive = sample_click(prediction, target, rng, exact_probability=1.0)
    assert not positive and row < 6
    assert sample_click(target, target, rng) is None


def test_jittered_box_stays_near_the_target_and_inside_the_image():
    target = np.zeros((50, 60), bool)
    target[10:20, 30:50] = True
    exact = jittered_box(target, np.random.default_rng(0), max_shift=0.0)
    assert exact.tolist() == [30, 10, 49, 19]
    for seed in range(20):
        box = jittered_box(target, np.random.default_rng(seed))
        assert np.all(np.abs(box - exact) <= 0.1 * np.array([20, 10, 20, 10]) + 1e-4)
        assert box.min() >= 0 and box[2] <= 59 and box[3] <= 49


def test_arbitrary_boxes_stay_in_the_frame_and_vary_in_size():
    from ibisagent.training.tool.click_tuning import random_box

    rng = np.random.default_rng(0)
    boxes = np.array([random_box(64, rng) for _ in range(200)])
    assert boxes.min() >= 0 and boxes.max() <= 63
    sizes = boxes[:, 2:] - boxes[:, :2] + 1
    assert sizes.min() >= 8 and sizes.max() > 48 and sizes.min() < 16


def test_arbitrary_box_distillation_learns_only_from_the_teacher():
    import torch

    from ibisagent.tools.sam_model import PromptDecoder, build_lite_medsam
    from ibisagent.training.tool.click_tuning import _box_step

    student, teacher = PromptDecoder(build_lite_medsam()), PromptDecoder(build_lite_medsam()).requires_grad_(False)
    features = torch.randn(2, 256, 64, 64)
    targets = torch.zeros(2, 256, 256)
    targets[:, 100:140, 90:150] = 1.0
    rng = np.random.default_rng(0)
    _box_step(student, features, targets, rng, True, teacher, 1.0, arbitrary=True)
    gradients = [p.grad for p in student.parameters() if p.grad is not None]
    # A copy of the teacher has nothing to learn, whatever the target says.
    assert gradients and max(float(g.abs().max()) for g in gradients) < 1e-6
    with pytest.raises(ValueError, match="teacher"):
        _box_step(student, features, targets, rng, True, None, 0.0, arbitrary=True)


def test_scheduled_settings_repeat_their_last_entry():
    from ibisagent.training.schedule import scheduled

    assert scheduled(0.25, 7) == 0.25 and scheduled(None, 3) is None
    assert [scheduled([0.25, 0.5], epoch) for epoch in range(4)] == [0.25, 0.5, 0.5, 0.5]
    assert [scheduled([6, 20], k) for k in range(3)] == [6, 20, 20]
    with pytest.raises(ValueError, match="at least one value"):
        scheduled([], 0)


def test_embedding_cache_computes_once(tmp_path, lite_tool, real_pairs):
    """Once per image content: a copy elsewhere reuses the entry, an edited image gets its own."""
    from PIL import Image

    from ibisagent.training.embedding_cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, lite_tool)
    first = cache.get(real_pairs[0].image)
    files = list(cache.directory.glob("*.npy"))
    assert first.dtype == np.float16 and first.shape == (256, 64, 64) and len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert np.array_equal(cache.get(real_pairs[0].image), first) and files[0].stat().st_mtime_ns == stamp
    copy = tmp_path / "elsewhere" / real_pairs[0].image.name  # the data provisioned again: new path and mtime
    copy.parent.mkdir()
    copy.write_bytes(real_pairs[0].image.read_bytes())
    assert np.array_equal(cache.get(copy), first) and len(list(cache.directory.glob("*.npy"))) == 1
    changed = tmp_path / "changed.png"
    Image.fromarray(np.asarray(Image.open(copy).convert("RGB"))[:, ::-1].copy()).save(changed)
    assert not np.array_equal(cache.get(changed), first) and len(list(cache.directory.glob("*.npy"))) == 2


def test_short_training_run_resumes_and_its_decoder_loads(tmp_path, med2d_manifest, demo_image):
    from ibisagent.tools.base import Click
    from ibisagent.tools.factory import build_tool
    from ibisagent.training.tool.click_tuning import ClickTuningConfig, train_click_decoder

    # Epoch 2 follows its own schedule entry: box batches only, distilled from the base decoder,
    # half of them arbitrary boxes.
    config = ClickTuningConfig(manifest=str(med2d_manifest), out_dir=str(tmp_path / "run"),
                               cache_dir=str(tmp_path / "cache"), epochs=1, batch_size=4, limit_train=8, limit_val=4,
                               learning_rate=[2e-4, 5e-5],
                               box_fraction=[0.25, 1.0], box_distillation=[0.0, 1.0], random_box_fraction=[0.0, 0.5])
    out = train_click_decoder(config)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["train_samples"] == 8 and len(summary["history"]) == 1
    assert {"iou@1", "iou@5", "box_iou", "box_shortfall", "score"} <= set(summary["history"][0])
    config.epochs, config.resume = 2, True
    summary = json.loads((train_click_decoder(config) / "training_summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]  # epoch 1 was not repeated
    base = summary["base_val"]["by_source"]
    for epoch in summary["history"]:  # the selection score pays for every source whose box IoU fell below the base
        shortfall = sum(max(0.0, base[s]["box_iou"] - box) for s, box in epoch["box_iou_by_source"].items())
        assert epoch["box_shortfall"] == pytest.approx(shortfall)
        assert epoch["score"] == pytest.approx((epoch["iou@1"] + epoch["iou@5"]) / 2 - shortfall)
    tuned = build_tool({"kind": "lite-medsam", "decoder_checkpoint": str(out / "best_decoder.pt")}, backend="torch")
    base = build_tool("lite-medsam-base", backend="torch")
    embedding = base.encode(demo_image)
    a = tuned.predict(embedding, [Click(0.3, 0.45, True)]).low_res_logits
    b = base.predict(embedding, [Click(0.3, 0.45, True)]).low_res_logits
    assert np.abs(a - b).max() > 1e-3  # the trained weights are really used


def test_a_run_can_start_from_the_shipped_decoder_and_refuses_another_file(tmp_path, med2d_manifest):
    import hashlib

    import torch

    from ibisagent.models import shipped_click_decoder
    from ibisagent.training.tool.click_tuning import ClickTuningConfig, train_click_decoder

    shipped = shipped_click_decoder()
    config = ClickTuningConfig(manifest=str(med2d_manifest), out_dir=str(tmp_path / "run"),
                               cache_dir=str(tmp_path / "cache"), epochs=0, limit_train=4, limit_val=4,
                               init_decoder=str(shipped), init_decoder_sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        train_click_decoder(config)
    assert not (tmp_path / "run" / "best_decoder.pt").exists()
    config.init_decoder_sha256 = hashlib.sha256(shipped.read_bytes()).hexdigest()
    summary = json.loads((train_click_decoder(config) / "training_summary.json").read_text())
    # The wheel's decoder barely answers a single click; the shipped one does, and it is the start to beat.
    assert summary["init_val"]["overall"]["iou@1"] > summary["base_val"]["overall"]["iou@1"] + 0.2
    assert summary["best_score"] == pytest.approx(summary["init_val"]["overall"]["score"])
    start = torch.load(tmp_path / "run" / "best_decoder.pt", weights_only=True)
    for key, value in torch.load(shipped, weights_only=True).items():
        assert torch.equal(start[key], value.float())
