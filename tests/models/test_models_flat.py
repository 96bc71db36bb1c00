"""The reference flat baselines (nearest prototype, cosine k-NN) and the removed flat logistic regression's bundles."""

from __future__ import annotations

import numpy as np
import pytest

from skurec.models import FlatKNN, FlatPrototype, ModelFormatError, l2_normalize
from skurec.models.registry import REMOVED_KINDS, load_classifier, model_kinds
from skurec.models.serialization import pack


def _data(seed: int, n_classes: int, dim: int, per_class: int, sep: float):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), per_class)
    X = means[y] + rng.standard_normal((y.size, dim))
    return means, l2_normalize(X + 3.0), np.char.add("sku", y.astype(str))  # + 3: a common component, like CNNs


def test_prototype_and_cosine_knn_baselines() -> None:
    _, X, y = _data(4, 5, 16, 12, sep=1.5)
    nn1 = FlatKNN(X, y, n_neighbors=1, device="cpu")
    assert np.all(nn1.predict_topk(X, 1).labels[:, 0] == y)  # each training row is its own nearest neighbour
    proto = FlatPrototype.fit(X, y, device="cpu")
    assert float(np.mean(proto.predict_topk(X, 1).labels[:, 0] == y)) > 0.9
    for model in (nn1, proto):
        loaded = load_classifier(model.to_files(), device="cpu")
        np.testing.assert_array_equal(loaded.predict_topk(X, 3).labels, model.predict_topk(X, 3).labels)


def test_a_stored_bundle_of_a_removed_kind_says_to_rebuild() -> None:
    """The old flat logistic regression (kind ``flat_linear``) no longer loads: a clear ModelFormatError naming the
    kind and what to do, not a KeyError or an "unknown kind"."""
    W = np.zeros((3, 4), np.float32)
    files = pack(
        "flat_linear",
        {"dim": 4, "classes": ["a", "b", "c"], "hyper_params": {}, "metrics": {}},
        {"net.0.weight": W, "net.0.bias": np.zeros(3, np.float32)},
    )
    with pytest.raises(ModelFormatError, match=r"'flat_linear' is no longer supported.*rebuild the model"):
        load_classifier(files)
    assert set(REMOVED_KINDS).isdisjoint(model_kinds())
