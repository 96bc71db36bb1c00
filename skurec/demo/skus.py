"""The demo's synthetic SKUs: packaging families (shape, palette, motif, label layout) and their near-identical
variants. See :mod:`skurec.demo` for why and how they are rendered."""

from __future__ import annotations

import re
from dataclasses import dataclass

Colour = tuple[int, int, int]

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
