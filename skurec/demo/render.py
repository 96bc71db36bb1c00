"""Offline demo catalogue: rendered, packaging-like product photos of synthetic SKUs (Pillow + numpy only).

Why: ``skurec demo`` must run the whole pipeline offline with a real pretrained encoder, so it needs images that
behave like in-store product photos without downloading any data set.

The catalogue is organised in FAMILIES (``group_id``). All SKUs of a family share the package shape, palette and
label layout and differ only in small label content:

* ``mode="badge"`` families (juice, chips, coffee, shampoo, soup, yogurt): flavour word **and** the colour of the
  label motif (fruit circle / stripe / badge) differ;
* ``mode="text"`` families (cola, water, cereal, tea): ONLY the label text differs (the water family even shares
  the flavour word between two SKUs and differs only in the size text). These are the product's hard case.

Families differ clearly from each other: box, gable-top carton, bottle, can, bag and cup shapes, distinct palettes
and motifs. Each photo puts one product on a random cluttered, out-of-focus background with random scale, aspect,
small rotation, position jitter, drop shadow, occasional price-tag occlusion, lighting / contrast / colour-cast
changes, mild blur and noise, and random JPEG quality.

Determinism: every image is drawn from its own ``numpy`` generator keyed by ``(seed, sku_id, image index,
stream)``, so the same seed gives byte-identical files whatever the order or subset rendered.

Layout on disk and the safety rules (never overwrite foreign data, marker files, manifest-last batches) are
described in :func:`make_demo_catalogue` and :func:`make_labelled_batch`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Colour = tuple[int, int, int]

DEMO_MARKER = ".skurec_demo.json"
BATCH_MARKER = ".skurec_batch.json"
MANIFEST_NAME = "manifest.csv"
CATALOGUE_COLUMNS = ("image_uri", "sku_id", "sku_name", "group_id")
BATCH_COLUMNS = (*CATALOGUE_COLUMNS, "batch_id")
MARKER_VERSION = 1
MIN_IMAGE_SIZE = 64
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


# --------------------------------------------------------------------------------------------------------------
# Catalogue definition
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilySpec:
    """Everything the SKUs of one family share: shape, palette, motif and label layout."""

    slug: str
    category: str
    brand: str
    shape: str  # box | carton | bottle | can | bag | cup
    body: Colour
    band: Colour
    band_text: Colour
    text: Colour
    accent: Colour
    motif: str  # circle | wave | diagonal | drop | bean | leaf
    mode: str  # badge (flavour word + motif colour differ) | text (only label text differs)
    variants: tuple[tuple[str, str, Colour | None], ...]  # (flavour word, size, badge colour or None)
    cap: Colour = (235, 235, 235)
    panel: Colour | None = None  # plate behind the flavour word
    flavour_y: float = 0.76  # centre of the flavour word, as a fraction of the label height
    big_size: bool = False  # size text as large as the flavour word (size-only variants)
    size_y: float = 0.70  # centre of the big size text (only with big_size)
    motif_y: float = 0.45  # centre of the motif, as a fraction of the label area below the brand band
    motif_scale: float = 1.0
    body_alpha: int = 255


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec(
        "juice",
        "Juice",
        "SUNVALE",
        "carton",
        body=(246, 241, 226),
        band=(0, 122, 62),
        band_text=(255, 255, 255),
        text=(35, 35, 35),
        accent=(250, 140, 0),
        motif="circle",
        mode="badge",
        flavour_y=0.80,
        variants=(
            ("ORANGE", "1L", (250, 135, 0)),
            ("APPLE", "1L", (120, 190, 40)),
            ("CHERRY", "1L", (190, 20, 45)),
            ("MANGO", "1L", (255, 196, 0)),
            ("GRAPE", "1L", (110, 40, 125)),
            ("PEACH", "1L", (250, 165, 120)),
            ("LEMON", "1L", (240, 228, 50)),
            ("KIWI", "1L", (95, 140, 40)),
        ),
    ),
    FamilySpec(
        "cola",
        "Soda",
        "FIZZO",
        "can",
        body=(200, 22, 32),
        band=(255, 255, 255),
        band_text=(200, 22, 32),
        text=(255, 255, 255),
        accent=(255, 255, 255),
        motif="wave",
        mode="text",
        flavour_y=0.82,
        variants=(
            ("CLASSIC", "330ml", None),
            ("ZERO", "330ml", None),
            ("LIGHT", "330ml", None),
            ("CHERRY", "330ml", None),
            ("LIME", "330ml", None),
            ("VANILLA", "330ml", None),
            ("GINGER", "330ml", None),
            ("MANGO", "330ml", None),
        ),
    ),
    FamilySpec(
        "water",
        "Water",
        "CLEARSPRING",
        "bottle",
        body=(175, 212, 240),
        band=(20, 90, 180),
        band_text=(255, 255, 255),
        text=(255, 255, 255),
        accent=(120, 200, 255),
        motif="drop",
        mode="text",
        cap=(30, 80, 170),
        flavour_y=0.34,
        big_size=True,
        size_y=0.64,
        body_alpha=175,
        motif_y=0.9,
        motif_scale=0.45,
        variants=(
            ("STILL", "0.5L", None),
            ("STILL", "1.5L", None),
            ("SPARKLING", "0.5L", None),
            ("SPARKLING", "1.5L", None),
            ("LEMON", "0.5L", None),
            ("MINT", "0.5L", None),
            ("STILL", "5L", None),
            ("LIME", "1.5L", None),
        ),
    ),
    FamilySpec(
        "chips",
        "Chips",
        "CRUNCHOS",
        "bag",
        body=(250, 208, 25),
        band=(205, 30, 30),
        band_text=(255, 240, 200),
        text=(120, 20, 10),
        accent=(205, 30, 30),
        motif="diagonal",
        mode="badge",
        flavour_y=0.80,
        variants=(
            ("SALTED", "150g", (50, 110, 220)),
            ("PAPRIKA", "150g", (225, 70, 25)),
            ("CHEESE", "150g", (245, 140, 0)),
            ("ONION", "150g", (60, 160, 60)),
            ("CHILI", "150g", (140, 0, 0)),
            ("BBQ", "150g", (110, 60, 30)),
            ("VINEGAR", "150g", (120, 200, 220)),
            ("PEPPER", "150g", (60, 60, 60)),
        ),
    ),
    FamilySpec(
        "cereal",
        "Cereal",
        "OATSY",
        "box",
        body=(205, 155, 95),
        band=(95, 52, 22),
        band_text=(255, 236, 190),
        text=(95, 52, 22),
        accent=(250, 246, 235),
        motif="circle",
        mode="text",
        panel=(250, 244, 230),
        flavour_y=0.82,
        variants=(
            ("HONEY", "500g", None),
            ("CHOCO", "500g", None),
            ("BERRY", "500g", None),
            ("NUTS", "500g", None),
            ("PLAIN", "500g", None),
            ("COCONUT", "500g", None),
            ("APPLE", "500g", None),
            ("BANANA", "500g", None),
        ),
    ),
    FamilySpec(
        "coffee",
        "Coffee",
        "ROASTERY",
        "bag",
        body=(42, 32, 27),
        band=(200, 160, 80),
        band_text=(42, 32, 27),
        text=(232, 204, 145),
        accent=(200, 160, 80),
        motif="bean",
        mode="badge",
        flavour_y=0.80,
        variants=(
            ("ESPRESSO", "250g", (190, 40, 30)),
            ("DECAF", "250g", (40, 130, 70)),
            ("MILD", "250g", (235, 185, 70)),
            ("STRONG", "250g", (120, 20, 120)),
            ("CREMA", "250g", (240, 225, 190)),
            ("ARABICA", "250g", (60, 120, 200)),
            ("MOCHA", "250g", (150, 90, 50)),
            ("LUNGO", "250g", (90, 180, 190)),
        ),
    ),
    FamilySpec(
        "shampoo",
        "Shampoo",
        "SILKA",
        "bottle",
        body=(118, 58, 160),
        band=(246, 244, 250),
        band_text=(118, 58, 160),
        text=(118, 58, 160),
        accent=(230, 120, 190),
        motif="wave",
        mode="badge",
        cap=(250, 250, 250),
        flavour_y=0.82,
        variants=(
            ("DRY", "250ml", (230, 120, 40)),
            ("OILY", "250ml", (40, 170, 120)),
            ("VOLUME", "250ml", (230, 60, 140)),
            ("REPAIR", "250ml", (40, 90, 200)),
            ("COLOR", "250ml", (220, 180, 20)),
            ("CURLS", "250ml", (150, 40, 40)),
            ("MEN", "250ml", (40, 40, 40)),
            ("BABY", "250ml", (130, 200, 240)),
        ),
    ),
    FamilySpec(
        "soup",
        "Soup",
        "FARMA",
        "can",
        body=(30, 110, 52),
        band=(242, 232, 200),
        band_text=(30, 80, 40),
        text=(30, 60, 30),
        accent=(210, 40, 30),
        motif="circle",
        mode="badge",
        panel=(242, 232, 200),
        flavour_y=0.82,
        variants=(
            ("TOMATO", "400g", (212, 40, 30)),
            ("CORN", "400g", (242, 200, 40)),
            ("PEAS", "400g", (110, 185, 50)),
            ("BEANS", "400g", (150, 70, 40)),
            ("MUSHROOM", "400g", (175, 155, 135)),
            ("PUMPKIN", "400g", (245, 130, 30)),
            ("ONION", "400g", (235, 215, 160)),
            ("BEET", "400g", (130, 20, 70)),
        ),
    ),
    FamilySpec(
        "yogurt",
        "Yogurt",
        "DAIRO",
        "cup",
        body=(248, 248, 250),
        band=(30, 72, 160),
        band_text=(255, 255, 255),
        text=(30, 72, 160),
        accent=(230, 60, 90),
        motif="circle",
        mode="badge",
        flavour_y=0.82,
        variants=(
            ("STRAWBERRY", "150g", (225, 45, 70)),
            ("VANILLA", "150g", (245, 225, 150)),
            ("BLUEBERRY", "150g", (70, 60, 160)),
            ("PEACH", "150g", (250, 160, 100)),
            ("NATURAL", "150g", (220, 220, 220)),
            ("CHERRY", "150g", (150, 10, 40)),
            ("MANGO", "150g", (250, 190, 20)),
            ("LEMON", "150g", (240, 230, 60)),
        ),
    ),
    FamilySpec(
        "tea",
        "Tea",
        "LEAFY",
        "box",
        body=(20, 92, 72),
        band=(240, 220, 150),
        band_text=(20, 92, 72),
        text=(240, 220, 150),
        accent=(110, 180, 90),
        motif="leaf",
        mode="text",
        flavour_y=0.80,
        variants=(
            ("GREEN", "20 bags", None),
            ("BLACK", "20 bags", None),
            ("MINT", "20 bags", None),
            ("CHAI", "20 bags", None),
            ("EARL GREY", "20 bags", None),
            ("JASMINE", "20 bags", None),
            ("ROOIBOS", "20 bags", None),
            ("CHAMOMILE", "20 bags", None),
        ),
    ),
)
MAX_FAMILIES = len(FAMILIES)
MAX_SKUS_PER_FAMILY = min(len(f.variants) for f in FAMILIES)


@dataclass(frozen=True)
class SyntheticSku:
    """One synthetic SKU: identity (``sku_id``, ``sku_name``, ``group_id`` = family) and what its label shows."""

    sku_id: str
    sku_name: str
    group_id: str
    brand: str
    flavour: str
    size: str
    shape: str
    family_index: int
    variant_index: int
    badge: Colour | None


def slugify(text: str) -> str:
    """Lowercase slug: ``"Earl Grey"`` -> ``"earl-grey"``, ``"0.5L"`` -> ``"0-5l"``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def make_sku(family_index: int, variant_index: int) -> SyntheticSku:
    """The SKU for variant ``variant_index`` of family ``family_index`` (both 0-based indices into ``FAMILIES``)."""
    if not 0 <= family_index < MAX_FAMILIES:
        raise ValueError(f"family_index must be in [0, {MAX_FAMILIES}), got {family_index}")
    fam = FAMILIES[family_index]
    if not 0 <= variant_index < len(fam.variants):
        raise ValueError(
            f"variant_index for family {fam.slug!r} must be in [0, {len(fam.variants)}), got {variant_index}"
        )
    word, size, badge = fam.variants[variant_index]
    return SyntheticSku(
        sku_id=f"{fam.slug}-{slugify(word)}-{slugify(size)}",
        sku_name=f"{fam.brand.title()} {word.title()} {fam.category} {size}",
        group_id=fam.slug,
        brand=fam.brand,
        flavour=word,
        size=size,
        shape=fam.shape,
        family_index=family_index,
        variant_index=variant_index,
        badge=badge,
    )


