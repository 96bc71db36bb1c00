"""Generator of the bad-input corpus: every kind of broken or awkward catalogue input, written into a temp folder.

Nothing binary is committed: each file is produced here from a few bytes or a generated image. Every
:class:`Case` says what the pipeline must do with its manifest row: ``"accepted"`` (loaded, colour mode converted,
embedded) or the quarantine reason code it must get. ``tests/pipeline/test_bad_inputs.py`` runs the corpus through the real
Dagster ingest + embedding assets and checks each case.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ACCEPTED = "accepted"
UNKNOWN_COLUMN = "comment"


@dataclass(frozen=True)
class Case:
    """One manifest row of the corpus and the outcome it must have."""

    name: str
    uri: str  # the manifest's image_uri cell
    sku_id: str
    expect: str  # ACCEPTED or a quarantine reason code
    split: str = ""
    raw_line: bytes | None = None  # a hand-written manifest line (non-UTF-8 bytes); overrides the fields above

    @property
    def accepted(self) -> bool:
        return self.expect == ACCEPTED


# ---------------------------------------------------------------------------------------------------- image bytes
def pattern_image(seed: int, size: tuple[int, int] = (48, 48)) -> Image.Image:
    """A small distinct RGB image: colour blocks derived from ``seed``."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((4, 4, 3)) * 255).astype("uint8")
    return Image.fromarray(arr, "RGB").resize(size, Image.NEAREST)


