import numpy as np
import pytest
import torch

from ibisagent.metrics import bounding_box, iou
from ibisagent.tools.base import Click, build_prompt_arrays
from ibisagent.tools.factory import build_tool, parse_tool_spec


@pytest.fixture(scope="module")
def onnx_tool(onnx_dir):
    return build_tool(f"onnx:{onnx_dir}")


def test_torch_and_onnxruntime_agree(lite_tool, onnx_tool, demo_image):
    torch_embedding = lite_tool.encode(demo_image)
    onnx_embedding = onnx_tool.encode(demo_image)
    assert np.abs(torch_embedding.features - onnx_embedding.features).max() <= 1e-3
    previous_torch = previous_onnx = None
    clicks = []
    for click in (Click(0.23, 0.45, True), Click(0.65, 0.5, False), Click(0.2, 0.6, True)):
        clicks.append(click)
        a = lite_tool.predict(torch_embedding, clicks, previous_torch)
        b = onnx_tool.predict(torch_embedding, clicks, previous_onnx)
        assert np.abs(a.low_res_logits - b.low_res_logits).max() <= 1e-3
        assert a.iou == pytest.approx(b.iou, abs=1e-3)
        previous_torch, previous_onnx = a.low_res_logits, b.low_res_logits
    box = lite_tool.predict(torch_embedding, box=(38, 62, 190, 262), multimask=False)
    box_onnx = onnx_tool.predict(torch_embedding, box=(38, 62, 190, 262), multimask=False)
    assert np.abs(box.low_res_logits - box_onnx.low_res_logits).max() <= 1e-3


def test_onnx_encoder_refuses_a_batch_clearly(onnx_tool):
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        onnx_tool._encode(np.zeros((2, 3, 256, 256), np.float32))


def test_prompt_tokens_equal_segment_anything(lite_tool, demo_image):
    """Our single prompt path (points + labelled box corners) equals segment-anything's PromptEncoder."""
    embedding = lite_tool.encode(demo_image)
    encoder, decoder = lite_tool.parts.prompt_encoder, lite_tool.parts.mask_decoder
    clicks = [Click(0.3, 0.4, True), Click(0.6, 0.5, False)]
    prompts = build_prompt_arrays(embedding.frame, embedding.mask_side, clicks, None, None)
    features = torch.from_numpy(embedding.features)
    with torch.no_grad():
        points = (torch.from_numpy(prompts.coords[:, :2]), torch.from_numpy(prompts.labels[:, :2]).long())
        sparse, dense = encoder(points=points, boxes=None, masks=None)
        reference, _ = decoder(features, encoder.get_dense_pe(), sparse, dense, multimask_output=True)
        box = torch.tensor([[38.0, 62.0, 190.0, 262.0]]) * embedding.frame.scale
        encoder, decoder = lite_tool.parts.box_decoder  # box-only prompts are answered by the wheel's decoder
        sparse, dense = encoder(points=None, boxes=box, masks=None)
        box_reference, _ = decoder(features, encoder.get_dense_pe(), sparse, dense, multimask_output=False)
    ours = lite_tool._decode(embedding.features, prompts)[0][:, 1:]
    assert np.abs(ours - reference.numpy()).max() < 1e-4
    box_prompts = build_prompt_arrays(embedding.frame, embedding.mask_side, [], (38, 62, 190, 262), None)
    assert np.abs(lite_tool._decode(embedding.features, box_prompts)[0][:, :1] - box_reference.numpy()).max() < 1e-4


def test_box_prompt_segments_real_targets(lite_tool, real_pairs):
    """LiteMedSAM was trained with boxes: a GT box must give a usable mask on real data."""
    from PIL import Image

    scores = []
    for pair in real_pairs:
        if pair.source != "kvasir-seg" and pair.source != "ph2":
            continue
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        target = np.asarray(Image.open(pair.mask).convert("L")) > 127
        output = lite_tool.predict(lite_tool.encode(image), box=bounding_box(target), multimask=False)
        assert output.mask.shape == target.shape and output.low_res_logits.shape == (1, 1, 256, 256)
        scores.append(iou(output.mask, target))
    assert np.mean(scores) > 0.7, scores


def test_prediction_needs_a_prompt(lite_tool, demo_image):
    with pytest.raises(ValueError, match="at least one click or a box"):
        lite_tool.predict(lite_tool.encode(demo_image), [])


