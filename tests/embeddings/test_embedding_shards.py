"""The embedding stage fans out by hash shard of the image id (issue 14, item 3).

One shard step per shard that has images without a cached vector, each writing its own cache parts; the asset
reads the union. A batch of k new images re-embeds exactly k images and runs only the shards they fall in; changing
the number of shards re-embeds nothing; a damaged shard part is re-embedded by that shard only.
"""

from __future__ import annotations

import collections
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from support.files import image_bytes, write_folder_catalogue

from skurec.embeddings.cache import EmbeddingCache, shard_column, shard_of, shard_tag
from skurec.embeddings.encode import worker_device
from skurec.store.workspace import Workspace
from skurec_assets.embeddings import image_embeddings
from skurec_assets.ingest import audited_catalogue
from skurec_resources import CatalogueResource, EncoderResource, StorageResource

SHARD_STEP = "image_embeddings.embed_shard["


def _resources(work: Path, cat: Path) -> dict:
    return {
        "storage": StorageResource(workdir=str(work)),
        "catalogue": CatalogueResource(location=str(cat), min_samples=3),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=8, device="cpu", num_workers=1),
    }


def _run(work: Path, cat: Path, n_shards: int):
    config = {"ops": {"image_embeddings": {"ops": {"plan_embedding_shards": {"config": {"n_shards": n_shards}}}}}}
    result = dg.materialize([audited_catalogue, image_embeddings], resources=_resources(work, cat), run_config=config)
    assert result.success
    return result


def _meta(result) -> dict:
    mats = result.asset_materializations_for_node("image_embeddings")
    assert len(mats) == 1
    return {k: v.value for k, v in mats[0].metadata.items()}


def _shard_steps(result) -> dict[int, dict]:
    """Shard index -> metadata of its embed_shard step output, for the shard steps that ran in this run."""
    out = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT" and event.step_key.startswith(SHARD_STEP):
            meta = {k: v.value for k, v in event.event_specific_data.metadata.items()}
            out[int(meta["shard"])] = meta
    return out


def _ids(work: Path) -> pd.DataFrame:
    return Workspace(str(work)).read_table("images", columns=["image_id", "image_uri"])


def test_shard_of_is_stable_and_spreads_ids():
    ids = [f"{i:064x}" for i in range(4000)]
    shards = [shard_of(i, 8) for i in ids]
    assert shards == [shard_of(i, 8) for i in ids]  # deterministic (not Python's salted hash)
    counts = collections.Counter(shards)
    assert set(counts) == set(range(8)) and min(counts.values()) > 400  # roughly uniform
    assert shard_of("abc", 1) == 0
    assert (shard_column(pd.Series(ids[:50]), 8) == np.array(shards[:50])).all()
    assert shard_tag(3, 8) == "s003of008"
    with pytest.raises(ValueError):
        shard_of("abc", 0)
    with pytest.raises(ValueError):
        shard_tag(8, 8)


def test_worker_device_spreads_shards_over_gpus_only_when_unpinned():
    assert worker_device(None, 3, n_gpus=2) == "cuda:1"
    assert worker_device("cuda", 4, n_gpus=4) == "cuda:0"
    assert worker_device(None, 5, n_gpus=1) is None  # one GPU or none: the encoder's own default
    assert worker_device(None, 5, n_gpus=0) is None
    assert worker_device("cpu", 1, n_gpus=8) == "cpu"  # an explicit device is kept
    assert worker_device("cuda:1", 0, n_gpus=8) == "cuda:1"


