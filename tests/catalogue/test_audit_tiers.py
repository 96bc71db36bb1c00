"""Two tiers, one model: head (>= min_samples labelled images) and tail (>= min_shots) classes are both trained;
fewer stay reported, not trained. The tail keeps its stable hash split as long as it leaves a train image."""

from __future__ import annotations

import pandas as pd
from support.files import write_folder_catalogue

from skurec.catalogue.audit import AuditConfig, audit, split_hash, tiers_of_classes
from skurec.catalogue.importer import import_catalogue
from skurec.catalogue.splits import class_tiers

CFG = AuditConfig(min_samples=20, min_shots=5)


def _audit(root, cfg: AuditConfig = CFG):
    return audit(import_catalogue(str(root)).rows, cfg)


def test_head_tail_and_untrained_tiers_with_counts(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"big": 24, "mid": 8, "few": 5, "rare": 4})
    res = _audit(root)
    classes = res.classes.set_index("sku_id")
    assert classes["tier"].to_dict() == {"big": "head", "mid": "tail", "few": "tail", "rare": "untrained"}
    assert classes["status"].to_dict() == {
        "big": "active",
        "mid": "active",
        "few": "active",
        "rare": "below_min_samples",
    }
    # head and tail are both trained on (active); the SKU below min_shots is kept and reported, not trained
    active = res.images.groupby("sku_id")["active"].all().to_dict()
    assert active == {"big": True, "mid": True, "few": True, "rare": False}
    s = res.summary
    assert s["tiers"]["head"] == {"n_classes": 1, "n_images": 24}
    assert s["tiers"]["tail"] == {"n_classes": 2, "n_images": 13}
    assert s["tiers"]["untrained"] == {"n_classes": 1}
    assert s["tail_classes"] == ["few", "mid"] and s["filtered_classes"] == ["rare"]
    assert (s["min_samples"], s["min_shots"]) == (20, 5)
    assert tiers_of_classes(res.classes) == classes["tier"].to_dict()


def test_tail_keeps_the_hash_split_and_head_gets_a_validation_image(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {f"t{k}": 5 for k in range(12)} | {"h": 30})
    res = _audit(root)
    imgs = res.images
    salt = AuditConfig().split_salt
    for sku, grp in imgs.groupby("sku_id"):
        hashed = grp["image_id"].map(lambda i: split_hash(i, salt)) < CFG.val_fraction
        n_train = int((grp["split"] == "train").sum())
        assert n_train >= 1, sku  # every trained class keeps a train image
        if sku.startswith("t") and int((~hashed).sum()) >= 1:
            # the tail never gives an extra image to validation: exactly the hash split
            assert (grp["split"] == "val").tolist() == hashed.tolist(), sku
    assert (imgs.loc[imgs["sku_id"] == "h", "split"] == "val").any()
    tail_val = imgs[imgs["sku_id"].str.startswith("t") & (imgs["split"] == "val")]
    tv = res.summary["tail_validation"]
    assert tv == {"n_classes_with_val": int(tail_val["sku_id"].nunique()), "n_val_images": len(tail_val)}
    # only head classes without validation are flagged (the gate warns about those)
    assert res.summary["active_classes_without_val"] == []


def test_a_tail_class_whose_hash_takes_every_image_gets_one_back(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"a": 5, "b": 5})
    rows = import_catalogue(str(root)).rows
    # val_fraction 1.0: the hash sends every image to validation; the tail class keeps one (the highest-hash) for train
    res = audit(rows, AuditConfig(min_samples=20, min_shots=5, val_fraction=1.0))
    for _, grp in res.images.groupby("sku_id"):
        assert (grp["split"] == "train").sum() == 1 and (grp["split"] == "val").sum() == 4
        h = grp["image_id"].map(lambda i: split_hash(i, AuditConfig().split_salt))
        assert grp.loc[h.idxmax(), "split"] == "train"


def test_tiers_count_labelled_images_not_test_rows(tmp_path):
    """Pinned test rows say nothing about how much a SKU can be learnt from: 4 train + 30 test is below min_shots."""
    from support.files import image_bytes

    (tmp_path / "imgs").mkdir()
    lines, seed = ["image_uri,sku_id,split"], 0
    for sku, (n_train, n_test) in {"x": (4, 30), "y": (6, 30), "z": (25, 5)}.items():
        for j in range(n_train + n_test):
            (tmp_path / "imgs" / f"{seed}.png").write_bytes(image_bytes(seed))
            lines.append(f"imgs/{seed}.png,{sku},{'train' if j < n_train else 'test'}")
            seed += 1
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    res = audit(import_catalogue(str(tmp_path / "m.csv")).rows, CFG)
    assert res.classes.set_index("sku_id")["tier"].to_dict() == {"x": "untrained", "y": "tail", "z": "head"}


def test_class_without_a_train_image_is_not_trained(tmp_path):
    from support.files import image_bytes

    for i in range(8):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(i))
    # six labelled images, all pinned to val by their manifest: enough for the tail, but nothing to train on
    rows = ["image_uri,sku_id,split"] + [f"{i}.png,v,val" for i in range(6)] + [f"{i}.png,w,train" for i in (6, 7)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    res = audit(import_catalogue(str(tmp_path / "m.csv")).rows, AuditConfig(min_samples=20, min_shots=2))
    classes = res.classes.set_index("sku_id")
    assert classes.loc["v", "tier"] == "untrained" and classes.loc["w", "tier"] == "tail"
    assert res.summary["classes_without_train"] == ["v"]
    assert not res.images.loc[res.images["sku_id"] == "v", "active"].any()


def test_min_shots_above_min_samples_means_no_tail(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"a": 4, "b": 3, "c": 2})
    res = _audit(root, AuditConfig(min_samples=3, min_shots=5))
    assert res.classes.set_index("sku_id")["tier"].to_dict() == {"a": "head", "b": "head", "c": "untrained"}


def test_a_new_sku_enters_the_tail_then_moves_to_the_head(tmp_path):
    """A SKU with its first min_shots images is in the tail (trained by the same model); once it has min_samples it is
    in the head tier on the next audit. Images keep their split across the move (the hash is per image)."""
    root = write_folder_catalogue(tmp_path / "cat", {"old": 25, "new": 5})
    first = _audit(root)
    assert first.classes.set_index("sku_id").loc["new", "tier"] == "tail"
    write_folder_catalogue(tmp_path / "cat", {"new": 25}, seed0=1000)  # more labelled images of it arrive
    second = _audit(root)
    assert second.classes.set_index("sku_id").loc["new", "tier"] == "head"
    before = first.images.set_index("image_id")["split"]
    after = second.images.set_index("image_id")["split"].reindex(before.index)
    old_rows = first.images.set_index("image_id")["sku_id"] == "old"
    pd.testing.assert_series_equal(before[old_rows], after[old_rows])


def test_class_tiers_of_an_empty_table():
    assert class_tiers(pd.DataFrame(columns=["sku_id", "split"]), CFG) == {}
    assert tiers_of_classes(pd.DataFrame()) == {}
