from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.files import image_bytes, snapshot_tree, write_folder_catalogue

from skurec.catalogue.audit import AuditConfig, audit, catalogue_snapshot_hash, split_hash
from skurec.catalogue.importer import CatalogueError, import_catalogue


def test_folder_import_lists_every_image_with_its_sku(folder_catalogue):
    rows = import_catalogue(str(folder_catalogue)).rows
    assert len(rows) == 14
    assert rows["sku_id"].value_counts().to_dict() == {"sku-a": 6, "sku-b": 6, "sku-c": 2}
    assert rows["import_error"].isna().all()


def test_folder_import_reports_loose_files_and_skips_hidden(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"x": 2})
    (root / "loose.png").write_bytes(image_bytes(99))
    (root / "x" / ".DS_Store").write_bytes(b"junk")
    rows = import_catalogue(str(root)).rows
    assert len(rows) == 3
    assert rows.loc[rows["image_uri_raw"] == "loose.png", "import_error"].item() == "no_sku_folder"


def test_missing_location_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogueError, match="does not exist"):
        import_catalogue(str(tmp_path / "nope"))
    with pytest.raises(CatalogueError, match="does not exist"):
        import_catalogue(str(tmp_path / "nope.csv"))


def test_manifest_import_resolves_relative_absolute_and_optional_columns(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(image_bytes(1))
    other = tmp_path / "elsewhere.png"
    other.write_bytes(image_bytes(2))
    man = tmp_path / "manifest.csv"
    man.write_text(
        f"image_uri,sku_id,sku_name,group_id,split,extra\nimgs/a.png,s1,Juice,juice,test,foo\n{other},s2,,,,bar\n"
    )
    rep = import_catalogue(str(man))
    assert rep.unknown_columns == ("extra",)
    r = rep.rows
    assert r.loc[0, "image_uri"] == str(tmp_path / "imgs" / "a.png")
    assert r.loc[0, "split"] == "test" and r.loc[0, "group_id"] == "juice"
    assert r.loc[1, "image_uri"] == str(other) and r.loc[1, "sku_name"] is None


def test_manifest_parquet_import(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    pd.DataFrame({"image_uri": ["a.png"], "sku_id": ["s1"]}).to_parquet(tmp_path / "m.parquet")
    rows = import_catalogue(str(tmp_path / "m.parquet")).rows
    assert rows.loc[0, "image_uri"] == str(tmp_path / "a.png")


def _audit_folder(root, **cfg):
    return audit(import_catalogue(str(root)).rows, AuditConfig(**cfg))


def test_audit_filters_small_classes_but_keeps_and_reports_them(folder_catalogue):
    res = _audit_folder(folder_catalogue, min_samples=5)
    assert len(res.images) == 14 and len(res.quarantine) == 0
    classes = res.classes.set_index("sku_id")
    assert classes.loc["sku-c", "status"] == "below_min_samples"
    assert classes.loc["sku-a", "status"] == "active"
    assert set(res.images.loc[~res.images["active"], "sku_id"]) == {"sku-c"}
    assert res.summary["filtered_classes"] == ["sku-c"]


def test_audit_ids_are_content_hashes_and_every_active_class_has_val(folder_catalogue):
    res = _audit_folder(folder_catalogue, min_samples=5)
    assert res.images["image_id"].str.len().eq(64).all()
    for sku in ("sku-a", "sku-b"):
        assert (res.images[res.images["sku_id"] == sku]["split"] == "val").sum() >= 1


def test_split_is_stable_when_images_are_added(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"a": 40, "b": 40})
    before = _audit_folder(root, min_samples=10).images.set_index("image_id")["split"]
    write_folder_catalogue(tmp_path / "cat2", {"a": 30, "c": 30}, seed0=1000)
    for p in (tmp_path / "cat2").rglob("*.png"):
        dest = root / p.parent.name / ("new_" + p.name)
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(p.read_bytes())
    after = _audit_folder(root, min_samples=10).images.set_index("image_id")["split"]
    assert len(after) == 140
    assert after.loc[before.index].equals(before)
    # roughly 10% validation overall
    assert 0.04 < (after == "val").mean() < 0.2


def test_duplicates_collapse_and_conflicts_quarantine(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"a": 3, "b": 3})
    (root / "a" / "dup.png").write_bytes((root / "a" / "000.png").read_bytes())  # same sku: collapse
    (root / "b" / "conflict.png").write_bytes((root / "a" / "001.png").read_bytes())  # two skus: conflict
    res = _audit_folder(root, min_samples=1)
    reasons = res.quarantine["reason"].value_counts().to_dict()
    assert reasons == {"duplicate_image": 1, "label_conflict": 2}
    assert len(res.images) + len(res.quarantine) == 8
    assert res.images["image_id"].is_unique


