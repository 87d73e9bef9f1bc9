"""Tiny random-weight models for tests and benchmarks."""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def build_sam_tiny(img_size: int = 64, seed: int = 0) -> Sam:
    """A ~60k-parameter SAM of the official modules with weights drawn from ``seed`` (global RNG
    untouched); ``img_size``: side of the square input in pixels (a multiple of 8)."""
    patch, dim = 8, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=patch,
                embed_dim=dim,
                depth=1,
                num_heads=1,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                global_attn_indexes=(0,),
                out_chans=dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=dim,
                image_embedding_size=(img_size // patch, img_size // patch),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                transformer=TwoWayTransformer(
                    depth=1, embedding_dim=dim, mlp_dim=2 * dim, num_heads=2
                ),
                transformer_dim=dim,
                iou_head_depth=2,
                iou_head_hidden_dim=dim,
            ),
        )
    return sam.eval()