def test_user_segment_anything_checkpoint_through_config(tmp_path, demo_image):
    """No SAM weights exist offline: a randomly initialised vit_b saved to disk goes through the config path."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), checkpoint)
    tool = build_tool({"kind": "segment-anything", "model_type": "vit_b", "checkpoint": str(checkpoint)})
    assert tool.transform.input_size == 1024 and tool.transform.normalisation == "sam"
    embedding = tool.encode(demo_image)
    assert embedding.features.shape == (1, 256, 64, 64)
    output = tool.predict(embedding, [Click(0.5, 0.5, True)])
    assert output.mask.shape == demo_image.shape[:2] and output.low_res_logits.shape == (1, 1, 256, 256)
    medsam = build_tool(f"medsam:{checkpoint}")
    assert medsam.transform.normalisation == "minmax"


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown tool"),
    ("sam:vit_q:/x.pth", "unknown SAM model type"),
    ("sam:vit_b:/nonexistent.pth", "does not exist"),
    ("onnx:/nonexistent", "not an ONNX tool directory"),
    ({"kind": "lite-medsam", "colour": "red"}, "unknown option"),
    ({"kind": "lite-medsam", "box_decoder": "both"}, "box_decoder must be"),
    ({"kind": "teleport"}, "unknown tool kind"),
])
def test_bad_tool_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_tool(spec)


def test_bad_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be loaded"):
        build_tool({"kind": "lite-medsam", "checkpoint": str(garbage)})
    wrong = tmp_path / "decoder.pth"
    torch.save({"image_encoder.x": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="non-decoder keys"):
        build_tool({"kind": "lite-medsam", "decoder_checkpoint": str(wrong)})
    assert parse_tool_spec("medsam:/w.pth")["normalisation"] == "minmax"
    assert parse_tool_spec("lite-medsam-tuned") == {"kind": "lite-medsam", "box_decoder": "tuned"}
    with pytest.raises(ValueError, match="non-decoder keys"):
        build_tool(parse_tool_spec(f"lite-medsam-decoder:{wrong}"))


def test_decoders_run_a_batch_of_images(lite_tool, onnx_tool, demo_image):
    """One prompt per image embedding, B at once: equal to B single calls, in torch and ONNX."""
    from ibisagent.tools.base import build_prompt_arrays

    embedding = lite_tool.encode(demo_image)
    flipped = lite_tool.encode(np.ascontiguousarray(demo_image[:, ::-1]))
    prompts = [build_prompt_arrays(e.frame, e.mask_side, [Click(0.3, 0.45, True)], None, None) for e in (embedding, flipped)]
    features = np.concatenate([embedding.features, flipped.features])
    batch = {
        "image_embedding": features,
        "point_coords": np.concatenate([p.coords for p in prompts]),
        "point_labels": np.concatenate([p.labels for p in prompts]),
        "mask_input": np.concatenate([p.mask_input for p in prompts]),
        "has_mask_input": np.concatenate([p.has_mask_input for p in prompts]),
    }
    onnx_logits, _ = onnx_tool.decoder.run(None, batch)
    with torch.no_grad():
        torch_logits, _ = lite_tool.decoder(*(torch.from_numpy(v) for v in batch.values()))
    for index, single in enumerate((embedding, flipped)):
        alone = lite_tool._decode(single.features, prompts[index])[0]
        assert np.abs(torch_logits[index].numpy() - alone[0]).max() < 1e-3
        assert np.abs(onnx_logits[index] - alone[0]).max() < 1e-3
    assert np.abs(onnx_logits[0] - onnx_logits[1]).max() > 1.0  # the two images really differ


def test_box_only_prompts_keep_the_wheel_decoder(lite_tool, onnx_tool, demo_image):
    """The default tool answers a box alone with the wheel's decoder (masks exactly as before tuning)
    and any prompt with a click with the click-tuned one; its ONNX export does the same."""
    base, tuned = build_tool("lite-medsam-base", backend="torch"), build_tool("lite-medsam-tuned", backend="torch")
    embedding = lite_tool.encode(demo_image)
    box, clicks = (38, 62, 190, 262), [Click(0.3, 0.45, True), Click(0.2, 0.6, False)]

    def logits(tool, **prompt):
        return tool.predict(embedding, **prompt).low_res_logits

    for multimask in (False, True):
        base_box, tuned_box = logits(base, box=box, multimask=multimask), logits(tuned, box=box, multimask=multimask)
        assert np.abs(base_box - tuned_box).max() > 1.0  # the two decoders really differ on this box
        assert np.array_equal(logits(lite_tool, box=box, multimask=multimask), base_box)
        assert np.abs(logits(onnx_tool, box=box, multimask=multimask) - base_box).max() <= 1e-3
    for prompt in ({"clicks": clicks}, {"clicks": clicks, "box": box}):
        assert np.array_equal(logits(lite_tool, **prompt), logits(tuned, **prompt))
        assert np.abs(logits(onnx_tool, **prompt) - logits(tuned, **prompt)).max() <= 1e-3


def test_shipped_click_decoder_beats_the_box_trained_one_on_clicks(lite_tool, real_pairs):
    """The default tool loads our click-tuned decoder: on real pairs, 3 oracle clicks give far better masks."""
    from PIL import Image

    from ibisagent.clicks import next_click

    assert "lite_medsam_click_decoder" in lite_tool.name
    base = build_tool("lite-medsam-base")

    def iou_after_clicks(tool, embedding, target, count=3):
        clicks, low_res, mask = [], None, np.zeros_like(target)
        for _ in range(count):
            click, _ = next_click(mask, target)
            if click is None:
                break
            clicks.append(click)
            output = tool.predict(embedding, clicks, low_res)
            low_res, mask = output.low_res_logits, output.mask
        return iou(mask, target)

    tuned_scores, base_scores = [], []
    for pair in real_pairs[::2]:
        image = np.asarray(Image.open(pair.image).convert("RGB"))
        target = np.asarray(Image.open(pair.mask).convert("L")) > 127
        embedding = lite_tool.encode(image)  # the encoder is the same in both tools
        tuned_scores.append(iou_after_clicks(lite_tool, embedding, target))
        base_scores.append(iou_after_clicks(base, embedding, target))
    assert np.mean(tuned_scores) > np.mean(base_scores) + 0.2, (tuned_scores, base_scores)