def all_skus() -> list[SyntheticSku]:
    """Every SKU the generator can render (demo catalogue + the ones held back for labelling batches)."""
    return [make_sku(f, v) for f in range(MAX_FAMILIES) for v in range(len(FAMILIES[f].variants))]


def sku_by_id(sku_id: str) -> SyntheticSku:
    """Look a synthetic SKU up by id; unknown ids raise ``KeyError`` naming a few valid ones."""
    for sku in all_skus():
        if sku.sku_id == sku_id:
            return sku
    raise KeyError(f"unknown synthetic sku_id {sku_id!r}; examples of valid ids: {[s.sku_id for s in all_skus()[:4]]}")


def _check_shape_args(n_families: int, skus_per_family: int) -> None:
    if not 1 <= n_families <= MAX_FAMILIES:
        raise ValueError(
            f"n_families must be between 1 and {MAX_FAMILIES} (the number of family templates), got {n_families}"
        )
    if not 1 <= skus_per_family <= MAX_SKUS_PER_FAMILY:
        raise ValueError(f"skus_per_family must be between 1 and {MAX_SKUS_PER_FAMILY}, got {skus_per_family}")


def demo_skus(n_families: int = 8, skus_per_family: int = 4, seed: int = 0) -> list[SyntheticSku]:
    """The SKUs of the demo catalogue: the first ``skus_per_family`` variants of the first ``n_families`` families.

    ``seed`` is accepted for API symmetry; the SKU list itself is fixed so that ids are stable across seeds
    (the seed changes the photos, not the products). Variants beyond ``skus_per_family`` are held back as the
    "new SKUs" of :func:`make_labelled_batch`.
    """
    del seed  # the product list is intentionally seed independent
    _check_shape_args(n_families, skus_per_family)
    return [make_sku(f, v) for f in range(n_families) for v in range(skus_per_family)]


