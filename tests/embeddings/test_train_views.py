"""Train-time augmented views in the pipeline (issue 12): ``SKUREC_ENCODER_TRAIN_VIEWS`` = K embeds K extra views
of every active train image once, under their own cache encoder ids, in the image's shard; ``load_training_data``
fits on train + views while val / test and lineage stay exactly as without views. K = 0 changes nothing.

Uses ``tiny_random_vit`` (RANDOM weights, tests only). The determinism of ``train_views`` itself is tested in
``tests/encoders/test_encoder_options.py``.
"""

from __future__ import annotations

import collections
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from support.files import image_bytes, write_folder_catalogue

from skurec import layout
from skurec.deployment.training_table import image_ids_sha256, training_table, training_table_sha256
from skurec.embeddings.cache import EmbeddingCache, shard_of, shard_tag
from skurec.embeddings.training_data import TrainingDataError, load_training_data
from skurec.encoders import load_encoder
from skurec.encoders import views as views_mod
from skurec.encoders.base import FrozenEncoder
from skurec.encoders.views import check_train_view_config, train_view, train_views, view_encoder_id
from skurec.images import decode_rgb
from skurec.store.training_artifacts import rebuild_needed
from skurec.store.workspace import Workspace
from skurec_assets.embeddings import image_embeddings
from skurec_assets.ingest import audited_catalogue
from skurec_resources import CatalogueResource, EncoderResource, StorageResource, default_resources

SHARD_STEP = "image_embeddings.embed_shard["
N_SHARDS = 2


def _run(work: Path, cat: Path, **encoder_kwargs):
    resources = {
        "storage": StorageResource(workdir=str(work)),
        "catalogue": CatalogueResource(location=str(cat), min_samples=3),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=8, device="cpu", num_workers=1, **encoder_kwargs),
    }
    config = {"ops": {"image_embeddings": {"ops": {"plan_embedding_shards": {"config": {"n_shards": N_SHARDS}}}}}}
    result = dg.materialize([audited_catalogue, image_embeddings], resources=resources, run_config=config)
    assert result.success
    return result


def _meta(result) -> dict:
    (mat,) = result.asset_materializations_for_node("image_embeddings")
    return {k: v.value for k, v in mat.metadata.items()}


def _shard_steps(result) -> set[str]:
    return {
        e.step_key
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT" and e.step_key.startswith(SHARD_STEP)
    }


def _data_version(result) -> str:
    (mat,) = result.asset_materializations_for_node("image_embeddings")
    return mat.tags["dagster/data_version"]


def _files(work: Path, encoder_id: str) -> dict[str, int]:
    """Cache parts of one encoder id with their mtimes (a part rewritten, added or compacted shows)."""
    d = work / EmbeddingCache(Workspace(str(work))).rel_dir(encoder_id)
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*.parquet"))}


def _train_ids(work: Path) -> list[str]:
    images = Workspace(str(work)).read_table("images")
    return sorted(images[images["active"] & (images["split"] == "train")]["image_id"])


