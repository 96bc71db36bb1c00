"""The offline demo catalogue generator: determinism, layouts, look (families alike, SKUs distinct), safety."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.files import snapshot_tree

import skurec.demo.render as synth
from skurec.catalogue.importer import import_catalogue
from skurec.demo.packshot import render_product
from skurec.demo.photo import image_rng, render_sku_image, render_sku_jpeg
from skurec.demo.render import make_demo_catalogue, make_labelled_batch
from skurec.demo.skus import FAMILIES, SyntheticSku, demo_skus, make_sku

SMALL = {"n_families": 3, "skus_per_family": 2, "images_per_sku": 3, "image_size": 96}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ SKU list


def test_default_demo_skus_are_32_slugged_skus_in_8_families_of_4():
    skus = demo_skus()
    assert len(skus) == 32 and len({s.sku_id for s in skus}) == 32
    assert all(isinstance(s, SyntheticSku) for s in skus)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", s.sku_id) for s in skus)
    families: dict[str, list[SyntheticSku]] = {}
    for s in skus:
        families.setdefault(s.group_id, []).append(s)
        assert s.sku_id.startswith(s.group_id + "-")
    assert len(families) == 8 and all(len(v) == 4 for v in families.values())
    assert "juice-orange-1l" in {s.sku_id for s in skus}
    assert len({s.shape for s in skus}) >= 5  # box, carton, bottle, can, bag, ...
    assert {FAMILIES[s.family_index].mode for s in skus} == {"badge", "text"}  # both hard-case kinds present


def test_demo_skus_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="n_families"):
        demo_skus(n_families=len(FAMILIES) + 1)
    with pytest.raises(ValueError, match="skus_per_family"):
        demo_skus(skus_per_family=0)


# ------------------------------------------------------------------------------------------------ rendering


def test_render_is_deterministic_and_seed_dependent():
    sku = make_sku(0, 0)
    a = render_sku_jpeg(sku, image_rng(0, sku.sku_id, 0), 96)
    b = render_sku_jpeg(sku, image_rng(0, sku.sku_id, 0), 96)
    c = render_sku_jpeg(sku, image_rng(1, sku.sku_id, 0), 96)
    d = render_sku_jpeg(sku, image_rng(0, sku.sku_id, 1), 96)
    assert a == b
    assert len({a, c, d}) == 3
    img = Image.open(io.BytesIO(a))
    assert img.format == "JPEG" and img.size == (96, 96) and img.mode == "RGB"
    with pytest.raises(ValueError, match="size"):
        render_sku_image(sku, image_rng(0, sku.sku_id, 0), 16)


def _scene_distance(a: SyntheticSku, b: SyntheticSku, scenes: int, size: int = 112) -> float:
    """Mean absolute pixel difference of two SKUs rendered into the same scenes (same background/pose/lighting)."""
    diffs = []
    for k in range(scenes):
        ia = np.asarray(render_sku_image(a, image_rng(3, "scene", k), size), dtype=np.float32)
        ib = np.asarray(render_sku_image(b, image_rng(3, "scene", k), size), dtype=np.float32)
        diffs.append(np.abs(ia - ib).mean())
    return float(np.mean(diffs))


def test_family_members_look_alike_and_families_differ():
    """Within a family only the label changes: its pixel distance is far below the distance to any other family."""
    n_fam, scenes = 8, 2
    for f in range(n_fam):
        within = _scene_distance(make_sku(f, 0), make_sku(f, 1), scenes)
        between = min(_scene_distance(make_sku(f, 0), make_sku(g, 0), scenes) for g in range(n_fam) if g != f)
        assert within < 0.35 * between, (FAMILIES[f].slug, within, between)
        assert within > 0.2, f"{FAMILIES[f].slug}: family members are pixel-identical"


def test_distinct_skus_have_distinct_packshots_on_the_same_package():
    """Every SKU pair of a family differs visibly, yet most of the package (shape, colours) is shared."""
    for f, fam in enumerate(FAMILIES):
        shots = [np.asarray(render_product(make_sku(f, v)), dtype=np.int16) for v in range(4)]
        for i in range(4):
            for j in range(i + 1, 4):
                changed = np.abs(shots[i] - shots[j]).max(-1) > 30
                assert changed.mean() > 0.002, (fam.slug, i, j)  # a visible label difference, not noise
                assert changed.mean() < 0.35, (fam.slug, i, j)  # ... but the package stays the same
    # families use different package shapes (packshot sizes); members of a family share one
    assert len({render_product(make_sku(f, 0)).size for f in range(len(FAMILIES))}) >= 5


# ------------------------------------------------------------------------------------------------ catalogues


def test_manifest_layout_counts_columns_and_imports_cleanly(tmp_path: Path):
    manifest = make_demo_catalogue(tmp_path / "cat", layout="manifest", **SMALL)
    assert manifest == tmp_path / "cat" / "manifest.csv"
    columns, rows = _read_csv(manifest)
    assert columns == ["image_uri", "sku_id", "sku_name", "group_id"]
    assert len(rows) == 3 * 2 * 3
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["sku_id"]] = counts.get(r["sku_id"], 0) + 1
        assert not Path(r["image_uri"]).is_absolute() and r["image_uri"].startswith("images/")
        assert (manifest.parent / r["image_uri"]).is_file()
        assert r["sku_id"].startswith(r["group_id"] + "-") and r["sku_name"]
    assert counts == {s.sku_id: 3 for s in demo_skus(3, 2)}
    images = [p for p in (tmp_path / "cat" / "images").rglob("*") if p.is_file()]
    assert len(images) == len(rows)
    report = import_catalogue(str(manifest))
    assert len(report.rows) == len(rows) and report.rows["import_error"].isna().all()
    assert set(report.rows["group_id"]) == {"juice", "cola", "water"}


def test_folder_layout_and_hidden_marker_is_not_imported(tmp_path: Path):
    root = make_demo_catalogue(tmp_path / "cat", layout="folder", **SMALL)
    assert root == tmp_path / "cat"
    sku_dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert sku_dirs == sorted(s.sku_id for s in demo_skus(3, 2))
    for d in sku_dirs:
        assert sorted(p.name for p in (root / d).iterdir()) == [f"{d}_{i:03d}.jpg" for i in range(3)]
    report = import_catalogue(str(root))
    assert len(report.rows) == 18 and report.rows["import_error"].isna().all()  # the marker file is hidden


def test_same_seed_gives_byte_identical_catalogue_other_seed_differs(tmp_path: Path):
    a = _files(make_demo_catalogue(tmp_path / "a", layout="manifest", seed=5, **SMALL).parent)
    b = _files(make_demo_catalogue(tmp_path / "b", layout="manifest", seed=5, **SMALL).parent)
    c = _files(make_demo_catalogue(tmp_path / "c", layout="manifest", seed=6, **SMALL).parent)
    assert a == b
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert len(jpgs) == 18 and all(a[k] != c[k] for k in jpgs)
    assert len({_sha(a[k]) for k in jpgs}) == 18  # no duplicate images (the audit would collapse them)


def test_refuses_to_write_into_foreign_non_empty_folder(tmp_path: Path):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"precious")
    (user / "juice-orange-1l").mkdir()
    before = snapshot_tree(user)
    with pytest.raises(FileExistsError, match="not created by"):
        make_demo_catalogue(user, **SMALL)
    with pytest.raises(FileExistsError, match="not created by"):
        make_labelled_batch(tmp_path, "photos", images_per_new_sku=2, image_size=96)
    assert snapshot_tree(user) == before
    file_target = tmp_path / "a_file"
    file_target.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        make_demo_catalogue(file_target, **SMALL)


def test_reuses_identical_catalogue_and_refuses_other_parameters(tmp_path: Path):
    out = tmp_path / "cat"
    manifest = make_demo_catalogue(out, **SMALL)
    before = snapshot_tree(out)
    assert make_demo_catalogue(out, **SMALL) == manifest
    assert snapshot_tree(out) == before  # reused, nothing rewritten
    with pytest.raises(FileExistsError, match="different parameters"):
        make_demo_catalogue(out, **{**SMALL, "images_per_sku": 4})
    assert snapshot_tree(out) == before


def test_interrupted_catalogue_is_completed_on_the_next_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "cat"
    real = synth.render_sku_jpeg
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_sku_jpeg", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_demo_catalogue(out, **SMALL)
    assert not (out / "manifest.csv").exists()
    assert json.loads((out / synth.DEMO_MARKER).read_text())["complete"] is False
    monkeypatch.setattr(synth, "render_sku_jpeg", real)
    manifest = make_demo_catalogue(out, **SMALL)
    assert len(_read_csv(manifest)[1]) == 18
    assert _files(out) == _files(make_demo_catalogue(tmp_path / "fresh", **SMALL).parent)


# ------------------------------------------------------------------------------------------------ batches


def test_labelled_batch_holds_only_new_images_of_new_and_requested_skus(tmp_path: Path):
    cat = make_demo_catalogue(tmp_path / "cat", n_families=3, skus_per_family=2, images_per_sku=2, image_size=96)
    demo_ids = {s.sku_id for s in demo_skus(3, 2)}
    cat_hashes = {_sha(p.read_bytes()) for p in (cat.parent / "images").rglob("*.jpg")}
    extra = "cola-classic-330ml"
    manifest = make_labelled_batch(
        tmp_path / "batches",
        "batch-0001",
        new_skus=2,
        images_per_new_sku=3,
        extra_images_for=[extra],
        images_per_existing=2,
        n_families=3,
        skus_per_family=2,
        image_size=96,
    )
    assert manifest == tmp_path / "batches" / "batch-0001" / "manifest.csv"
    columns, rows = _read_csv(manifest)
    assert columns == ["image_uri", "sku_id", "sku_name", "group_id", "batch_id"]
    assert {r["batch_id"] for r in rows} == {"batch-0001"}
    new_ids = {r["sku_id"] for r in rows} - {extra}
    assert len(new_ids) == 2 and not new_ids & demo_ids
    assert {r["group_id"] for r in rows if r["sku_id"] in new_ids} <= {"juice", "cola", "water"}  # new members
    assert sum(r["sku_id"] == extra for r in rows) == 2 and len(rows) == 2 * 3 + 2
    listed = {(manifest.parent / r["image_uri"]).resolve() for r in rows}
    on_disk = {p.resolve() for p in (manifest.parent / "images").rglob("*") if p.is_file()}
    assert listed == on_disk  # the manifest lists exactly the batch's images
    batch_hashes = {_sha(p.read_bytes()) for p in on_disk}
    assert len(batch_hashes) == len(rows) and not batch_hashes & cat_hashes  # all new photos
    report = import_catalogue(str(manifest))
    assert report.rows["import_error"].isna().all()

    # the same call reuses the batch; the next batch brings different new SKUs
    before = snapshot_tree(manifest.parent)
    assert (
        make_labelled_batch(
            tmp_path / "batches",
            "batch-0001",
            new_skus=2,
            images_per_new_sku=3,
            extra_images_for=[extra],
            images_per_existing=2,
            n_families=3,
            skus_per_family=2,
            image_size=96,
        )
        == manifest
    )
    assert snapshot_tree(manifest.parent) == before
    second = make_labelled_batch(
        tmp_path / "batches",
        "batch-0002",
        new_skus=1,
        images_per_new_sku=2,
        extra_images_for=sorted(new_ids)[:1],
        n_families=3,
        skus_per_family=2,
        image_size=96,
    )
    second_new = {r["sku_id"] for r in _read_csv(second)[1]} - set(sorted(new_ids)[:1])
    assert len(second_new) == 1 and not second_new & (new_ids | demo_ids)


def test_new_family_batch_and_bad_requests(tmp_path: Path):
    manifest = make_labelled_batch(
        tmp_path,
        "b1",
        new_skus=2,
        images_per_new_sku=2,
        new_family=True,
        n_families=3,
        skus_per_family=2,
        image_size=96,
    )
    rows = _read_csv(manifest)[1]
    assert {r["group_id"] for r in rows} == {FAMILIES[3].slug}  # one family the catalogue does not have
    with pytest.raises(ValueError, match="neither in the demo catalogue"):
        make_labelled_batch(tmp_path, "b2", extra_images_for=["tea-green-20-bags"], n_families=3, skus_per_family=2)
    with pytest.raises(ValueError, match="batch_id"):
        make_labelled_batch(tmp_path, "../escape")
    assert not (tmp_path / "b2").exists()  # validation happens before anything is written


def test_batch_manifest_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A crash while rendering leaves images but no manifest: the batch is visibly incomplete, then completes."""
    real = synth.render_sku_jpeg
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_sku_jpeg", failing)
    with pytest.raises(RuntimeError):
        make_labelled_batch(tmp_path, "b1", new_skus=1, images_per_new_sku=4, image_size=96)
    batch = tmp_path / "b1"
    assert len(list((batch / "images").rglob("*.jpg"))) == 2 and not (batch / "manifest.csv").exists()
    monkeypatch.setattr(synth, "render_sku_jpeg", real)
    manifest = make_labelled_batch(tmp_path, "b1", new_skus=1, images_per_new_sku=4, image_size=96)
    assert len(_read_csv(manifest)[1]) == 4
    newest_image = max(p.stat().st_mtime_ns for p in (batch / "images").rglob("*.jpg"))
    assert manifest.stat().st_mtime_ns >= newest_image


