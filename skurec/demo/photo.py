"""Photo rendering: a packshot placed on a random cluttered scene with photometric changes, one seeded generator
per image, so the same seed gives byte-identical files whatever the order or subset rendered."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from skurec.demo.packshot import packshot
from skurec.demo.skus import SyntheticSku

MIN_IMAGE_SIZE = 64  # px: below this the label text is not legible


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
    prod, pos = _place_product(packshot(sku), rng, size)
    return _photometric(_composite(bg, prod, pos, rng), rng)


def render_sku_jpeg(sku: SyntheticSku, rng: np.random.Generator, size: int = 224) -> bytes:
    """:func:`render_sku_image` encoded as JPEG with a random quality (55-95) drawn from ``rng``."""
    img = render_sku_image(sku, rng, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(55, 96)))
    return buf.getvalue()