class _Counter:
    """Counts encoder forward rows and the train views made, (image_id, j, seed), in this process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.rows = 0
        self.views: collections.Counter = collections.Counter()
        forward, make_view = FrozenEncoder.forward_batch, views_mod.train_view

        def counting_forward(enc, x):
            self.rows += int(x.shape[0])
            return forward(enc, x)

        def counting_view(image, index, seed, image_id):
            self.views[(image_id, index, seed)] += 1
            return make_view(image, index, seed, image_id)

        monkeypatch.setattr(FrozenEncoder, "forward_batch", counting_forward)
        monkeypatch.setattr(views_mod, "train_view", counting_view)

    def reset(self) -> None:
        self.rows = 0
        self.views.clear()


def test_train_view_is_view_j_of_train_views_and_config_is_checked() -> None:
    rng = np.random.default_rng(0)
    from PIL import Image

    img = Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8"), "RGB")
    for j, v in enumerate(train_views(img, 3, seed=4, image_id="x")):
        assert np.array_equal(np.asarray(train_view(img, j, 4, "x")), np.asarray(v))
    assert check_train_view_config(3, 7) == (3, 7)
    for bad in (-1, 1.5, True, views_mod.MAX_TRAIN_VIEWS + 1):
        with pytest.raises(ValueError, match="train_views"):
            check_train_view_config(bad, 0)
    with pytest.raises(ValueError, match="train_views"):
        EncoderResource(name="tiny_random_vit", train_views=-2).train_view_config()


def test_env_vars_configure_train_views(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKUREC_ENCODER_TRAIN_VIEWS", "3")
    monkeypatch.setenv("SKUREC_ENCODER_TRAIN_VIEW_SEED", "7")
    with dg.build_resources({"encoder": default_resources()["encoder"]}) as res:
        assert res.encoder.train_view_config() == (3, 7)
        assert res.encoder.options() == {}  # not an encoder option: the encoder id is unchanged
    monkeypatch.delenv("SKUREC_ENCODER_TRAIN_VIEWS")
    monkeypatch.delenv("SKUREC_ENCODER_TRAIN_VIEW_SEED")
    with dg.build_resources({"encoder": default_resources()["encoder"]}) as res:
        assert res.encoder.train_view_config() == (0, 0)


def test_train_views_are_embedded_once_per_image_view_and_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cat = write_folder_catalogue(tmp_path / "cat", {"a": 8, "b": 8, "c": 8})
    work = tmp_path / "work"
    ws = Workspace(str(work))
    cache = EmbeddingCache(ws)
    count = _Counter(monkeypatch)
    base_id = load_encoder("tiny_random_vit", device="cpu").encoder_id

    # K = 0 (the default): exactly today's pipeline — encoder id, documents, cache folders, data version.
    r0 = _run(work, cat, train_views=0, train_view_seed=3)
    m0 = _meta(r0)
    n_images = m0["n_requested"]
    assert m0["encoder_id"] == base_id and not count.views and count.rows == n_images
    assert ws.read_json(layout.CURRENT_ENCODER) == load_encoder("tiny_random_vit", device="cpu").identity()
    assert sorted(p.name for p in (work / layout.EMBEDDINGS_DIR).iterdir() if p.is_dir()) == [base_id]
    assert _data_version(r0) == f"{base_id}:{n_images}:{n_images}"
    assert not any(k.startswith(("train_view", "n_view")) for k in m0)
    data0 = load_training_data(ws)
    assert data0.fit_split is None and data0.fit is data0.train
    train_ids = _train_ids(work)
    assert sorted(data0.train.image_ids) == train_ids and 0 < len(train_ids) < n_images  # some val rows
    plain_files = _files(work, base_id)

    # K = 2: the views of the train images only, each once; no plain vector is embedded again.
    count.reset()
    r1 = _run(work, cat, train_views=2)
    m1 = _meta(r1)
    view_ids = [view_encoder_id(base_id, j, 0) for j in range(2)]
    assert m1["encoder_id"] == base_id and m1["n_computed"] == 0
    assert m1["train_views"] == 2 and m1["n_view_computed"] == 2 * len(train_ids) and m1["n_view_failed"] == 0
    assert count.rows == 2 * len(train_ids)
    assert count.views == {(i, j, 0): 1 for i in train_ids for j in range(2)}
    assert _files(work, base_id) == plain_files
    doc = ws.read_json(layout.CURRENT_ENCODER)
    assert doc["encoder_id"] == base_id and doc["options"] == data0.encoder["options"]
    assert doc["train_views"] == {"k": 2, "seed": 0, "aug_version": views_mod.AUG_VERSION, "encoder_ids": view_ids}
    assert _data_version(r1) != _data_version(r0)
    for view_id in view_ids:  # one part per shard, holding that shard's train images (never val / test)
        assert cache.cached_ids(view_id) == set(train_ids)
        by_shard = collections.Counter(shard_of(i, N_SHARDS) for i in train_ids)
        for s, n in by_shard.items():
            (part,) = cache.parts(view_id, shard=(s, N_SHARDS))
            assert shard_tag(s, N_SHARDS) in part
            ids = ws.read_parquet(part).column("image_id").to_pylist()
            assert len(ids) == n and {shard_of(i, N_SHARDS) for i in ids} == {s}
    # a view row is the encoder's ordinary embedding of train_view(image) (deterministic per image, view, seed)
    images = ws.read_table("images").set_index("image_id")
    some = train_ids[:3]
    enc = load_encoder("tiny_random_vit", device="cpu")
    decoded = [decode_rgb(Path(images.loc[i, "image_uri"]).read_bytes()) for i in some]
    expected = enc.embed_images([train_view(im, 1, 0, i) for im, i in zip(decoded, some)])
    np.testing.assert_allclose(cache.load(view_ids[1], some)[1], expected, atol=1e-5)
    assert not np.allclose(cache.load(view_ids[1], some)[1], cache.load(base_id, some)[1], atol=1e-3)

    # Training data: fit = train + 2 views (view-major, ids and labels repeated); val / test and lineage unchanged.
    data = load_training_data(ws)
    n_train = len(data.train)
    assert len(data.fit) == 3 * n_train and data.fit.X.shape == (3 * n_train, data.train.X.shape[1])
    assert data.fit.image_ids == data.train.image_ids * 3
    assert list(data.fit.y) == list(data.train.y) * 3
    np.testing.assert_array_equal(data.fit.X[:n_train], data.train.X)
    np.testing.assert_array_equal(data.fit.X[2 * n_train :], cache.load(view_ids[1], data.train.image_ids)[1])
    for name in ("train", "val", "test"):
        a, b = getattr(data, name), getattr(data0, name)
        assert a.image_ids == b.image_ids and list(a.y) == list(b.y)
        np.testing.assert_array_equal(a.X, b.X)
    pd.testing.assert_frame_equal(training_table(data), training_table(data0))
    assert training_table_sha256(training_table(data)) == training_table_sha256(training_table(data0))
    assert image_ids_sha256(data.train.image_ids) == image_ids_sha256(data0.train.image_ids)
    assert data.encoder["train_views"]["k"] == 2  # lineage (manifest / card encoder) names the views

    # Again: nothing to embed, no shard step, no file touched.
    view_files = {v: _files(work, v) for v in view_ids}
    count.reset()
    r2 = _run(work, cat, train_views=2)
    assert count.rows == 0 and not count.views and _shard_steps(r2) == set()
    assert _meta(r2)["n_view_computed"] == 0 and _data_version(r2) == _data_version(r1)
    assert {v: _files(work, v) for v in view_ids} == view_files and _files(work, base_id) == plain_files

    # K 2 -> 3: only view 2 is embedded.
    count.reset()
    _run(work, cat, train_views=3)
    assert count.views == {(i, 2, 0): 1 for i in train_ids} and count.rows == len(train_ids)
    assert {v: _files(work, v) for v in view_ids} == view_files and _files(work, base_id) == plain_files
    assert len(load_training_data(ws).fit) == 4 * n_train

    # Another seed: every view again, never a plain row.
    count.reset()
    _run(work, cat, train_views=3, train_view_seed=5)
    assert count.views == {(i, j, 5): 1 for i in train_ids for j in range(3)} and count.rows == 3 * len(train_ids)
    assert _files(work, base_id) == plain_files
    assert ws.read_json(layout.CURRENT_ENCODER)["train_views"]["seed"] == 5

    # New images: their plain vectors, and the views of those that are train rows, in their shards only.
    for i in range(4):
        (cat / "b" / f"new{i}.png").write_bytes(image_bytes(700 + i))
    count.reset()
    r5 = _run(work, cat, train_views=3, train_view_seed=5)
    new_train = sorted(set(_train_ids(work)) - set(train_ids))
    assert _meta(r5)["n_computed"] == 4 and count.views == {(i, j, 5): 1 for i in new_train for j in range(3)}
    assert count.rows == 4 + 3 * len(new_train)
    ran = {int(k[len(SHARD_STEP) + 1 : len(SHARD_STEP) + 4]) for k in _shard_steps(r5)}
    new_ids = set(ws.read_table("images")["image_id"]) - set(images.index)
    assert ran == {shard_of(i, N_SHARDS) for i in new_ids}


def test_missing_view_rows_beyond_five_percent_are_a_clear_error(tmp_path: Path) -> None:
    cat = write_folder_catalogue(tmp_path / "cat", {"a": 12, "b": 12})
    work = tmp_path / "work"
    ws = Workspace(str(work))
    _run(work, cat, train_views=2, train_view_seed=1)
    data = load_training_data(ws)
    n_train = len(data.train)
    view_ids = ws.read_json(layout.CURRENT_ENCODER)["train_views"]["encoder_ids"]
    cache = EmbeddingCache(ws)
    victim = data.train.image_ids[0]
    # one view row lost (< 5 % of 2 x n_train): trained on the rest
    for part in cache.parts(view_ids[0]):
        path = work / part
        table = pq.read_table(path)
        pq.write_table(table.filter(pa_compute_not_equal(table, victim)), path)
    fit = load_training_data(ws).fit
    assert len(fit) == 3 * n_train - 1 and fit.image_ids.count(victim) == 2
    # a whole view lost: TrainingDataError naming the views and the remedy
    for part in cache.parts(view_ids[1]):
        (work / part).unlink()
    with pytest.raises(TrainingDataError, match="train-time view rows.*re-materialise image_embeddings"):
        load_training_data(ws)


def pa_compute_not_equal(table, image_id: str):
    import pyarrow.compute as pc

    return pc.not_equal(table.column("image_id"), image_id)


def test_rebuild_is_needed_when_the_train_views_change(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "work"))
    ident = load_encoder("tiny_random_vit", device="cpu").identity()
    ws.write_json(layout.CURRENT_ENCODER, ident)
    ws.write_json(layout.TRAINING_MANIFEST, {"encoder": ident, "catalogue_snapshot": "", "code_version": "x"})
    assert rebuild_needed(ws, code_version="x")[0] is False  # K = 0: as before
    views = {
        "k": 2,
        "seed": 0,
        "aug_version": 1,
        "encoder_ids": [view_encoder_id(ident["encoder_id"], j, 0) for j in (0, 1)],
    }
    ws.write_json(layout.CURRENT_ENCODER, {**ident, "train_views": views})
    needed, why = rebuild_needed(ws, code_version="x")
    assert needed and "train-time views" in why


def test_the_fast_path_fits_new_skus_on_their_train_views_too(tmp_path: Path) -> None:
    """A labelled batch extends the deployed model with the new images AND their cached train-time views (the
    rows a full rebuild would fit on); the training table still lists each image once."""
    from support.deploy import deploy_model

    from skurec.deployment.candidates import prepare_fast_path
    from skurec.embeddings.training_data import Split, TrainingData
    from skurec.models import l2_normalize, load_classifier, train_specialist_hierarchy

    rng = np.random.default_rng(0)
    enc = load_encoder("tiny_random_vit", device="cpu")
    centres = rng.normal(size=(6, enc.dim))

    def rows(c: int, n: int) -> np.ndarray:
        return l2_normalize(centres[c] + 0.4 * rng.normal(size=(n, enc.dim))).astype(np.float32)

    X = np.concatenate([rows(c, 10) for c in range(5)])
    y = np.repeat([f"s{c}" for c in range(5)], 10)
    Xv, yv = np.concatenate([rows(c, 3) for c in range(5)]), np.repeat([f"s{c}" for c in range(5)], 3)
    model = train_specialist_hierarchy(X, y, Xv, yv, device="cpu").model
    ws = Workspace(str(tmp_path / "work"))
    ids = [f"old{k}" for k in range(len(y))]
    deploy_model(ws, model, enc, ids, y, n_superclasses=model.n_superclasses)

    new_ids, X_new, X_views = [f"new{k}" for k in range(4)], rows(5, 4), rows(5, 8)  # two views of each new image
    train = Split(ids + new_ids, np.concatenate([X, X_new]), np.concatenate([y, ["s5"] * 4]))
    fit = Split(
        train.image_ids + new_ids * 2, np.concatenate([train.X, X_views]), np.concatenate([train.y, ["s5"] * 8])
    )
    empty = Split([], np.zeros((0, enc.dim), np.float32), np.zeros(0, dtype=str))
    data = TrainingData(enc.identity(), train, empty, empty, sorted(set(train.y)), fit_split=fit)
    candidate, why, details = prepare_fast_path(ws, data)
    assert candidate is not None, why
    assert details["n_images_added"] == 4 and details["n_fit_rows_added"] == 12
    assert candidate.table["image_id"].tolist().count("new0") == 1  # lineage: each image once
    base = load_classifier(model.to_files())
    with_views = base.add_classes(np.concatenate([X_new, X_views]), np.asarray(["s5"] * 12)).model
    images_only = base.add_classes(X_new, np.asarray(["s5"] * 4)).model
    # the same tensors as the deployed model extended with the images and their views, not with the images alone
    got = _tensors(candidate.model.to_files())
    assert _same_tensors(got, _tensors(with_views.to_files()))
    assert not _same_tensors(got, _tensors(images_only.to_files()))


def _tensors(files: dict) -> dict:
    """Every tensor of a model's files (safetensors headers order their metadata arbitrarily: compare arrays)."""
    from safetensors.numpy import load

    return {f"{k}/{name}": a for k, v in files.items() if k.endswith(".safetensors") for name, a in load(v).items()}


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.allclose(a[k], b[k], atol=1e-6) for k in a)