# --------------------------------------------------------------------------------------------------------------
# Packshot rendering (one clean RGBA sprite per SKU, cached)
# --------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    if not features.check("freetype2"):
        raise RuntimeError(
            "Pillow was built without FreeType, so scalable text cannot be drawn; install the PyPI Pillow wheel (>= 10.1)"
        )
    return ImageFont.load_default(size=size)


def _draw_text(
    draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, max_w: float, max_h: float, fill: Colour
) -> None:
    """Draw bold-ish ``text`` centred at ``centre``, as large as fits in ``max_w`` x ``max_h``."""
    size = max(6, int(max_h * 1.25))
    for _ in range(3):
        stroke = max(1, size // 16)
        left, top, right, bottom = _font(size).getbbox(text, stroke_width=stroke)
        scale = min(max_w / max(1, right - left), max_h / max(1, bottom - top))
        if scale >= 1.0:
            break
        size = max(6, int(size * scale))
    stroke = max(1, size // 16)
    draw.text(centre, text, font=_font(size), fill=fill, anchor="mm", stroke_width=stroke, stroke_fill=fill)


def _shade(c: Colour, k: float) -> Colour:
    return tuple(int(max(0, min(255, v * k))) for v in c)  # type: ignore[return-value]


# Packshot canvas (width, height) per shape, at ~320 px tall: the label text is drawn at this resolution.
SHAPE_SIZES: dict[str, tuple[int, int]] = {
    "box": (230, 320),
    "carton": (190, 320),
    "bottle": (150, 320),
    "can": (170, 280),
    "bag": (240, 300),
    "cup": (210, 210),
}


def _draw_box(draw: ImageDraw.ImageDraw, fam: FamilySpec) -> tuple[int, int, int, int]:
    (w, h), d = SHAPE_SIZES["box"], 16
    draw.rectangle([0, d, w - d - 1, h - 1], fill=fam.body)
    draw.polygon([(0, d), (d, 0), (w - 1, 0), (w - d - 1, d)], fill=_shade(fam.body, 1.18))
    draw.polygon([(w - d - 1, d), (w - 1, 0), (w - 1, h - d - 1), (w - d - 1, h - 1)], fill=_shade(fam.body, 0.68))
    return (8, d + 8, w - d - 9, h - 9)


def _draw_carton(draw: ImageDraw.ImageDraw, fam: FamilySpec) -> tuple[int, int, int, int]:
    (w, h), g = SHAPE_SIZES["carton"], 56
    draw.rectangle([0, g, w - 1, h - 1], fill=fam.body)
    draw.polygon([(0, g), (w - 1, g), (w - 12, 18), (11, 18)], fill=_shade(fam.body, 0.86))
    draw.rectangle([9, 0, w - 10, 18], fill=_shade(fam.body, 1.08), outline=_shade(fam.body, 0.8))
    draw.ellipse([w * 0.62, 26, w * 0.62 + 26, 46], fill=fam.band)  # screw cap on the gable
    return (6, g + 6, w - 7, h - 8)


def _draw_bottle(draw: ImageDraw.ImageDraw, fam: FamilySpec) -> tuple[int, int, int, int]:
    w, h = SHAPE_SIZES["bottle"]
    body = (*fam.body, fam.body_alpha)
    draw.rectangle([w * 0.36, 28, w * 0.64, 64], fill=body)
    draw.polygon([(w * 0.36, 62), (w * 0.64, 62), (w - 1, 112), (0, 112)], fill=body)
    draw.rounded_rectangle([0, 104, w - 1, h - 1], radius=16, fill=body)
    draw.rectangle([w * 0.31, 0, w * 0.69, 30], fill=fam.cap)
    for x in range(int(w * 0.34), int(w * 0.68), 6):
        draw.line([(x, 2), (x, 28)], fill=_shade(fam.cap, 0.8))
    return (0, 128, w - 1, 290)


def _draw_can(draw: ImageDraw.ImageDraw, fam: FamilySpec) -> tuple[int, int, int, int]:
    (w, h), e = SHAPE_SIZES["can"], 14
    metal = (196, 198, 204)
    draw.ellipse([0, h - 1 - 2 * e, w - 1, h - 1], fill=_shade(metal, 0.8))
    draw.rectangle([0, e, w - 1, h - 1 - e - 4], fill=fam.body)
    draw.rectangle([0, h - 1 - e - 6, w - 1, h - 1 - e], fill=metal)
    draw.ellipse([0, 0, w - 1, 2 * e], fill=metal)
    draw.ellipse([8, 3, w - 9, 2 * e - 3], fill=_shade(metal, 0.85))
    draw.rounded_rectangle([w * 0.42, 6, w * 0.62, 14], radius=3, fill=_shade(metal, 0.65))  # ring pull
    return (4, e + 14, w - 5, h - e - 14)


def _draw_bag(draw: ImageDraw.ImageDraw, fam: FamilySpec) -> tuple[int, int, int, int]:
    (w, h), crimp, bulge = SHAPE_SIZES["bag"], 20, 10
    steps = 24
    left = [
        (bulge - bulge * math.sin(math.pi * t / steps), crimp + (h - 2 * crimp) * t / steps) for t in range(steps + 1)
    ]
    right = [(w - 1 - x, y) for x, y in reversed(left)]
    top = [(bulge + (w - 2 * bulge) * i / 16, 0 if i % 2 == 0 else 6) for i in range(17)]
    bottom = [(x, h - 1 - y) for x, y in reversed(top)]
    draw.polygon(
        [*top, (w - 1 - bulge, crimp), *right, (w - 1 - bulge, h - 1 - crimp), *bottom, (bulge, h - 1 - crimp), *left],
        fill=fam.body,
    )
    for y0 in (0, h - crimp):
        for x in range(bulge + 4, w - bulge - 3, 7):
            draw.line([(x, y0 + 4), (x, y0 + crimp - 4)], fill=_shade(fam.body, 0.75))
    return (26, crimp + 14, w - 27, h - crimp - 14)


def _draw_cup(draw: ImageDraw.ImageDraw, fam: FamilySpec) -> tuple[int, int, int, int]:
    (w, h), lip = SHAPE_SIZES["cup"], 14
    draw.polygon([(0, lip), (w - 1, lip), (w * 0.87, h - 1), (w * 0.13, h - 1)], fill=fam.body)
    draw.ellipse([w * 0.13, h - 10, w * 0.87, h - 1], fill=_shade(fam.body, 0.8))
    draw.ellipse([0, 0, w - 1, 2 * lip], fill=(214, 216, 222))
    draw.ellipse([6, 3, w - 7, 2 * lip - 3], fill=(232, 232, 238))
    return (int(w * 0.16), 2 * lip + 6, int(w * 0.84), h - 14)


_SHAPES = {
    "box": _draw_box,
    "carton": _draw_carton,
    "bottle": _draw_bottle,
    "can": _draw_can,
    "bag": _draw_bag,
    "cup": _draw_cup,
}


def _draw_motif(
    draw: ImageDraw.ImageDraw, fam: FamilySpec, box: tuple[float, float, float, float], colour: Colour
) -> None:
    """The family's graphic (shared layout); its colour is the SKU badge colour in ``badge`` families."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = x0 + w / 2, y0 + h * fam.motif_y
    r = min(w, h) * 0.25 * fam.motif_scale
    if fam.motif == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour, outline=_shade(colour, 0.6), width=3)
        draw.ellipse([cx - r * 0.55, cy - r * 0.6, cx - r * 0.1, cy - r * 0.2], fill=_shade(colour, 1.35))
        draw.ellipse([cx + r * 0.1, cy - r * 1.35, cx + r * 0.75, cy - r * 0.85], fill=(70, 150, 50))
    elif fam.motif == "wave":
        pts = [(x0 + w * i / 20, cy - r * 0.2 + r * 0.4 * math.sin(2 * math.pi * i / 20)) for i in range(21)]
        draw.polygon([*pts, (x1, cy + r * 0.7), (x0, cy + r * 0.7)], fill=colour)
        draw.line(pts, fill=_shade(colour, 0.7), width=4)
    elif fam.motif == "diagonal":
        draw.polygon([(x0, cy + r * 0.2), (x1, cy - r * 1.0), (x1, cy - r * 0.1), (x0, cy + r * 1.1)], fill=colour)
        draw.ellipse(
            [cx - r * 0.7, cy - r * 0.9, cx + r * 0.7, cy + r * 0.5],
            fill=_shade(fam.body, 0.85),
            outline=colour,
            width=4,
        )
    elif fam.motif == "drop":
        draw.ellipse([cx - r * 0.7, cy - r * 0.2, cx + r * 0.7, cy + r * 1.2], fill=colour)
        draw.polygon([(cx - r * 0.62, cy + r * 0.25), (cx, cy - r * 1.0), (cx + r * 0.62, cy + r * 0.25)], fill=colour)
    elif fam.motif == "bean":
        for dx, dy in ((-0.55, -0.1), (0.55, 0.15)):
            bx, by = cx + r * dx, cy + r * dy
            draw.ellipse([bx - r * 0.45, by - r * 0.65, bx + r * 0.45, by + r * 0.65], fill=(120, 75, 40))
            draw.line([(bx, by - r * 0.55), (bx, by + r * 0.55)], fill=(60, 35, 20), width=3)
        draw.rounded_rectangle([x1 - w * 0.3, y0 + h * 0.26, x1 - w * 0.04, y0 + h * 0.38], radius=6, fill=colour)
    elif fam.motif == "leaf":
        draw.ellipse([cx - r * 1.1, cy - r * 0.45, cx + r * 0.2, cy + r * 0.45], fill=colour)
        draw.ellipse([cx - r * 0.1, cy - r * 0.8, cx + r * 1.0, cy + r * 0.1], fill=_shade(colour, 0.8))
        draw.line([(cx - r * 1.1, cy), (cx + r * 0.2, cy)], fill=_shade(colour, 0.6), width=3)
    else:  # pragma: no cover - FAMILIES is a closed table
        raise ValueError(f"unknown motif {fam.motif!r}")


def _draw_label(draw: ImageDraw.ImageDraw, fam: FamilySpec, sku: SyntheticSku, box: tuple[int, int, int, int]) -> None:
    """Brand band, motif, flavour word and size text inside the label area ``box`` (same layout for a family)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    clear_bottle = fam.shape == "bottle" and fam.body_alpha < 255
    if fam.shape == "bottle":  # a wrap-around label sleeve in the band colour
        draw.rectangle(list(box), fill=fam.band)
    band_h = h * 0.2
    band_fill = _shade(fam.band, 0.7) if clear_bottle else fam.band
    draw.rectangle([x0, y0, x1, y0 + band_h], fill=band_fill)
    _draw_text(draw, (x0 + w / 2, y0 + band_h / 2), fam.brand, w * 0.86, band_h * 0.62, fam.band_text)
    _draw_motif(draw, fam, (x0, y0 + band_h, x1, y1), sku.badge or fam.accent)
    fy = y0 + h * fam.flavour_y
    fh = h * (0.17 if not fam.big_size else 0.14)
    if fam.panel is not None and fam.shape != "bottle":
        draw.rounded_rectangle([x0 + w * 0.03, fy - fh * 0.75, x1 - w * 0.03, fy + fh * 0.75], radius=8, fill=fam.panel)
    _draw_text(draw, (x0 + w / 2, fy), sku.flavour, w * 0.9, fh, fam.text)
    if fam.big_size:
        _draw_text(draw, (x0 + w / 2, y0 + h * fam.size_y), sku.size, w * 0.9, h * 0.24, fam.text)
    else:
        sh = h * 0.065
        _draw_text(
            draw, (x1 - w * 0.2, y1 - sh * 0.9), sku.size, w * 0.34, sh, fam.text if fam.panel is None else fam.band
        )


def _apply_shading(sprite: Image.Image, shape: str) -> Image.Image:
    """Fake 3-D lighting baked into the packshot: cylinder / pillow / flat shading plus a specular highlight."""
    arr = np.asarray(sprite, dtype=np.float32)
    h, w = arr.shape[:2]
    u = (np.arange(w, dtype=np.float32) + 0.5) / w
    v = (np.arange(h, dtype=np.float32) + 0.5) / h
    if shape in ("can", "bottle", "cup"):
        mult = (0.72 + 0.33 * np.sin(np.pi * u) ** 0.6)[None, :]
        spec = (0.45 * np.exp(-(((u - 0.3) / 0.05) ** 2)))[None, :] * np.ones((h, 1), np.float32)
    elif shape == "bag":
        mult = 0.78 + 0.3 * (np.sin(np.pi * u)[None, :] ** 0.7) * (np.sin(np.pi * v)[:, None] ** 0.4)
        spec = 0.25 * np.exp(-(((u[None, :] - 0.35) / 0.08) ** 2) - (((v[:, None] - 0.3) / 0.2) ** 2))
    else:
        mult = (1.06 - 0.12 * v)[:, None] * np.ones((1, w), np.float32)
        spec = np.zeros((h, w), np.float32)
    rgb = arr[..., :3] * mult[..., None]
    rgb = rgb + (255.0 - rgb) * spec[..., None]
    out = np.concatenate([np.clip(rgb, 0, 255), arr[..., 3:]], axis=-1).astype(np.uint8)
    return Image.fromarray(out, "RGBA")


@lru_cache(maxsize=128)
def _packshot(sku: SyntheticSku) -> Image.Image:
    fam = FAMILIES[sku.family_index]
    sprite = Image.new("RGBA", SHAPE_SIZES[fam.shape], (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)
    label_box = _SHAPES[fam.shape](draw, fam)
    _draw_label(draw, fam, sku, label_box)
    return _apply_shading(sprite, fam.shape)


def render_product(sku: SyntheticSku) -> Image.Image:
    """The clean packshot of ``sku`` (RGBA, transparent background, ~320 px tall). Same SKU -> same pixels."""
    return _packshot(sku).copy()


# --------------------------------------------------------------------------------------------------------------
# Photo rendering (product on a random scene)
# --------------------------------------------------------------------------------------------------------------


def image_rng(seed: int, sku_id: str, index: int, stream: str = "catalogue") -> np.random.Generator:
    """The generator for one photo: independent of render order, different per stream (catalogue / batch)."""
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng([seed, zlib.crc32(sku_id.encode()), index, zlib.crc32(stream.encode())])


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """Out-of-focus shelf clutter: gradient wall, shelf edges and blobs/blocks of other products."""
    c0 = rng.uniform(35, 225, 3)
    c1 = np.clip(c0 + rng.normal(0, 45, 3), 0, 255)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    grad = (c0[None, None, :] * (1 - t) + c1[None, None, :] * t) * np.ones((1, size, 1), np.float32)
    img = Image.fromarray(grad.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    n = int(rng.integers(4, 11))
    kinds = rng.integers(0, 3, n)
    geo = rng.uniform(0, 1, (n, 4))
    grey = rng.uniform(60, 200, (n, 1))
    cols = (0.55 * rng.integers(0, 256, (n, 3)) + 0.45 * grey).astype(int)  # muted: shelves, not confetti
    for kind, (a, b, c, d), col in zip(kinds, geo, cols):
        fill = tuple(int(x) for x in col)
        if kind == 0:  # other products' blocks
            x, y = a * size, b * size
            draw.rectangle([x, y, x + (0.1 + 0.35 * c) * size, y + (0.2 + 0.6 * d) * size], fill=fill)
        elif kind == 1:
            x, y, r = a * size, b * size, (0.05 + 0.2 * c) * size
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:  # shelf edge
            y, hh = b * size, (0.03 + 0.06 * c) * size
            g = int(120 + 120 * d)
            draw.rectangle([0, y, size, y + hh], fill=(g, g, g))
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 4.5)) * size / 224))


