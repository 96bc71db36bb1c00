"""Packshot rendering: one clean RGBA sprite per synthetic SKU (shape, label, motif, shading), cached."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from skurec.demo.skus import FAMILIES, Colour, FamilySpec, SyntheticSku

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
def packshot(sku: SyntheticSku) -> Image.Image:
    fam = FAMILIES[sku.family_index]
    sprite = Image.new("RGBA", SHAPE_SIZES[fam.shape], (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)
    label_box = _SHAPES[fam.shape](draw, fam)
    _draw_label(draw, fam, sku, label_box)
    return _apply_shading(sprite, fam.shape)


def render_product(sku: SyntheticSku) -> Image.Image:
    """The clean packshot of ``sku`` (RGBA, transparent background, ~320 px tall). Same SKU -> same pixels."""
    return packshot(sku).copy()
