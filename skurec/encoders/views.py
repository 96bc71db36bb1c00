"""Train-time augmented views: K deterministic random views per training image, each embedded as its own row.

:func:`train_views` is a pure function of ``(image, k, seed, image_id)``: view ``j`` of an image is drawn from an RNG
seeded with ``sha256(f"{seed}|{image_id}|{j}")``, so the same image always yields the same views (on any machine, in
any order, in any shard) and view ``j`` never depends on ``k``. Each view is a random resized crop (scale
:data:`SCALE`, aspect :data:`RATIO`), a horizontal flip with probability 0.5 and a mild colour jitter (brightness,
contrast, saturation +-:data:`JITTER`); it is returned as a PIL image that the encoder then preprocesses with its
ordinary test-time recipe (resize, centre crop, its ``views``). :func:`train_view` makes view ``j`` alone (what the
embedding cache uses: each view is embedded in its own pass, under its own id).

:func:`view_encoder_id` names the cache rows of view ``j``: ``<encoder_id>.trainview<j>.seed<seed>`` (only
characters the embedding cache keeps in directory names), so the embedding cache stores view rows under their own
encoder id, keyed by the ordinary image id, without any schema change. Validation / test rows never use these ids.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
from PIL import Image, ImageEnhance

SCALE = (0.5, 1.0)  # area fraction of the random resized crop (milder than ImageNet's 0.08: SKUs fill the frame)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.2
FLIP_P = 0.5
AUG_VERSION = 1  # bump when the recipe changes: it is part of view_encoder_id, so old cached view rows never mix
MAX_TRAIN_VIEWS = 64  # K above this is almost certainly a typo (each view is one more forward pass per train image)

__all__ = [
    "AUG_VERSION",
    "MAX_TRAIN_VIEWS",
    "check_train_view_config",
    "parse_view_encoder_id",
    "train_view",
    "train_view_decode_side",
    "train_views",
    "train_views_doc",
    "view_encoder_id",
    "view_rng",
]

_VIEW_ID = re.compile(r"^(?P<base>.+)\.trainview(?P<k>\d+)\.seed(?P<seed>-?\d+)\.aug(?P<aug>\d+)$")


def view_rng(seed: int, image_id: str, index: int) -> np.random.Generator:
    """The RNG of view ``index`` of ``image_id`` (independent of every other view, image and process)."""
    digest = hashlib.sha256(f"{int(seed)}|{image_id}|{int(index)}|aug{AUG_VERSION}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _random_resized_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    side = min(w, h)  # fallback: centre square
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def one_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One augmented view (crop keeps the original resolution; the encoder resizes)."""
    w, h = image.size
    img = image.crop(_random_resized_box(rng, w, h))
    if rng.uniform() < FLIP_P:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(1.0 - JITTER, 1.0 + JITTER)))
    return img


def train_views(image: Image.Image, k: int, seed: int, image_id: str) -> list[Image.Image]:
    """``k`` deterministic augmented views of an RGB ``image`` (view ``j`` depends only on seed, image_id, j)."""
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return [train_view(image, j, seed, image_id) for j in range(int(k))]


def train_view(image: Image.Image, index: int, seed: int, image_id: str) -> Image.Image:
    """View ``index`` of ``train_views(image, k, seed, image_id)`` for any ``k > index``, without the others."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"train views need a PIL image, got {type(image).__name__}")
    if image.mode != "RGB":
        raise ValueError(f"train views need an RGB image, got mode {image.mode!r}")
    if int(index) != index or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    if not image_id:
        raise ValueError("image_id must be a non-empty string (it seeds the views)")
    return one_view(image, view_rng(seed, image_id, int(index)))


def train_view_decode_side(min_decode_side: int) -> int:
    """Shorter side to decode an image at before cropping views: the smallest crop (area :data:`SCALE` ``[0]``)
    still covers the encoder's resize side, so a view is not upsampled from a reduced-size JPEG decode."""
    return int(math.ceil(int(min_decode_side) / math.sqrt(SCALE[0])))


def check_train_view_config(k: int, seed: int) -> tuple[int, int]:
    """``(k, seed)`` as ints; ValueError naming the limit when ``k`` is not in ``0..MAX_TRAIN_VIEWS``."""
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) <= MAX_TRAIN_VIEWS:
        raise ValueError(f"train_views must be an integer in [0, {MAX_TRAIN_VIEWS}], got {k!r}")
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"train_view_seed must be an integer, got {seed!r}")
    return int(k), int(seed)


def train_views_doc(encoder_id: str, k: int, seed: int) -> dict:
    """What the current-encoder document records about train-time views (``k`` >= 1): K, seed, recipe version and
    the cache encoder id of every view, so training reads exactly these rows and lineage names them."""
    k, seed = check_train_view_config(k, seed)
    return {
        "k": k,
        "seed": seed,
        "aug_version": AUG_VERSION,
        "encoder_ids": [view_encoder_id(encoder_id, j, seed) for j in range(k)],
    }


def view_encoder_id(encoder_id: str, k_index: int, seed: int) -> str:
    """Cache encoder id of train-time view ``k_index`` (seed ``seed``) of embeddings made by ``encoder_id``."""
    if int(k_index) != k_index or k_index < 0:
        raise ValueError(f"k_index must be a non-negative integer, got {k_index!r}")
    return f"{encoder_id}.trainview{int(k_index)}.seed{int(seed)}.aug{AUG_VERSION}"


def parse_view_encoder_id(view_id: str) -> tuple[str, int, int] | None:
    """``(encoder_id, k_index, seed)`` of a :func:`view_encoder_id`, or None for an ordinary encoder id."""
    m = _VIEW_ID.match(view_id)
    if m is None or int(m.group("aug")) != AUG_VERSION:
        return None
    return m.group("base"), int(m.group("k")), int(m.group("seed"))