def _place_product(sprite: Image.Image, rng: np.random.Generator, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """Scale (random size and aspect), rotate slightly and choose a jittered position for the packshot."""
    frac = rng.uniform(0.62, 0.92)
    aspect = rng.uniform(0.9, 1.1)
    angle = rng.uniform(-8.0, 8.0)
    jx, jy = rng.uniform(-0.12, 0.12, 2)
    sw, sh = sprite.size
    th = frac * size
    tw = th * sw / sh * aspect
    if tw > 0.92 * size:
        th, tw = th * 0.92 * size / tw, 0.92 * size
    tw, th = max(8, int(round(tw))), max(8, int(round(th)))
    prod = sprite.convert("RGBa").resize((tw, th), Image.Resampling.LANCZOS)
    prod = prod.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True).convert("RGBA")
    pw, ph = prod.size
    x = int(round(size / 2 + jx * size - pw / 2))
    y = int(round(size / 2 + jy * size - ph / 2))
    x = min(max(x, -int(0.05 * pw)), size - int(0.95 * pw))
    y = min(max(y, -int(0.05 * ph)), size - int(0.95 * ph))
    return prod, (x, y)


def _composite(bg: Image.Image, prod: Image.Image, pos: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Drop shadow, product, and (sometimes) a price tag overlapping the product's bottom edge."""
    size = bg.size[0]
    sdx, sdy = rng.uniform(-0.03, 0.03, 2) * size
    s_blur, s_opacity = rng.uniform(2.0, 6.0) * size / 224, rng.uniform(0.25, 0.55)
    tag_p, tag_x, tag_w, tag_col = rng.uniform(0, 1, 4)
    alpha = prod.getchannel("A")
    shadow = Image.new("L", bg.size, 0)
    shadow.paste(alpha, (int(pos[0] + sdx), int(pos[1] + sdy)))
    shadow = shadow.filter(ImageFilter.GaussianBlur(s_blur)).point(lambda a: int(a * s_opacity))
    out = Image.composite(Image.new("RGB", bg.size, (0, 0, 0)), bg, shadow)
    out.paste(prod, pos, prod)
    if tag_p < 0.2:  # price tag on the shelf edge, covers at most the bottom ~8 % of the product
        pw, ph = prod.size
        tw, th = (0.25 + 0.2 * tag_w) * pw, 0.09 * size
        tx = pos[0] + tag_x * (pw - tw)
        ty = pos[1] + ph * 0.94
        draw = ImageDraw.Draw(out)
        draw.rectangle(
            [tx, ty - th * 0.35, tx + tw, ty + th * 0.65], fill=(255, 245, 120) if tag_col < 0.5 else (250, 250, 250)
        )
        draw.line([(tx + tw * 0.1, ty), (tx + tw * 0.7, ty)], fill=(40, 40, 40), width=2)
        draw.line([(tx + tw * 0.1, ty + th * 0.3), (tx + tw * 0.45, ty + th * 0.3)], fill=(200, 30, 30), width=2)
    return out


def _photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighting (brightness, contrast, gamma, colour cast, illumination gradient), blur and sensor noise."""
    size = img.size[0]
    brightness, contrast, gamma = rng.uniform(0.7, 1.25), rng.uniform(0.75, 1.2), rng.uniform(0.85, 1.2)
    cast = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    theta, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.25)
    blur_p, blur_r, noise_sigma = rng.uniform(0, 1), rng.uniform(0.3, 1.2), rng.uniform(0.0, 6.0)
    noise_seed = int(rng.integers(0, 2**31))
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = a**gamma
    mean = float(a.mean())
    a = (a - mean) * contrast + mean
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    ramp = 1.0 + strength * (np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None])
    a = a * (brightness * ramp)[..., None] * cast[None, None, :]
    img = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if blur_p < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(blur_r * size / 224))
    noise = np.random.default_rng(noise_seed).normal(0.0, noise_sigma, (size, size, 3)).astype(np.float32)
    out = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255) + 0.5
    return Image.fromarray(out.astype(np.uint8), "RGB")


def render_sku_image(sku: SyntheticSku, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """One in-store-like RGB photo (``size`` x ``size``) of ``sku``; all randomness comes from ``rng``.

    SKUs with packshots of the same size consume ``rng`` identically, so rendering two SKUs of one family with
    equally seeded generators gives the same scene, pose and lighting: only the label content differs.
    """
    if not isinstance(sku, SyntheticSku):
        raise TypeError(f"sku must be a SyntheticSku, got {type(sku).__name__}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size must be at least {MIN_IMAGE_SIZE} px so the label stays legible, got {size}")
    bg = _background(rng, size)
    prod, pos = _place_product(_packshot(sku), rng, size)
    return _photometric(_composite(bg, prod, pos, rng), rng)


def render_sku_jpeg(sku: SyntheticSku, rng: np.random.Generator, size: int = 224) -> bytes:
    """:func:`render_sku_image` encoded as JPEG with a random quality (55-95) drawn from ``rng``."""
    img = render_sku_image(sku, rng, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(55, 96)))
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Writing catalogues and labelled batches
# --------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden temporary file + rename so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _manifest_bytes(columns: Sequence[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _prepare_output(out_dir: Path, marker_name: str, kind: str, params: dict) -> bool:
    """Create ``out_dir`` or check it may be (re)used. Returns True when a complete identical output exists.

    Never writes into a non-empty folder without our marker, and never mixes outputs made with other parameters.
    """
    marker_path = out_dir / marker_name
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output location")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = _read_marker(marker_path)
        if marker is None or marker.get("kind") != kind:
            raise FileExistsError(
                f"refusing to write the {kind} into {out_dir}: the folder is not empty and was not created by "
                f"skurec.demo (no {marker_name}); choose an empty or new folder"
            )
        if marker.get("params") != params:
            raise FileExistsError(
                f"{out_dir} holds a {kind} made with different parameters {marker.get('params')}; requested {params}. "
                "Delete that folder or choose another one"
            )
        if marker.get("complete"):
            return True
        log.info("resuming the incomplete %s in %s", kind, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        marker_path, json.dumps({"kind": kind, "version": MARKER_VERSION, "params": params, "complete": False}).encode()
    )
    return False


def _finish_marker(out_dir: Path, marker_name: str, kind: str, params: dict) -> None:
    _atomic_write(
        out_dir / marker_name,
        json.dumps({"kind": kind, "version": MARKER_VERSION, "params": params, "complete": True}).encode(),
    )


def _render_files(
    jobs: list[tuple[SyntheticSku, int, Path]], seed: int, stream: str, image_size: int, desc: str
) -> None:
    for sku, i, path in tqdm(jobs, desc=desc, unit="img", disable=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_sku_jpeg(sku, image_rng(seed, sku.sku_id, i, stream), image_size))


def _image_name(sku_id: str, i: int) -> str:
    return f"{sku_id}_{i:03d}.jpg"


def make_demo_catalogue(
    out_dir: str | os.PathLike,
    *,
    n_families: int = 8,
    skus_per_family: int = 4,
    images_per_sku: int = 60,
    seed: int = 0,
    layout: str = "manifest",
    image_size: int = 224,
) -> Path:
    """Render the demo catalogue and return what to import: the folder (``"folder"``) or the manifest path.

    * ``layout="folder"``: ``out_dir/<sku_id>/<sku_id>_<i>.jpg``; returns ``out_dir`` (no names / families).
    * ``layout="manifest"`` (default, carries ``sku_name`` and ``group_id`` = family): images under
      ``out_dir/images/<sku_id>/`` and ``out_dir/manifest.csv`` with columns ``image_uri`` (relative to the
      manifest), ``sku_id, sku_name, group_id``; returns the manifest path.

    ``out_dir`` must be missing, empty, or a demo catalogue made earlier with the same parameters (recognised by
    the hidden ``.skurec_demo.json`` marker, which catalogue import skips); a complete one is reused as is, an
    interrupted one is re-rendered. Anything else raises ``FileExistsError``: user data is never overwritten.
    """
    if layout not in ("folder", "manifest"):
        raise ValueError(f"layout must be 'folder' or 'manifest', got {layout!r}")
    if images_per_sku < 1:
        raise ValueError(f"images_per_sku must be >= 1, got {images_per_sku}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    skus = demo_skus(n_families, skus_per_family, seed)
    out = Path(out_dir)
    params = {
        "n_families": n_families,
        "skus_per_family": skus_per_family,
        "images_per_sku": images_per_sku,
        "seed": seed,
        "layout": layout,
        "image_size": image_size,
    }
    result = out if layout == "folder" else out / MANIFEST_NAME
    if _prepare_output(out, DEMO_MARKER, "demo catalogue", params):
        log.info("reusing the demo catalogue in %s", out)
        return result
    image_root = out if layout == "folder" else out / "images"
    jobs = [(s, i, image_root / s.sku_id / _image_name(s.sku_id, i)) for s in skus for i in range(images_per_sku)]
    _render_files(jobs, seed, "catalogue", image_size, "rendering demo catalogue")
    if layout == "manifest":
        rows = [
            {
                "image_uri": p.relative_to(out).as_posix(),
                "sku_id": s.sku_id,
                "sku_name": s.sku_name,
                "group_id": s.group_id,
            }
            for s, _, p in jobs
        ]
        _atomic_write(result, _manifest_bytes(CATALOGUE_COLUMNS, rows))
    _finish_marker(out, DEMO_MARKER, "demo catalogue", params)
    log.info("demo catalogue: %d SKUs x %d images in %s", len(skus), images_per_sku, out)
    return result


def _skus_in_batches(out_dir: Path, exclude_batch: str) -> list[str]:
    """SKU ids introduced by the complete sibling batches ``out_dir/<batch>/manifest.csv`` (in name order)."""
    seen: list[str] = []
    if not out_dir.is_dir():
        return seen
    for manifest in sorted(out_dir.glob(f"*/{MANIFEST_NAME}")):
        if manifest.parent.name == exclude_batch:
            continue
        with manifest.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("sku_id") and row["sku_id"] not in seen:
                    seen.append(row["sku_id"])
    return seen


def _new_sku_pool(n_families: int, skus_per_family: int, new_family: bool, seed: int) -> list[SyntheticSku]:
    """Candidate unseen SKUs, in the order batches introduce them."""
    if new_family:
        return [make_sku(f, v) for f in range(n_families, MAX_FAMILIES) for v in range(len(FAMILIES[f].variants))]
    order = np.random.default_rng([seed, 7]).permutation(n_families)
    return [make_sku(int(f), v) for v in range(skus_per_family, MAX_SKUS_PER_FAMILY) for f in order]


def _choose_batch_skus(
    out: Path,
    batch_id: str,
    new_skus: int,
    extra_images_for: list[str],
    n_families: int,
    skus_per_family: int,
    new_family: bool,
    seed: int,
) -> tuple[list[SyntheticSku], list[str]]:
    """The batch's new SKUs (unseen in the catalogue and earlier batches) and the validated existing SKU ids."""
    demo_ids = [s.sku_id for s in demo_skus(n_families, skus_per_family)]
    existing = demo_ids + [s for s in _skus_in_batches(out, batch_id) if s not in demo_ids]
    unknown = [s for s in extra_images_for if s not in existing]
    if unknown:
        raise ValueError(
            f"extra_images_for names SKUs that are neither in the demo catalogue (n_families={n_families}, "
            f"skus_per_family={skus_per_family}) nor in earlier batches: {unknown}"
        )
    pool = [s for s in _new_sku_pool(n_families, skus_per_family, new_family, seed) if s.sku_id not in existing]
    if new_skus > len(pool):
        raise ValueError(
            f"only {len(pool)} unseen synthetic SKUs are left (new_family={new_family}); asked for {new_skus}"
        )
    return pool[:new_skus], list(dict.fromkeys(extra_images_for))


def make_labelled_batch(
    out_dir: str | os.PathLike,
    batch_id: str,
    *,
    new_skus: int = 1,
    images_per_new_sku: int = 60,
    extra_images_for: Sequence[str] = (),
    images_per_existing: int = 10,
    seed: int = 0,
    n_families: int = 8,
    skus_per_family: int = 4,
    new_family: bool = False,
    image_size: int = 224,
) -> Path:
    """Write one labelling-loop batch ``out_dir/<batch_id>/`` (images + ``manifest.csv``); returns the manifest path.

    New SKUs are, by default, NEW MEMBERS OF EXISTING FAMILIES: a flavour that the demo catalogue made with
    ``n_families`` / ``skus_per_family`` held back (the realistic hard case: a new flavour of a known product
    line). With ``new_family=True`` they are instead members of a family template the catalogue does not use
    (a new product line; needs ``n_families < MAX_FAMILIES``). SKUs already introduced by complete sibling batches
    in ``out_dir`` are skipped, so successive batches bring different new SKUs.

    ``extra_images_for`` lists existing SKU ids (demo catalogue or earlier batches) that get
    ``images_per_existing`` fresh photos each; they are rendered from a batch-specific random stream, so they never
    repeat catalogue images. Manifest columns: ``image_uri`` (relative), ``sku_id, sku_name, group_id, batch_id``.

    Images are written first and the manifest last (atomic rename): a batch is complete iff its manifest exists.
    The same call again returns the existing manifest; a non-empty batch folder that this function did not
    create, or that was made with other parameters, raises ``FileExistsError``.
    """
    if not isinstance(batch_id, str) or not _SLUG_RE.match(batch_id):
        raise ValueError(
            f"batch_id must be a lowercase slug like 'batch-0001' (a-z, 0-9, '.', '_', '-'), got {batch_id!r}"
        )
    if new_skus < 0 or images_per_new_sku < 1 or images_per_existing < 1:
        raise ValueError(
            f"need new_skus >= 0 and images_per_new_sku, images_per_existing >= 1; got {new_skus}, "
            f"{images_per_new_sku}, {images_per_existing}"
        )
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if isinstance(extra_images_for, str):
        raise TypeError("extra_images_for must be a list of sku_ids, not a single string")
    if new_family and n_families >= MAX_FAMILIES:
        raise ValueError(
            f"new_family=True needs a catalogue with fewer than {MAX_FAMILIES} families, got n_families={n_families}"
        )
    out = Path(out_dir)
    batch_dir = out / batch_id
    manifest = batch_dir / MANIFEST_NAME
    params = {
        "new_skus": new_skus,
        "images_per_new_sku": images_per_new_sku,
        "extra_images_for": list(extra_images_for),
        "images_per_existing": images_per_existing,
        "seed": seed,
        "n_families": n_families,
        "skus_per_family": skus_per_family,
        "new_family": new_family,
        "image_size": image_size,
    }
    marker = _read_marker(batch_dir / BATCH_MARKER)
    if manifest.exists() and marker is not None and marker.get("params") == params and marker.get("complete"):
        log.info("reusing the complete batch %s", batch_dir)
        return manifest
    new, extra = _choose_batch_skus(
        out, batch_id, new_skus, list(extra_images_for), n_families, skus_per_family, new_family, seed
    )
    _prepare_output(batch_dir, BATCH_MARKER, "labelled batch", params)
    jobs = [
        (s, i, batch_dir / "images" / s.sku_id / _image_name(s.sku_id, i))
        for s in new
        for i in range(images_per_new_sku)
    ]
    jobs += [
        (sku_by_id(sid), i, batch_dir / "images" / sid / _image_name(sid, i))
        for sid in extra
        for i in range(images_per_existing)
    ]
    _render_files(jobs, seed, f"batch:{batch_id}", image_size, f"rendering batch {batch_id}")
    rows = [
        {
            "image_uri": p.relative_to(batch_dir).as_posix(),
            "sku_id": s.sku_id,
            "sku_name": s.sku_name,
            "group_id": s.group_id,
            "batch_id": batch_id,
        }
        for s, _, p in jobs
    ]
    _atomic_write(manifest, _manifest_bytes(BATCH_COLUMNS, rows))  # last: its presence marks the batch complete
    _finish_marker(batch_dir, BATCH_MARKER, "labelled batch", params)
    log.info(
        "batch %s: new SKUs %s, %d extra images", batch_id, [x.sku_id for x in new], len(extra) * images_per_existing
    )
    return manifest
