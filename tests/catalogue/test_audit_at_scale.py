"""What keeps the audit's cost of a batch small next to a large catalogue, each against the plain definition it
replaces: splits settled for every class at once, per-class counts in one table operation, rows as dicts column by
column, and each folder's real path resolved once per import."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from skurec.catalogue.audit import HEAD, TAIL, UNTRAINED, AuditConfig, _class_table, records
from skurec.catalogue.importer import RealPaths, import_catalogue
from skurec.catalogue.splits import _settle_splits


def _settle_one_class_at_a_time(images: pd.DataFrame, tier: dict) -> None:
    """The rule as it was written first (a loop over the classes)."""
    for sku, grp in images[images["active"]].groupby("sku_id"):
        free = grp[~grp["split_pinned"]]
        n_train = int((grp["split"] == "train").sum())
        if n_train == 0:
            back = free[free["split"] == "val"]
            if len(back):
                images.loc[back["_h"].idxmax(), "split"] = "train"
        elif tier.get(sku) == HEAD and not (grp["split"] == "val").any() and len(free) and n_train >= 2:
            images.loc[free["_h"].idxmin(), "split"] = "val"


def _random_images(seed: int, n_skus: int = 60) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n_skus):
        for _ in range(int(rng.integers(1, 9))):
            pinned = rng.random() < 0.2
            rows.append(
                {
                    "sku_id": f"s{j:03d}",
                    "split": rng.choice(["train", "val", "test"])
                    if pinned
                    else rng.choice(["train", "val"], p=[0.8, 0.2]),
                    "split_pinned": pinned,
                    "_h": float(rng.random()),
                    "sku_name": None if rng.random() < 0.5 else f"name {j} {rng.integers(3)}",
                    "group_id": None,
                }
            )
    images = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)  # classes interleaved
    tier = {f"s{j:03d}": [HEAD, TAIL, UNTRAINED][int(rng.integers(3))] for j in range(n_skus)}
    images["active"] = images["sku_id"].map(tier).isin([HEAD, TAIL])
    return images, tier


@pytest.mark.parametrize("seed", range(6))
def test_splits_settled_for_every_class_at_once_equal_the_per_class_rule(seed):
    images, tier = _random_images(seed)
    expected = images.copy()
    _settle_one_class_at_a_time(expected, tier)
    _settle_splits(images, tier)
    pd.testing.assert_frame_equal(images, expected)
    assert (expected["split"] != _random_images(seed)[0]["split"]).any()  # the rule did move images here


def test_the_class_table_counts_each_split_per_class():
    images, tier = _random_images(7)
    classes = _class_table(images, AuditConfig(), tier).set_index("sku_id")
    for sku, grp in images.groupby("sku_id"):
        row = classes.loc[sku]
        assert (row["n_images"], row["n_train"], row["n_val"], row["n_test"]) == (
            len(grp),
            (grp["split"] == "train").sum(),
            (grp["split"] == "val").sum(),
            (grp["split"] == "test").sum(),
        )
        names = grp["sku_name"].dropna()
        assert row["sku_name"] == names.iloc[0] if len(names) else pd.isna(row["sku_name"])
        assert row["tier"] == tier[sku] and row["status"] == (
            "active" if tier[sku] != UNTRAINED else "below_min_samples"
        )
    only_train = _class_table(images.assign(split="train"), AuditConfig(), tier)
    assert (only_train["n_val"] == 0).all() and (only_train["n_test"] == 0).all()


def test_rows_as_dicts_equal_pandas_records():
    frame = pd.DataFrame(
        {
            "int64_ext": pd.array([1, None, 3], dtype="Int64"),
            "string_na": pd.array(["x", None, "z"], dtype="string"),
            "string_nan": pd.array(["x", None, "z"], dtype=pd.StringDtype(na_value=np.nan)),
            "boolean": pd.array([True, None, False], dtype="boolean"),
            "float_ext": pd.array([0.5, None, 1.5], dtype="Float64"),
            "object": [None, "q", np.nan],
            "numpy_scalars": pd.Series([np.int64(4), np.float32(0.25), np.bool_(True)], dtype=object),
            "int64": np.asarray([1, 2, 3], dtype=np.int64),
            "float64": [0.1, np.nan, 2.0],
            "bool": [True, False, True],
            "when": pd.to_datetime(["2026-01-01", None, "2026-01-03"]),
        }
    )
    ours, theirs = records(frame), frame.to_dict("records")
    assert len(ours) == len(theirs) == 3
    for x, y in zip(ours, theirs):
        assert list(x) == list(y)
        for k in x:
            same = x[k] is y[k] or (type(x[k]) is type(y[k]) and (x[k] == y[k] or (pd.isna(x[k]) and pd.isna(y[k]))))
            assert same, (k, x[k], y[k])


def test_real_paths_resolved_per_folder_equal_os_realpath(tmp_path):
    """Symlinked files and folders, dangling links, relative paths, '..': the cached resolution is realpath's."""
    (tmp_path / "cat" / "a" / "deep").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "cat" / "a" / "1.png").write_bytes(b"x")
    (tmp_path / "out" / "2.png").write_bytes(b"y")
    os.symlink(tmp_path / "out" / "2.png", tmp_path / "cat" / "a" / "link.png")  # a file link leading outside
    os.symlink(tmp_path / "out", tmp_path / "cat" / "b")  # a folder link
    os.symlink(tmp_path / "nowhere", tmp_path / "cat" / "a" / "dangling.png")
    os.symlink("../a", tmp_path / "cat" / "a" / "deep" / "up")  # a relative folder link
    paths = [
        tmp_path / "cat" / "a" / "1.png",
        tmp_path / "cat" / "a" / "link.png",
        tmp_path / "cat" / "b" / "2.png",
        tmp_path / "cat" / "a" / "dangling.png",
        tmp_path / "cat" / "a" / "deep" / "up" / "1.png",
        tmp_path / "cat" / "a" / "deep" / ".." / "1.png",
        tmp_path / "cat" / "a" / "missing.png",
        tmp_path / "cat",
    ]
    real = RealPaths()
    for p in [*paths, *paths]:  # twice: the second time from the cache
        assert real(str(p)) == os.path.realpath(p)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert RealPaths()("cat/b/2.png") == os.path.realpath("cat/b/2.png")
    finally:
        os.chdir(cwd)
    # the import still refuses the file whose link leads outside the catalogue, and reads the others
    rows = import_catalogue(str(tmp_path / "cat")).rows.set_index("image_uri_raw")
    assert rows.loc["a/link.png", "import_error"] == "path_outside_root"
    assert rows.loc["a/1.png", "import_error"] is None
