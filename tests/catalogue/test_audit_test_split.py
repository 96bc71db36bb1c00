"""A catalogue without a test split gets one carved by the stable hash (head classes only, ~test_fraction of their
images, disjoint from validation), recorded in the summary; a given test split, pinned rows and the tail are never
touched, carved rows keep their split when images arrive, and test_fraction=0 turns it off."""

from __future__ import annotations

import pandas as pd
import pytest
from support.files import image_bytes, write_folder_catalogue

from skurec.catalogue.audit import AuditConfig, audit, split_hash
from skurec.catalogue.importer import import_catalogue

CFG = AuditConfig(min_samples=20, min_shots=5)
COUNTS = {"h1": 40, "h2": 60, "h3": 25, "t1": 8, "t2": 6, "u": 3}  # three head, two tail, one untrained


def _h(image_id: str, cfg: AuditConfig = CFG) -> float:
    return split_hash(image_id, cfg.split_salt)


def _audit(root, cfg: AuditConfig = CFG, keep=None):
    return audit(import_catalogue(str(root)).rows, cfg, keep_splits=keep)


def test_a_catalogue_without_test_rows_gets_a_carved_head_test_split(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", COUNTS)
    res = _audit(root)
    imgs = res.images
    hashes = imgs["image_id"].map(_h)
    in_band = (hashes >= CFG.val_fraction) & (hashes < CFG.val_fraction + CFG.test_fraction)
    head = imgs["sku_id"].str.startswith("h")
    # exactly the head images in the hash band, and nothing else
    assert ((imgs["split"] == "test") == (head & in_band)).all()
    test = imgs[imgs["split"] == "test"]
    assert set(test["sku_id"]) <= {"h1", "h2", "h3"} and len(test) > 0
    # the share: close to test_fraction of the head's images (the hash is uniform), disjoint from validation
    share = len(test) / int(head.sum())
    assert 0.03 <= share <= 0.2
    assert not (test["image_id"].map(_h) < CFG.val_fraction).any()
    # every trained class keeps train images; carving moves no class to another tier
    assert (res.classes.set_index("sku_id").loc[["h1", "h2", "h3", "t1", "t2"], "n_train"] > 0).all()
    assert res.classes.set_index("sku_id")["tier"].to_dict() == {
        "h1": "head",
        "h2": "head",
        "h3": "head",
        "t1": "tail",
        "t2": "tail",
        "u": "untrained",
    }
    s = res.summary
    assert s["test_split"] == "carved" and s["test_fraction"] == CFG.test_fraction
    assert s["test_carve"]["n_images"] == len(test) and s["test_carve"]["n_classes"] == test["sku_id"].nunique()
    assert s["test_carve"]["fraction"] == CFG.test_fraction and s["split_counts"]["test"] == len(test)


def test_tail_and_untrained_classes_keep_their_images(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", COUNTS)
    carved = _audit(root).images.set_index("image_id")
    plain = _audit(root, AuditConfig(min_samples=20, min_shots=5, test_fraction=0.0)).images.set_index("image_id")
    small = carved["sku_id"].isin(["t1", "t2", "u"])
    assert small.sum() == 17
    pd.testing.assert_series_equal(carved.loc[small, "split"], plain.loc[small, "split"])
    # the head's other images keep their hash split too: only the carved ones moved
    moved = carved["split"] != plain["split"]
    assert (carved.loc[moved, "split"] == "test").all() and (plain.loc[moved, "split"] == "train").all()


def test_zero_disables_the_carve(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", COUNTS)
    res = _audit(root, AuditConfig(min_samples=20, min_shots=5, test_fraction=0.0))
    assert not (res.images["split"] == "test").any()
    assert res.summary["test_split"] == "none" and res.summary["test_carve"]["n_images"] == 0
    assert "test" not in res.summary["split_counts"]
    with pytest.raises(ValueError, match="test_fraction"):
        AuditConfig(test_fraction=1.0)


def test_the_carve_is_stable_on_re_audit_and_when_a_batch_adds_images(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", COUNTS)
    first = _audit(root)
    again = _audit(root, keep=first.images)
    pd.testing.assert_frame_equal(again.images, first.images)
    assert _audit(root).images.equals(first.images)  # and without the previous audit: the same hash, the same rows
    # a batch: more images of a head class, of a tail class that becomes head, and a new SKU
    seed = 10_000
    for sku, n in {"h1": 30, "t1": 20, "new": 30}.items():
        (root / sku).mkdir(exist_ok=True)
        for i in range(n):
            (root / sku / f"batch-{i:03d}.png").write_bytes(image_bytes(seed))
            seed += 1
    grown = _audit(root, keep=first.images)
    before = first.images.set_index("image_id")["split"]
    after = grown.images.set_index("image_id")["split"]
    assert after.loc[before.index].to_dict() == before.to_dict()  # existing rows never change split
    fresh = grown.images[~grown.images["image_id"].isin(before.index)]
    hashes = fresh["image_id"].map(_h)
    in_band = (hashes >= CFG.val_fraction) & (hashes < CFG.val_fraction + CFG.test_fraction)
    assert ((fresh["split"] == "test") == in_band).all()  # h1, t1 (now head) and new are head: carved by the hash
    assert grown.summary["test_split"] == "carved"


def test_a_given_test_split_and_pinned_rows_are_untouched(tmp_path):
    (tmp_path / "img").mkdir()
    lines = ["image_uri,sku_id,split"]
    for j, sku in enumerate(["a", "b"]):
        for i in range(40):
            (tmp_path / "img" / f"{sku}{i}.png").write_bytes(image_bytes(1000 * j + i))
            split = "test" if (sku == "a" and i < 5) else ""
            lines.append(f"img/{sku}{i}.png,{sku},{split}")
    man = tmp_path / "given.csv"
    man.write_text("\n".join(lines) + "\n")
    res = audit(import_catalogue(str(man)).rows, CFG)
    test = res.images[res.images["split"] == "test"]
    assert len(test) == 5 and test["split_pinned"].all() and set(test["sku_id"]) == {"a"}
    assert res.summary["test_split"] == "given" and res.summary["test_carve"]["n_images"] == 0
    plain = audit(import_catalogue(str(man)).rows, AuditConfig(min_samples=20, min_shots=5, test_fraction=0.0))
    pd.testing.assert_frame_equal(res.images, plain.images)
    # rows a manifest marks "train" ("not test") are never carved; unmarked rows next to them are
    marked = [ln[: ln.rfind(",")] + ",train" if ",a," in ln else ln for ln in lines[1:]]
    unmarked = [ln for ln in lines[1:] if ",b," in ln]
    man2 = tmp_path / "train_marked.csv"
    man2.write_text("\n".join(["image_uri,sku_id,split", *[m for m in marked if ",a," in m], *unmarked]) + "\n")
    res2 = audit(import_catalogue(str(man2)).rows, CFG)
    assert res2.summary["test_split"] == "carved"
    assert set(res2.images.loc[res2.images["split"] == "test", "sku_id"]) == {"b"}
    # a carved split is dropped when the catalogue gains a given test split
    res3 = audit(import_catalogue(str(man)).rows, CFG, keep_splits=res2.images)
    assert set(res3.images.loc[res3.images["split"] == "test", "image_id"]) == set(test["image_id"])


def test_a_class_is_never_left_without_a_train_image(tmp_path):
    root = write_folder_catalogue(tmp_path / "cat", {"h": 25, "g": 30})
    # a band that covers (almost) every hash: carving would take a class's every image, so it takes none of it
    res = _audit(root, AuditConfig(min_samples=20, min_shots=5, val_fraction=0.0, test_fraction=0.999999))
    assert (res.classes["n_train"] > 0).all()
    assert res.summary["test_split"] == "none"


def test_the_share_is_set_from_the_environment(monkeypatch):
    from skurec_resources import default_resources

    monkeypatch.setenv("SKUREC_TEST_FRACTION", "0")
    assert default_resources()["catalogue"].audit_config().test_fraction == 0.0
    monkeypatch.setenv("SKUREC_TEST_FRACTION", "0.2")
    assert default_resources()["catalogue"].audit_config().test_fraction == 0.2
    monkeypatch.setenv("SKUREC_TEST_FRACTION", "a lot")
    with pytest.raises(ValueError, match="SKUREC_TEST_FRACTION"):
        default_resources()
