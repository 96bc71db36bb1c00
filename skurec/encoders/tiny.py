"""``tiny_random_vit``: a tiny RANDOMLY initialised timm ViT for fast tests (never a real feature extractor).

Deterministic (fixed seed, isolated RNG) so its weights hash, and therefore its encoder_id, is stable; its identity
says ``pretrained: False`` and ``source.kind == "random"`` so random features can never pass for pretrained ones.
"""

from __future__ import annotations

import torch

from .base import Backbone, sha256_state_dict
from .checkpoint import create_timm_model
from .registry import register_encoder

TINY_ARCH = "vit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}
TINY_SEED = 0


def build_tiny_vit(seed: int = TINY_SEED) -> torch.nn.Module:
    """The tiny ViT architecture with seeded random weights (no classifier)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_timm_model(TINY_ARCH, **TINY_KWARGS).eval()


def load_tiny_random_vit(seed: int = TINY_SEED) -> Backbone:
    """Backbone of the tiny random ViT: 32x32 input, 32-d CLS features, ImageNet mean/std."""
    model = build_tiny_vit(seed)
    return Backbone(
        name="tiny_random_vit",
        module=model,
        dim=int(model.num_features),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        input_size=TINY_KWARGS["img_size"],
        crop_pct=0.875,
        interpolation="bicubic",
        weights_sha256=sha256_state_dict(model.state_dict(), salt=f"random|seed={seed}"),
        pretrained=False,
        source={"kind": "random", "arch": TINY_ARCH, "seed": seed, **TINY_KWARGS},
    )


@register_encoder(
    "tiny_random_vit",
    description="tiny RANDOMLY initialised ViT (32 px, 32-d) for tests only; pretrained=False",
    pretrained=False,
)
def _load_registered(name: str, checkpoint: str | None, input_size: int | None) -> Backbone:
    if input_size not in (None, TINY_KWARGS["img_size"]):
        raise ValueError(f"tiny_random_vit has a fixed input_size of {TINY_KWARGS['img_size']}, got {input_size}")
    return load_tiny_random_vit()