def test_bad_files_are_quarantined_with_reasons(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"a": 2})
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.jpg").write_bytes(b"hello, not an image")
    jpg = image_bytes(5, size=64, fmt="JPEG")
    (root / "a" / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    before = snapshot_tree(root)
    res = _audit_folder(root, min_samples=1)
    got = dict(zip(res.quarantine["image_uri"].str.rsplit("/", n=1).str[-1], res.quarantine["reason"]))
    assert got == {"empty.jpg": "empty_file", "text.jpg": "not_an_image", "trunc.jpg": "corrupt_image"}
    assert len(res.images) == 2
    assert snapshot_tree(root) == before


def test_manifest_bad_rows_quarantined(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    man = tmp_path / "m.csv"
    man.write_text(
        "image_uri,sku_id,split\na.png,s1,\nmissing.png,s1,\n../../etc/passwd,s1,\na.png,,\na.png,s1,holdout\n"
    )
    res = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=1))
    assert sorted(res.quarantine["reason"]) == ["invalid_split", "missing_file", "missing_sku_id", "path_outside_root"]
    assert len(res.images) == 1


def test_manifest_missing_required_column_quarantines_every_row(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    man = tmp_path / "m.csv"
    man.write_text("image_uri,label\na.png,s1\na.png,s2\n")
    res = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=1))
    assert len(res.images) == 0
    assert res.quarantine["reason"].tolist() == ["missing_column", "missing_column"]


def test_empty_manifest_gives_empty_tables(tmp_path):
    man = tmp_path / "m.csv"
    man.write_text("")
    res = audit(import_catalogue(str(man)).rows, AuditConfig())
    assert len(res.images) == 0 and len(res.quarantine) == 0 and len(res.classes) == 0


def test_pinned_test_is_kept_and_a_single_train_image_is_reported(tmp_path):
    """test rows stay test; a class whose only non-test image is one train image keeps it for training and is
    listed as having no validation image (the gate cannot judge it)."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(i))
    man = tmp_path / "m.csv"
    man.write_text("image_uri,sku_id,split\n0.png,s,test\n1.png,s,test\n2.png,s,train\n")
    res = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=1))
    imgs = res.images.set_index("image_uri")
    h = split_hash(imgs.loc[str(tmp_path / "2.png"), "image_id"], AuditConfig().split_salt)
    train_split = "val" if h < 0.1 else "train"  # the hash decides, as for an unpinned row
    assert imgs.loc[str(tmp_path / "0.png"), "split"] == imgs.loc[str(tmp_path / "1.png"), "split"] == "test"
    assert imgs.loc[str(tmp_path / "2.png"), "split"] == train_split
    assert imgs["split_pinned"].tolist() == [True, True, False]
    if train_split == "train":
        assert res.summary["active_classes_without_val"] == ["s"] and res.summary["n_active_classes_without_val"] == 1


def _train_test_manifest(tmp_path, counts: dict[str, tuple[int, int]], seed0: int = 0, name: str = "m.csv"):
    """Manifest pinning every row to train or test (like an official train/test list), images beside it."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    lines, seed = ["image_uri,sku_id,split"], seed0
    for sku, (n_train, n_test) in counts.items():
        for j in range(n_train + n_test):
            rel = f"imgs/{sku}_{seed}.png"
            (tmp_path / rel).write_bytes(image_bytes(seed))
            lines.append(f"{rel},{sku},{'train' if j < n_train else 'test'}")
            seed += 1
    man = tmp_path / name
    man.write_text("\n".join(lines) + "\n")
    return man


