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
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from skurec.demo.photo import MIN_IMAGE_SIZE, image_rng, render_sku_jpeg
from skurec.demo.skus import FAMILIES, MAX_FAMILIES, MAX_SKUS_PER_FAMILY, SyntheticSku, demo_skus, make_sku, sku_by_id

log = logging.getLogger(__name__)


DEMO_MARKER = ".skurec_demo.json"
BATCH_MARKER = ".skurec_batch.json"
MANIFEST_NAME = "manifest.csv"
CATALOGUE_COLUMNS = ("image_uri", "sku_id", "sku_name", "group_id")
BATCH_COLUMNS = (*CATALOGUE_COLUMNS, "batch_id")
MARKER_VERSION = 1
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


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
    _check_batch_request(
        batch_id,
        new_skus,
        images_per_new_sku,
        images_per_existing,
        image_size,
        seed,
        extra_images_for,
        new_family,
        n_families,
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
    jobs = _batch_jobs(batch_dir, new, extra, images_per_new_sku, images_per_existing)
    _render_files(jobs, seed, f"batch:{batch_id}", image_size, f"rendering batch {batch_id}")
    rows = _batch_manifest_rows(batch_dir, batch_id, jobs)
    _atomic_write(manifest, _manifest_bytes(BATCH_COLUMNS, rows))  # last: its presence marks the batch complete
    _finish_marker(batch_dir, BATCH_MARKER, "labelled batch", params)
    log.info(
        "batch %s: new SKUs %s, %d extra images", batch_id, [x.sku_id for x in new], len(extra) * images_per_existing
    )
    return manifest


def _check_batch_request(
    batch_id: str,
    new_skus: int,
    images_per_new_sku: int,
    images_per_existing: int,
    image_size: int,
    seed: int,
    extra_images_for: Sequence[str],
    new_family: bool,
    n_families: int,
) -> None:
    """Refuse a batch request that cannot be rendered, before anything is written."""
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


def _batch_jobs(
    batch_dir: Path,
    new: list[SyntheticSku],
    extra: list[str],
    images_per_new_sku: int,
    images_per_existing: int,
) -> list[tuple[SyntheticSku, int, Path]]:
    """(SKU, image index, file) of every image of the batch: the new SKUs' images, then the existing SKUs' ones."""
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
    return jobs


def _batch_manifest_rows(batch_dir: Path, batch_id: str, jobs: list[tuple[SyntheticSku, int, Path]]) -> list[dict]:
    """One manifest row per rendered image (``image_uri`` relative to the batch folder)."""
    return [
        {
            "image_uri": p.relative_to(batch_dir).as_posix(),
            "sku_id": s.sku_id,
            "sku_name": s.sku_name,
            "group_id": s.group_id,
            "batch_id": batch_id,
        }
        for s, _, p in jobs
    ]
