"""load_training_data: one join of the catalogue with the embedding cache per catalogue state, shared by its callers."""

from __future__ import annotations

import numpy as np
import pytest
from support.deploy import make_workspace

from skurec.embeddings import training_data
from skurec.embeddings.cache import EmbeddingCache
from skurec.embeddings.training_data import load_training_data


@pytest.fixture
def counted_loads(monkeypatch):
    loads = []
    real = training_data._load
    monkeypatch.setattr(training_data, "_load", lambda *a, **k: loads.append(1) or real(*a, **k))
    return loads


def test_same_snapshot_loads_once(tmp_path, counted_loads):
    ws = make_workspace(tmp_path, n_classes=3, per_class=6)
    a = load_training_data(ws)
    b = load_training_data(ws)
    assert a is b and len(counted_loads) == 1


def test_a_changed_table_or_cache_loads_afresh(tmp_path, counted_loads):
    ws = make_workspace(tmp_path, n_classes=3, per_class=6)
    first = load_training_data(ws)
    images = ws.read_table("images")
    flipped = images.copy()
    row = flipped.index[flipped["split"] == "train"][0]
    flipped.loc[row, "active"] = False
    ws.write_table("images", flipped)
    second = load_training_data(ws)
    assert len(counted_loads) == 2 and len(second.train) == len(first.train) - 1

    ws.write_table("images", images)
    cache = EmbeddingCache(ws)
    encoder_id = first.encoder_id
    _, X = cache.load(encoder_id)
    cache._write_part(encoder_id, ["f" * 64], np.ones((1, X.shape[1]), np.float32))
    load_training_data(ws)
    assert len(counted_loads) == 3  # a new cache part is a new snapshot
