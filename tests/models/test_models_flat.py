"""The one flat linear baseline (full-batch L-BFGS logistic regression, C chosen on validation) and its siblings."""

from __future__ import annotations

import numpy as np
import pytest

from skurec.models import (
    EmbeddingInputError,
    FlatKNN,
    FlatLinear,
    FlatPrototype,
    fit_flat_logreg,
    l2_normalize,
    train_flat_linear,
)
from skurec.models.registry import load_classifier


def _data(seed: int, n_classes: int, dim: int, per_class: int, sep: float, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), per_class)
    X = means[y] + rng.standard_normal((y.size, dim)) + shift * rng.standard_normal((n_classes, dim))[y]
    return means, l2_normalize(X + 3.0), np.char.add("sku", y.astype(str))  # + 3: a common component, like CNNs


def test_matches_scikit_learn_objective() -> None:
    """Same objective as scikit-learn's multinomial LogisticRegression on standardised features -> same model."""
    from sklearn.linear_model import LogisticRegression

    _, X, y = _data(0, 5, 12, 30, sep=0.6)
    model = fit_flat_logreg(X, y, C=0.5, tol=1e-7, max_iter=1000, device="cpu")
    Z = (X - X.mean(0)) / X.std(0)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(Z, y)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(Z), atol=1e-4)
    assert model.metrics["trainer"] == "lbfgs_logreg" and model.metrics["C_selected_on"] == "given"


def _shifted(seed: int = 0, K: int = 10, d: int = 60, per: int = 60):
    """Train rows carry a class-specific "capture session" fingerprint in 20 low-noise dimensions that validation
    and test rows lack (like the Grocery Store's other capture sessions): a weakly regularised fit leans on it."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, d)) * 0.35
    fingerprint = np.zeros((K, d))
    fingerprint[:, :20] = rng.standard_normal((K, 20)) * 1.5
    y = np.repeat(np.arange(K), per)
    noise = rng.standard_normal((y.size, d))
    noise[:, :20] *= 0.1
    split = np.tile(np.r_[np.zeros(per // 2), np.ones(per // 4), 2 * np.ones(per // 4)], K)
    X = means[y] + noise + np.where(split[:, None] == 0, fingerprint[y], 0.0)
    return l2_normalize(X + 3.0), np.char.add("sku", y.astype(str)), split


def test_c_chosen_on_validation_beats_an_untuned_fit() -> None:
    X, y, split = _shifted()
    tr, va, te = split == 0, split == 1, split == 2
    Cs = (0.001, 0.01, 0.1, 1.0, 100.0)
    tuned = fit_flat_logreg(X[tr], y[tr], X[va], y[va], Cs=Cs, device="cpu")
    path = tuned.metrics["path"]
    assert tuned.metrics["C_selected_on"] == "val"
    best = max(path, key=lambda e: (round(e["val_top1"], 6), -e["val_loss"]))
    assert tuned.metrics["C"] == best["C"] <= 0.01
    assert [e["C"] for e in path] == sorted(e["C"] for e in path)  # walked from strong to weak regularisation

    def acc(m: FlatLinear) -> float:
        return float(np.mean(m.predict_topk(X[te], 1).labels[:, 0] == y[te]))

    untuned = fit_flat_logreg(X[tr], y[tr], C=100.0, device="cpu")
    assert acc(tuned) >= acc(untuned) + 0.04


def test_save_load_round_trip_and_alias(tmp_path) -> None:
    _, X, y = _data(2, 6, 16, 20, sep=0.8)
    model = fit_flat_logreg(X[::2], y[::2], X[1::2], y[1::2], Cs=(0.01, 0.1), device="cpu")
    files = model.to_files()
    assert all(not k.endswith((".pkl", ".pickle", ".pt")) for k in files)
    loaded = load_classifier(files, device="cpu")
    assert isinstance(loaded, FlatLinear) and loaded.metrics["C"] == model.metrics["C"]
    np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), atol=1e-6)
    again = FlatLinear.from_files(files, device="cpu")
    np.testing.assert_array_equal(again.predict_topk(X, 3).labels, model.predict_topk(X, 3).labels)
    alias = train_flat_linear(X[::2], y[::2], X[1::2], y[1::2], device="cpu")
    assert alias.metrics["trainer"] == "lbfgs_logreg"


def test_unknown_val_labels_ignored_and_clear_errors() -> None:
    _, X, y = _data(3, 4, 8, 10, sep=1.0)
    y_val = y.copy()
    y_val[:5] = "never-trained"
    model = fit_flat_logreg(X, y, X, y_val, Cs=(0.1,), device="cpu")
    assert 0.5 < model.metrics["val_top1"] <= 1.0  # scored on the 35 rows of known SKUs only
    with pytest.raises(EmbeddingInputError, match="both X_val and y_val"):
        fit_flat_logreg(X, y, X_val=X)
    with pytest.raises(EmbeddingInputError, match="at least 2 classes"):
        fit_flat_logreg(X[:10], np.full(10, "a"))
    with pytest.raises(ValueError, match="> 0"):
        fit_flat_logreg(X, y, C=0.0)


def test_prototype_and_cosine_knn_baselines() -> None:
    _, X, y = _data(4, 5, 16, 12, sep=1.5)
    nn1 = FlatKNN(X, y, n_neighbors=1, device="cpu")
    assert np.all(nn1.predict_topk(X, 1).labels[:, 0] == y)  # each training row is its own nearest neighbour
    proto = FlatPrototype.fit(X, y, device="cpu")
    assert float(np.mean(proto.predict_topk(X, 1).labels[:, 0] == y)) > 0.9


def test_c_chosen_on_a_class_subset_for_large_catalogues() -> None:
    """Above select_max_classes, C is searched on a seeded class subset, then one fit covers every SKU; the chosen C
    is the one the subset's validation search picked, and the search cost no longer grows with the catalogue."""
    X, y, split = _shifted(K=16)
    tr, va = split == 0, split == 1
    Cs = (0.001, 0.01, 0.1, 1.0, 100.0)
    model = fit_flat_logreg(X[tr], y[tr], X[va], y[va], Cs=Cs, device="cpu", select_max_classes=6)
    assert model.metrics["C_selected_on"] == "val, 6-class subset"
    sub = model.metrics["C_selection_subset"]
    best = max(sub["path"], key=lambda e: (round(e["val_top1"], 6), -e["val_loss"]))
    assert model.metrics["C"] == best["C"] and model.metrics["Cs"] == [best["C"]]
    assert sorted(model.classes) == sorted(set(y[tr]))  # the final fit covers every SKU
    full = fit_flat_logreg(X[tr], y[tr], X[va], y[va], Cs=Cs, device="cpu", select_max_classes=0)
    assert full.metrics["C_selected_on"] == "val" and "C_selection_subset" not in full.metrics
