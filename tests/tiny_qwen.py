"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint fully offline.

Tests need a real Qwen2.5-VL (config, processor, tokenizer, chat template, the
``AutoModelForImageTextToText`` code path and ``generate``) but no weights can
be downloaded here.  This module trains a small byte-level BPE tokenizer on a
corpus generated in code, wraps it with the Qwen special tokens and a Qwen-style
chat template, and saves a few-hundred-kilobyte model + processor that load with
``from_pretrained(..., local_files_only=True)``.  Its outputs are gibberish; only
the plumbing is real.
"""

from __future__ import annotations

import itertools
import pathlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-style template; `content` may be a string or a list of image/video/text parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

VOCAB_SIZE = 768
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def _corpus() -> list[str]:
    """A few hundred short English/medical sentences plus agent-protocol strings."""
    organs = ["liver", "kidney", "spleen", "lung", "heart", "brain", "tumor", "lesion", "polyp", "pancreas"]
    modalities = ["CT", "MRI", "ultrasound", "X-ray", "endoscopy", "dermoscopy"]
    verbs = ["Segment", "Find", "Outline", "Locate", "Mask"]
    lines = [
        f"{verb} the {organ} in this {modality} image."
        for verb, organ, modality in itertools.product(verbs, organs, modalities)
    ]
    lines += [f"The {organ} is visible in the upper left region." for organ in organs]
    lines += [
        "<think>The mask misses part of the region, I will add a point.</think>",
        "<action>Positive Point (0.1234, 0.5678)</action>",
        "<action>Negative Point (0.9012, 0.3456)</action>",
        "<action>Terminate</action>",
        "You are a helpful assistant for medical image segmentation.",
        "system user assistant",
    ]
    lines += [f"Positive Point (0.{i:04d}, 0.{9999 - i:04d})" for i in range(0, 10000, 97)]
    lines += [f"Negative Point (0.{i:04d}, 0.{i // 3:04d})" for i in range(0, 10000, 131)]
    return lines


def _build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,  # ids 0..6, never split, stripped by skip_special_tokens
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def _build_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    hidden = 64
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 16
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,
        out_hidden_size=hidden,
        fullatt_block_indexes=[1],
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )


def build_tiny_qwen25vl(out_dir: pathlib.Path) -> pathlib.Path:
    """Save a tiny random Qwen2.5-VL (model, processor, tokenizer) to ``out_dir``; return it."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    config = _build_config(tokenizer)

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)

    vision = dict(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        video_processor=Qwen2VLVideoProcessor(**vision),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir
