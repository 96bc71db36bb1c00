"""Why this answer: exemplars chosen at publication, stored float16 in the SHA-256 verified bundle, and the nearest
training images of each top-k SKU (Recognizer.explain / predict(explain=...) / `skurec predict --explain`)."""

from __future__ import annotations

import numpy as np
import pytest
from support.deploy import deploy_first, make_workspace

from skurec.deployment.bundle import load_published
from skurec.deployment.explain import Exemplars, select_exemplars
from skurec.embeddings.training_data import load_training_data
from skurec.layout import BUNDLE_EXEMPLARS_INDEX, BUNDLE_EXEMPLARS_VECTORS, model_dir
from skurec.store.model_store import ModelStore, ModelStoreError


def test_exemplars_are_published_with_the_model_and_hash_checked(tmp_path):
    ws = make_workspace(tmp_path, n_classes=6, per_class=14)
    model_id = deploy_first(ws)
    files = ModelStore(ws).load_files(model_id)
    assert BUNDLE_EXEMPLARS_VECTORS in files and BUNDLE_EXEMPLARS_INDEX in files
    published = load_published(ws, model_id)
    ex = published.exemplars
    assert ex is not None and ex.vectors.shape == (6 * 8, 16)  # 8 per SKU (each has 12 train images)
    data = load_training_data(ws)
    train_ids = set(data.train.image_ids)
    assert all(r["image_id"] in train_ids and r["image_uri"].startswith("memory://") for r in ex.rows)
    # the nearest exemplars of a training image's own SKU include that very image (similarity ~1, float16)
    i = data.train.image_ids.index(ex.rows[5]["image_id"])
    near = ex.nearest(data.train.X[i], [str(data.train.y[i]), "c0" if data.train.y[i] != "c0" else "c1"], n=2)
    own = near[str(data.train.y[i])]
    assert own[0]["image_id"] == ex.rows[5]["image_id"] and own[0]["similarity"] == pytest.approx(1.0, abs=2e-3)
    assert own[0]["similarity"] >= own[1]["similarity"]
    other = [k for k in near if k != str(data.train.y[i])][0]
    assert near[other][0]["similarity"] < own[0]["similarity"]
    # altered exemplar bytes are refused by the model store like any other bundle file
    path = ws.local_path(model_dir(model_id), BUNDLE_EXEMPLARS_VECTORS)
    blob = bytearray(open(path, "rb").read())
    blob[-3] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(ModelStoreError):
        load_published(ws, model_id)


def test_select_exemplars_spreads_over_each_class():
    rng = np.random.default_rng(0)
    a = np.asarray([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.6, 0.8]])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    X = np.concatenate([a, -a])
    y = np.asarray(["a"] * 4 + ["b"] * 4)
    pick = select_exemplars(X, y, per_class=2)
    assert len(pick) == 4 and set(y[pick[:2]]) == {"a"} and set(y[pick[2:]]) == {"b"}
    # the second exemplar of a class is the one farthest from the first
    first, second = X[pick[0]], X[pick[1]]
    assert second @ first == pytest.approx(min(X[:4] @ first))
    assert (
        Exemplars(X[pick].astype(np.float32), [{"sku_id": s} for s in y[pick]]).nearest(rng.normal(size=2), ["zz"])[
            "zz"
        ]
        == []
    )


def test_error_gallery_shows_each_error_beside_the_nearest_images_of_both_skus():
    import io

    from PIL import Image
    from support.loop import sku_png

    from skurec.deployment.explain import error_gallery_png, gallery_rows

    rng = np.random.default_rng(1)
    Xt = rng.normal(size=(12, 8))
    Xt /= np.linalg.norm(Xt, axis=1, keepdims=True)
    yt = np.asarray(["a"] * 6 + ["b"] * 6)
    Xe, ye = Xt[[0, 7, 8]] + 0.01, np.asarray(["a", "b", "b"])
    Xe /= np.linalg.norm(Xe, axis=1, keepdims=True)
    pred = np.asarray(["b", "b", "a"])  # two errors
    rows = gallery_rows(Xe, ye, pred, Xt, yt, ["a", "b"], n=2)
    assert [(r["true"], r["pred"]) for r in rows] == [("a", "b"), ("b", "a")]
    assert rows[0]["near_true"][0][0] == 0  # the query's own twin among the true SKU's training images
    assert all(yt[j] == "b" for j, _ in rows[0]["near_pred"]) and all(yt[j] == "a" for j, _ in rows[0]["near_true"])
    assert gallery_rows(Xe, ye, pred, Xt, yt, ["zz"]) == []
    colour = {"a": "sku-red", "b": "sku-blue"}
    png = error_gallery_png(
        rows, lambda i: sku_png(colour[str(ye[i])], i), lambda j: None if j == 0 else sku_png(colour[str(yt[j])], j)
    )
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size[0] > img.size[1]  # 1 + 2 x 2 tiles per row, 2 rows