def test_train_test_only_manifest_gets_validation_carved_from_train(tmp_path):
    man = _train_test_manifest(tmp_path, {f"s{k}": (40, 8) for k in range(4)})
    res = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=10))
    imgs = res.images
    pinned = import_catalogue(str(man)).rows.set_index("image_uri")["split"]
    asked = imgs["image_uri"].map(pinned)
    assert (imgs.loc[asked == "test", "split"] == "test").all()  # test rows never move
    from_train = imgs[asked == "train"]
    assert set(from_train["split"]) == {"train", "val"}
    assert 0.04 < (from_train["split"] == "val").mean() < 0.2  # ~10 %
    # Exactly the hash rule (every class got hashed val images here, so no fallback was needed).
    expected = np.where(
        from_train["image_id"].map(lambda i: split_hash(i, AuditConfig().split_salt)) < 0.1, "val", "train"
    )
    assert from_train["split"].tolist() == expected.tolist()
    assert res.summary["n_active_classes_without_val"] == 0 and res.summary["split_counts"]["val"] > 0
    assert len(imgs) + len(res.quarantine) == 4 * 48
    again = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=10)).images  # deterministic
    pd.testing.assert_frame_equal(again, imgs)


def test_carved_split_is_stable_when_rows_are_added(tmp_path):
    man = _train_test_manifest(tmp_path, {"a": (30, 5), "b": (30, 5)})
    before = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=10)).images.set_index("image_id")["split"]
    more = _train_test_manifest(tmp_path, {"a": (20, 2), "c": (30, 5)}, seed0=500, name="more.csv")
    grown = tmp_path / "grown.csv"
    grown.write_text(man.read_text() + "".join(more.read_text().splitlines(keepends=True)[1:]))
    after = audit(import_catalogue(str(grown)).rows, AuditConfig(min_samples=10)).images.set_index("image_id")["split"]
    assert len(after) == len(before) + 57
    assert after.loc[before.index].equals(before)


def test_explicit_val_rows_win(tmp_path):
    """A manifest listing its own val rows defines the validation split: its train rows stay train."""
    (tmp_path / "imgs").mkdir()
    lines = ["image_uri,sku_id,split"]
    for j in range(30):
        (tmp_path / f"imgs/{j}.png").write_bytes(image_bytes(j))
        lines.append(f"imgs/{j}.png,{'ab'[j % 2]},{'val' if j < 4 else 'test' if j < 8 else 'train'}")
    man = tmp_path / "m.csv"
    man.write_text("\n".join(lines) + "\n")
    imgs = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=5)).images
    by_file = dict(zip(imgs["image_uri"].str.rsplit("/", n=1).str[-1], imgs["split"]))
    assert all(by_file[f"{j}.png"] == ("val" if j < 4 else "test" if j < 8 else "train") for j in range(30))
    assert imgs["split_pinned"].all()


def test_snapshot_hash_changes_with_labels_only(folder_catalogue):
    imgs = _audit_folder(folder_catalogue, min_samples=5).images
    h = catalogue_snapshot_hash(imgs)
    assert catalogue_snapshot_hash(imgs.sample(frac=1, random_state=0)) == h
    changed = imgs.copy()
    changed.loc[0, "sku_id"] = "other"
    assert catalogue_snapshot_hash(changed) != h