def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte, well-formed PNG whose IHDR declares ``width x height`` RGB pixels (a decompression bomb's
    header: decoding it would allocate width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def rgba_png(seed: int) -> bytes:
    img = pattern_image(seed, (96, 80)).convert("RGBA")
    alpha = Image.linear_gradient("L").resize(img.size)
    img.putalpha(alpha)
    return encode(img, "PNG")


def la_png(seed: int) -> bytes:
    img = pattern_image(seed, (64, 64)).convert("LA")
    return encode(img, "PNG")


def palette_transparent_png(seed: int) -> bytes:
    img = pattern_image(seed, (64, 64)).convert("P", palette=Image.ADAPTIVE, colors=8)
    return encode(img, "PNG", transparency=0)


def cmyk_jpeg(seed: int) -> bytes:
    """A CMYK JPEG large enough (240x200) that decoding takes libjpeg's reduced-size (draft) path."""
    return encode(pattern_image(seed, (240, 200)).convert("CMYK"), "JPEG", quality=90)


def gray16_png(seed: int) -> bytes:
    """A 16-bit grayscale PNG (PIL mode I;16) using only the top of the 16-bit range."""
    rng = np.random.default_rng(seed)
    arr = (40000 + rng.random((8, 8)) * 20000).astype("uint16")
    img = Image.fromarray(arr).resize((64, 64), Image.NEAREST)
    assert img.mode == "I;16"
    return encode(img, "PNG")


def exif_rotated_jpeg(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    return encode(pattern_image(seed, (80, 48)), "JPEG", exif=exif)


def truncated_jpeg(seed: int) -> bytes:
    data = encode(pattern_image(seed, (128, 128)), "JPEG", quality=95)
    return data[: len(data) // 2]


# ---------------------------------------------------------------------------------------------------- the corpus
def build_corpus(base: Path) -> tuple[Path, Path, list[Case]]:
    """Write the corpus under ``base``: ``base/catalogue`` (the catalogue root, holding ``manifest.csv`` and
    ``img/``) and ``base/outside`` (files outside the root). Returns (root, manifest, cases)."""
    root = base / "catalogue"
    img = root / "img"
    outside = base / "outside"
    img.mkdir(parents=True)
    outside.mkdir()
    cases: list[Case] = []

    def put(name: str, data: bytes, sku: str, expect: str, suffix: str = ".png", **kw) -> Path:
        path = img / f"{name}{suffix}"
        path.write_bytes(data)
        cases.append(Case(name, f"img/{path.name}", sku, expect, **kw))
        return path

    # A healthy class so the embedding run has real work next to the bad rows.
    for i in range(3):
        put(f"good_{i}", encode(pattern_image(i), "PNG"), "good", ACCEPTED)

    # Broken files.
    put("zero_byte", b"", "bad", "empty_file", ".jpg")
    put("truncated_jpeg", truncated_jpeg(10), "bad", "corrupt_image", ".jpg")
    put("text_named_jpg", b"SKU list\nthis is not an image\n", "bad", "not_an_image", ".jpg")
    put("one_pixel", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "bad", "too_small")
    put("bomb_100000x100000", png_declaring(100_000, 100_000), "bad", "decompression_bomb")
    put("bomb_9000x9000", png_declaring(9_000, 9_000), "bad", "decompression_bomb")
    (img / "a_folder.jpg").mkdir()
    cases.append(Case("directory_named_jpg", "img/a_folder.jpg", "bad", "unreadable_file"))

    # Awkward but valid colour modes: must load (converted to RGB) and be embedded.
    put("png_alpha", rgba_png(20), "modes", ACCEPTED)
    put("png_la", la_png(21), "modes", ACCEPTED)
    put("png_palette_transparency", palette_transparent_png(22), "modes", ACCEPTED)
    put("cmyk_jpeg", cmyk_jpeg(23), "modes", ACCEPTED, ".jpg")
    put("gray16_png", gray16_png(24), "modes", ACCEPTED)
    put("exif_rotated_jpeg", exif_rotated_jpeg(25), "modes", ACCEPTED, ".jpg")

    # Paths: missing, escaping the root, absolute inside/outside it, a symlink leaving the root.
    cases.append(Case("missing_file", "img/does_not_exist.png", "bad", "missing_file"))
    cases.append(Case("escape_relative", "../../etc/passwd", "bad", "path_outside_root"))
    cases.append(Case("escape_dotdot_inside", "img/../../outside/real.png", "bad", "path_outside_root"))
    real_outside = outside / "real.png"
    real_outside.write_bytes(encode(pattern_image(30), "PNG"))
    cases.append(Case("absolute_outside_root", str(real_outside), "bad", "path_outside_root"))
    cases.append(Case("absolute_etc_passwd", "/etc/passwd", "bad", "path_outside_root"))
    cases.append(Case("file_uri_outside_root", f"file://{real_outside}", "bad", "path_outside_root"))
    inside = put("absolute_inside_root_target", encode(pattern_image(31), "PNG"), "paths", ACCEPTED)
    cases.append(Case("absolute_inside_root", str(inside), "paths", "duplicate_image"))  # same bytes, same SKU
    link = img / "symlink_outside.png"
    os.symlink(real_outside, link)
    cases.append(Case("symlink_outside_root", "img/symlink_outside.png", "bad", "path_outside_root"))

    # Labels: empty SKU / URI, a bad split, duplicate rows, one image under two SKUs, a single-image class.
    cases.append(Case("empty_sku_id", inside.relative_to(root).as_posix(), "", "missing_sku_id"))
    cases.append(Case("empty_image_uri", "", "bad", "missing_image_uri"))
    put("invalid_split", encode(pattern_image(40), "PNG"), "bad", "invalid_split", split="holdout")
    dup = put("duplicate_row_first", encode(pattern_image(41), "PNG"), "dups", ACCEPTED)
    cases.append(Case("duplicate_row_second", f"img/{dup.name}", "dups", "duplicate_image"))
    both = img / "two_skus.png"
    both.write_bytes(encode(pattern_image(42), "PNG"))
    cases.append(Case("same_image_sku_x", f"img/{both.name}", "sku-x", "label_conflict"))
    cases.append(Case("same_image_sku_y", f"img/{both.name}", "sku-y", "label_conflict"))
    put("single_image_class", encode(pattern_image(43), "PNG"), "lonely", ACCEPTED)

    # Non-UTF-8 bytes in a row (Latin-1 "é" in the SKU name).
    nonutf = put("non_utf8_row", encode(pattern_image(44), "PNG"), "latin", "non_utf8")
    cases[-1] = Case(
        "non_utf8_row",
        f"img/{nonutf.name}",
        "latin",
        "non_utf8",
        raw_line=f"img/{nonutf.name},latin,,Caf".encode() + b"\xe9 cr\xe8me\n",
    )

    manifest = root / "manifest.csv"
    write_manifest(manifest, cases)
    return root, manifest, cases


def write_manifest(path: Path, cases: list[Case]) -> None:
    """CSV manifest with the required columns, ``split`` and one column skurec does not know (UNKNOWN_COLUMN)."""
    lines = [f"image_uri,sku_id,split,{UNKNOWN_COLUMN}\n".encode()]
    for c in cases:
        lines.append(c.raw_line if c.raw_line is not None else f"{c.uri},{c.sku_id},{c.split},{c.name}\n".encode())
    path.write_bytes(b"".join(lines))


def manifest_line_of(cases: list[Case], name: str) -> int:
    """CSV line number (header = 1) of a case's row: the ``row_number`` the quarantine table reports."""
    return [c.name for c in cases].index(name) + 2


# ---------------------------------------------------------------------------------------------------- the harness
def spine_assets() -> list:
    """The real ingest + embedding assets and the blocking checks on the audited catalogue."""
    from skurec_assets.embeddings import image_embeddings
    from skurec_assets.ingest import audited_catalogue, catalogue_schema, rows_conserved

    return [audited_catalogue, image_embeddings, rows_conserved, catalogue_schema]


def spine_resources(
    workdir: str,
    location: str,
    *,
    root: str | None = None,
    allow: str | None = None,
    duckdb_path: str | None = None,
    s3_endpoint_url: str | None = None,
    min_samples: int = 3,
) -> dict:
    """Test resources: the given work directory / catalogue and the tiny random encoder on CPU."""
    from skurec_resources import CatalogueResource, EncoderResource, StorageResource

    return {
        "storage": StorageResource(workdir=workdir, duckdb_path=duckdb_path, s3_endpoint_url=s3_endpoint_url),
        "catalogue": CatalogueResource(location=location, root=root, allow=allow, min_samples=min_samples),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=8, device="cpu", num_workers=1),
    }


def materialize_spine(workdir: str, location: str, instance=None, **kwargs):
    """Materialise the spine in-process; raises on failure (the run must succeed on every bad input)."""
    import dagster as dg

    result = dg.materialize(spine_assets(), resources=spine_resources(workdir, location, **kwargs), instance=instance)
    assert result.success
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"rows_conserved": True, "catalogue_schema": True}, checks
    return result


def materialization_metadata(result, asset_name: str) -> dict:
    """Plain values of the last materialisation's metadata of one asset in a run result."""
    mats = list(result.asset_materializations_for_node(asset_name))
    assert mats, f"{asset_name} was not materialised"
    return {k: v.value for k, v in mats[-1].metadata.items()}


# ---------------------------------------------------------------------------------------------------- a clean catalogue
def sku_colour(j: int, n: int) -> tuple[int, int, int]:
    """A distinct colour for SKU ``j`` of ``n``: hues spread round the wheel, alternating brightness."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(j / max(n, 1), 0.85, 0.95 if j % 2 == 0 else 0.55)
    return int(r * 255), int(g * 255), int(b * 255)


def separable_catalogue(root: Path, n_skus: int = 4, per_sku: int = 8, size: int = 40) -> Path:
    """``root/sku-NN/<i>.png``: each SKU a distinct colour with per-image noise (distinct bytes), so that even the
    tiny RANDOM encoder separates the classes and the model assets downstream have something to learn."""
    for j in range(n_skus):
        folder = root / f"sku-{j:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(j)
        for i in range(per_sku):
            arr = np.array(sku_colour(j, n_skus), np.float32) + rng.normal(0, 10, (size, size, 3))
            img = Image.fromarray(np.clip(arr, 0, 255).astype("uint8"), "RGB")
            (folder / f"{i:03d}.png").write_bytes(encode(img, "PNG"))
    return root