def test_shards_fan_out_and_a_batch_runs_only_its_shards(tmp_path: Path):
    n_shards = 4
    cat = write_folder_catalogue(tmp_path / "cat", {"a": 8, "b": 8, "c": 8})
    work = tmp_path / "work"

    # Full build: every shard with images runs in its own step and writes its own parts; the union is complete.
    r1 = _run(work, cat, n_shards)
    m1 = _meta(r1)
    images = _ids(work)
    expected = collections.Counter(shard_of(i, n_shards) for i in images["image_id"])
    steps = _shard_steps(r1)
    assert set(steps) == set(expected) and len(steps) >= 3
    assert {s: m["n_computed"] for s, m in steps.items()} == dict(expected)
    assert m1["n_computed"] == 24 and m1["n_already_cached"] == 0 and m1["n_shards"] == n_shards
    assert sorted(m1["shards_embedded"]) == sorted(expected)
    cache = EmbeddingCache(Workspace(str(work)))
    encoder_id = m1["encoder_id"]
    for s in expected:  # each shard compacted into exactly one part of its own, holding only its images
        (part,) = cache.parts(encoder_id, shard=(s, n_shards))
        assert shard_tag(s, n_shards) in part
        ids = Workspace(str(work)).read_parquet(part).column("image_id").to_pylist()
        assert {shard_of(i, n_shards) for i in ids} == {s} and len(ids) == expected[s]
    ids, X = cache.load(encoder_id)
    assert sorted(ids) == sorted(images["image_id"]) and X.shape[0] == 24  # downstream reads the union
    from skurec.layout import STEP_IO_DIR

    assert not (work / STEP_IO_DIR / r1.run_id).exists()  # the steps' JSON hand-offs are removed after success

    # Nothing new: no shard step at all, the asset still materialises with the totals.
    r2 = _run(work, cat, n_shards)
    assert _shard_steps(r2) == {}
    assert _meta(r2)["n_computed"] == 0 and _meta(r2)["n_already_cached"] == 24

    # A batch of k new images: exactly k embedded, and only the shards they fall in run.
    for i in range(3):
        (cat / "b" / f"new{i}.png").write_bytes(image_bytes(900 + i))
    before = set(images["image_id"])
    r3 = _run(work, cat, n_shards)
    new_ids = sorted(set(_ids(work)["image_id"]) - before)
    assert len(new_ids) == 3
    touched = collections.Counter(shard_of(i, n_shards) for i in new_ids)
    steps3 = _shard_steps(r3)
    assert {s: m["n_computed"] for s, m in steps3.items()} == dict(touched)
    assert len(steps3) < n_shards or len(touched) == n_shards
    m3 = _meta(r3)
    assert m3["n_computed"] == 3 and m3["n_already_cached"] == 24 and m3["n_requested"] == 27

    # Another shard count re-embeds nothing (the cache is read as the union of every part).
    r4 = _run(work, cat, 3)
    assert _shard_steps(r4) == {} and _meta(r4)["n_computed"] == 0


def test_a_lost_shard_part_is_re_embedded_by_that_shard_alone(tmp_path: Path):
    n_shards = 3
    cat = write_folder_catalogue(tmp_path / "cat", {"a": 6, "b": 6})
    work = tmp_path / "work"
    m1 = _meta(_run(work, cat, n_shards))
    ws = Workspace(str(work))
    cache = EmbeddingCache(ws)
    victim = next(s for s in range(n_shards) if cache.parts(m1["encoder_id"], shard=(s, n_shards)))
    (part,) = cache.parts(m1["encoder_id"], shard=(victim, n_shards))
    lost = len(ws.read_parquet(part).column("image_id"))
    ws.write_bytes(part, b"not parquet any more")  # damaged: the plan step quarantines it

    r2 = _run(work, cat, n_shards)
    steps = _shard_steps(r2)
    assert {s: m["n_computed"] for s, m in steps.items()} == {victim: lost}
    assert _meta(r2)["n_computed"] == lost
    assert len(cache.load(m1["encoder_id"])[0]) == 12


def test_concurrent_shard_compactions_keep_each_others_parts(tmp_path: Path):
    """Shard updates only compact (and delete) their own shard's parts: two shards embedded at the same time by two
    workers cannot delete each other's vectors."""
    from skurec.encoders import load_encoder

    cat = write_folder_catalogue(tmp_path / "cat", {"a": 10})
    ws = Workspace(str(tmp_path / "work"))
    images = pd.DataFrame(
        {"image_id": [f"img{i}" for i in range(10)], "image_uri": [str(p) for p in sorted((cat / "a").iterdir())]}
    )
    enc = load_encoder("tiny_random_vit", device="cpu")
    cache = EmbeddingCache(ws, flush_rows=1)  # many parts per shard before compaction
    by_shard = collections.Counter(shard_of(i, 2) for i in images["image_id"])
    s0 = cache.update(enc, images, shard=(0, 2), compact=False, batch_size=1, num_workers=1)
    s1 = cache.update(enc, images, shard=(1, 2), batch_size=1, num_workers=1)  # compacts shard 1 only
    assert (s0.n_computed, s1.n_computed) == (by_shard[0], by_shard[1])
    assert len(cache.parts(enc.encoder_id, shard=(0, 2))) == by_shard[0]  # shard 0's parts untouched
    assert len(cache.parts(enc.encoder_id, shard=(1, 2))) == 1
    cache.compact(enc.encoder_id, shard=(0, 2))
    assert len(cache.parts(enc.encoder_id)) == 2
    assert sorted(cache.load(enc.encoder_id)[0]) == sorted(images["image_id"])
    plan = cache.plan_shards(enc.encoder_id, images, 2)
    assert plan == {s: {"n_images": by_shard[s], "n_missing": 0} for s in (0, 1)}
