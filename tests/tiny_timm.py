"""Tiny timm architectures from eight families, for fast Linear-factorization tests.

Most are timm's own entrypoints with size kwargs (which travel in a checkpoint's
``model_args``); timm's Mixer and ResMLP entrypoints fix their width and depth, so
tiny variants of those classes are registered here under ``tiny_test_*`` names, as is a
tiny ViT for commands that take a model name only (``python -m runtime.plan --model``).
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, _create_mixer
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer


@register_model
def tiny_test_mixer(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """timm's MLP-Mixer (token-mixing and channel MLPs), two blocks of width 64."""
    args = dict(patch_size=8, num_blocks=2, embed_dim=64, **kwargs)
    return _create_mixer("mixer_s16_224", pretrained=pretrained, **args)


@register_model
def tiny_test_resmlp(pretrained: bool = False, **kwargs: Any) -> MlpMixer:
    """timm's ResMLP (a token-mixing Linear with Affine norms), two blocks of width 64."""
    args = dict(
        patch_size=8, num_blocks=2, embed_dim=64, mlp_ratio=4, block_layer=ResBlock,
        norm_layer=Affine, **kwargs,
    )  # fmt: skip
    return _create_mixer("resmlp_12_224", pretrained=pretrained, **args)


# name -> (timm model name, create_model kwargs, input size)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any], tuple[int, int, int]]] = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), (3, 32, 32)),
    "deit": (
        "deit_tiny_distilled_patch16_224",
        dict(img_size=32, patch_size=8, depth=2),
        (3, 32, 32),
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=32, window_size=2, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8)),
        (3, 32, 32),
    ),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), conv_mlp=False), (3, 32, 32)),
    "mixer": ("tiny_test_mixer", dict(img_size=32), (3, 32, 32)),
    "resmlp": ("tiny_test_resmlp", dict(img_size=32), (3, 32, 32)),
    "eva": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2), (3, 28, 28)),
    "levit": (
        "levit_128s",
        dict(img_size=64, embed_dim=(32, 48, 64), key_dim=8, num_heads=(1, 2, 2), depth=(1, 1, 1)),
        (3, 64, 64),
    ),
    "maxvit": (
        "maxvit_nano_rw_256",
        dict(
            img_size=64,
            embed_dim=(32, 32, 64, 64),
            depths=(1, 1, 1, 1),
            stem_width=16,
            transformer_dim_head=16,
        ),
        (3, 64, 64),
    ),
}


@register_model
def tiny_test_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """timm's ViT at 32x32 with 8x8 patches (16 patches and a class token), width 64, two
    blocks of two heads; pass ``--input-size 3 32 32`` where its data config is read."""
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
    return _create_vision_transformer(
        "vit_tiny_patch16_224", pretrained=pretrained, **{**args, **kwargs}
    )