def test_batch_manifest_lists_the_new_skus_images_then_the_requested_existing_ones(tmp_path: Path):
    manifest = make_labelled_batch(
        tmp_path,
        "batch-001",
        new_skus=1,
        images_per_new_sku=3,
        extra_images_for=["juice-orange-1l", "juice-apple-1l"],
        images_per_existing=2,
        seed=1,
        n_families=3,
        skus_per_family=3,
        image_size=96,
    )
    assert manifest.read_text(encoding="utf-8") == (
        "image_uri,sku_id,sku_name,group_id,batch_id\n"
        "images/cola-cherry-330ml/cola-cherry-330ml_000.jpg,cola-cherry-330ml,Fizzo Cherry Soda 330ml,cola,batch-001\n"
        "images/cola-cherry-330ml/cola-cherry-330ml_001.jpg,cola-cherry-330ml,Fizzo Cherry Soda 330ml,cola,batch-001\n"
        "images/cola-cherry-330ml/cola-cherry-330ml_002.jpg,cola-cherry-330ml,Fizzo Cherry Soda 330ml,cola,batch-001\n"
        "images/juice-orange-1l/juice-orange-1l_000.jpg,juice-orange-1l,Sunvale Orange Juice 1L,juice,batch-001\n"
        "images/juice-orange-1l/juice-orange-1l_001.jpg,juice-orange-1l,Sunvale Orange Juice 1L,juice,batch-001\n"
        "images/juice-apple-1l/juice-apple-1l_000.jpg,juice-apple-1l,Sunvale Apple Juice 1L,juice,batch-001\n"
        "images/juice-apple-1l/juice-apple-1l_001.jpg,juice-apple-1l,Sunvale Apple Juice 1L,juice,batch-001\n"
    )
