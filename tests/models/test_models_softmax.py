"""The strong flat softmax, the hierarchy's global scorer chosen among LDA / softmax / both, and top-k over all SKUs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skurec.models import (
    EmbeddingInputError,
    FlatSoftmax,
    HierarchicalClassifier,
    LDARouter,
    ModelFormatError,
    SoftmaxConfig,
    SpecialistHierarchyConfig,
    choose_global_scorer,
    fit_flat_softmax,
    fit_lda_statistics,
    global_scorer_hierarchy,
    l2_normalize,
    load_classifier,
    train_specialist_hierarchy,
)
from skurec.models._common import encode_labels
from skurec.models.global_scorer import global_scorer_from_report

FAST = SoftmaxConfig(max_epochs=12, batch_size=64, lr=5e-3, bf16=False)


def _catalogue(n_classes: int = 30, per_class: int = 40, dim: int = 16, seed: int = 0, spread: float = 0.5):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim))
    means[1::2] = means[::2] + 0.35 * rng.standard_normal((n_classes // 2, dim))  # look-alike pairs
    y = np.repeat([f"s{c:02d}" for c in range(n_classes)], per_class)
    X = l2_normalize(np.repeat(means, per_class, 0) + spread * rng.standard_normal((len(y), dim))).astype(np.float32)
    part = rng.integers(0, 4, len(y))  # 2 train : 1 val : 1 test
    return (X[part < 2], y[part < 2]), (X[part == 2], y[part == 2]), (X[part == 3], y[part == 3])


@pytest.fixture(scope="module")
def data():
    return _catalogue()


@pytest.fixture(scope="module")
def flat(data) -> FlatSoftmax:
    (X, y), (Xv, yv), _ = data
    return fit_flat_softmax(
        X, y, Xv, yv, SoftmaxConfig(weight_decays=(1e-4, 1e-1), max_epochs=12, batch_size=64, lr=5e-3)
    )


def _top1(model, X, y) -> float:
    return float(np.mean(model.predict_topk(X, 1).labels[:, 0] == y))


def test_softmax_learns_chooses_on_validation_and_round_trips(data, flat: FlatSoftmax) -> None:
    (X, y), (Xv, yv), (Xt, yt) = data
    m = flat.metrics
    assert m["weight_decay"] in (1e-4, 1e-1) and 1 <= m["epoch"] <= m["epochs_run"] <= 12
    # the chosen (weight decay, epoch) is the validation optimum of the path, over every SKU's validation rows
    best = max(max(e["val_top1"]) for e in m["path"])
    assert m["val_top1"] == pytest.approx(best, abs=1e-4)
    assert _top1(flat, Xt, yt) >= 0.8
    proba = flat.predict_proba(Xt)
    assert proba.shape == (len(Xt), 30) and np.allclose(proba.sum(1), 1, atol=1e-4) and flat.temperature > 0
    loaded = load_classifier(flat.to_files())
    assert isinstance(loaded, FlatSoftmax) and loaded.temperature == flat.temperature
    assert np.array_equal(loaded.predict_topk(Xt, 3).labels, flat.predict_topk(Xt, 3).labels)
    files = flat.to_files()
    with pytest.raises(ModelFormatError):
        FlatSoftmax.from_files({**files, "config.json": files["config.json"].replace(b'"dim": 16', b'"dim": 15')})


def test_softmax_regularisation_matters_and_bad_inputs_fail(data) -> None:
    (X, y), (Xv, yv), _ = data
    strong = fit_flat_softmax(X, y, config=SoftmaxConfig(weight_decays=(10.0,), max_epochs=3, bf16=False))
    weak = fit_flat_softmax(X, y, config=SoftmaxConfig(weight_decays=(0.0,), max_epochs=3, bf16=False))
    assert np.abs(strong.W).sum() < 0.5 * np.abs(weak.W).sum()  # the L2 strength shrinks the rows
    assert strong.metrics["selected_on"].startswith("default") and strong.temperature == 1.0
    with pytest.raises(EmbeddingInputError):
        fit_flat_softmax(X, y, X_val=Xv)
    with pytest.raises(EmbeddingInputError):
        fit_flat_softmax(X[:5], np.full(5, "a"))
    with pytest.raises(ValueError):
        fit_flat_softmax(X, y, config=SoftmaxConfig(weight_decays=(-1.0,)))


def test_bf16_products_train_the_same_model(data) -> None:
    (X, y), (Xv, yv), (Xt, yt) = data
    a = fit_flat_softmax(X, y, Xv, yv, FAST)
    b = fit_flat_softmax(X, y, Xv, yv, SoftmaxConfig(**{**FAST.__dict__, "bf16": True}))
    assert b.metrics["bf16"] and not a.metrics["bf16"]
    assert abs(_top1(a, Xt, yt) - _top1(b, Xt, yt)) <= 0.03


def test_global_scorer_is_chosen_on_validation_among_lda_softmax_and_both(data, flat: FlatSoftmax) -> None:
    (X, y), (Xv, yv), (Xt, yt) = data
    classes, stats = fit_lda_statistics(X, y)
    cv = encode_labels(yv, classes)
    g = choose_global_scorer(stats, 0.3, flat, Xv, cv)
    path = g.report["path"]
    assert [p["weight"] for p in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert g.report["val_top1"] == max(p["val_top1"] for p in path)
    # the rows ARE the scorer whose validation top-1 was recorded
    Lv = torch.from_numpy(Xv) @ torch.from_numpy(g.W).T + torch.from_numpy(g.b)
    assert float((Lv.argmax(1).numpy() == cv).mean()) == pytest.approx(g.report["val_top1"], abs=1e-6)
    again = global_scorer_from_report(stats, 0.3, flat, g.report)
    assert np.allclose(again.W, g.W) and np.allclose(again.b, g.b) and again.lda_scale == g.lda_scale
    only_lda = choose_global_scorer(stats, 0.3, flat, Xv, cv, weights=(0.0,))
    Wl, _ = stats.rows(0.3)
    T = only_lda.report["T_lda"] * only_lda.report["T_combined"]
    assert only_lda.name == "lda" and np.allclose(only_lda.W, Wl / T, rtol=1e-4, atol=1e-6)
    only_soft = choose_global_scorer(stats, 0.3, flat, Xv, cv, weights=(1.0,))
    assert only_soft.name == "softmax"
    pred = (torch.from_numpy(Xt) @ torch.from_numpy(only_soft.W).T + torch.from_numpy(only_soft.b)).argmax(1).numpy()
    assert np.array_equal(pred, np.searchsorted(classes, flat.predict_topk(Xt, 1).labels[:, 0]))


@pytest.fixture(scope="module")
def hierarchy(data, flat):
    (X, y), (Xv, yv), _ = data
    return train_specialist_hierarchy(X, y, Xv, yv, SpecialistHierarchyConfig(max_sizes=(4,)), flat=flat)


def test_beta_zero_over_all_superclasses_equals_the_global_scorer_exactly(data, hierarchy) -> None:
    _, _, (Xt, yt) = data
    exact = global_scorer_hierarchy(hierarchy.model)
    assert exact.fine.beta == 0.0 and exact.coarse.temperature == 1.0 and exact.m == exact.n_superclasses
    g = torch.log_softmax(exact.coarse.class_logits(Xt).double(), 1)
    vals, idx = torch.sort(g, dim=1, descending=True, stable=True)
    pred = exact.predict_topk(Xt, k=3)
    assert (pred.labels == np.asarray(exact.classes)[idx[:, :3].numpy()]).all()
    assert np.allclose(pred.scores, vals[:, :3].exp().numpy(), atol=1e-5)
    # and the global scorer is the one validation chose (LDA, softmax or both), not the LDA by construction
    rep = hierarchy.report["global_scorer"]
    assert hierarchy.report["val_global_top1"] == rep["val_top1"]
    assert rep["val_top1"] >= max(p["val_top1"] for p in rep["path"]) - 1e-12
    assert hierarchy.report["val_top1"] >= rep["val_top1"] - 1e-12  # never below its global scorer on validation


def test_top_k_ranks_every_sku_and_is_not_below_the_global_scorer(data, hierarchy) -> None:
    _, _, (Xt, yt) = data
    model = hierarchy.model
    glob = global_scorer_hierarchy(model)
    for m in (1, 2):
        hard = model.predict_topk(Xt, k=5, m=m)
        assert (hard.labels != "").all()  # ranks beyond the routed superclasses are filled from every SKU
        assert all(len(set(r)) == 5 for r in hard.labels.tolist())
        # rank 1 is the hierarchy's decision: the SKUs of the routed superclasses only
        routed = np.argsort(-model.coarse.predict_proba(Xt), axis=1, kind="stable")[:, :m]
        sc_first = model.sc_of_index[np.searchsorted(model.classes, hard.labels[:, 0])]
        assert (routed == sc_first[:, None]).any(1).all()
    top3 = lambda p: float(np.mean((p.labels[:, :3] == yt[:, None]).any(1)))  # noqa: E731
    assert top3(model.predict_topk(Xt, 3)) >= top3(glob.predict_topk(Xt, 3)) - 0.02


def test_new_skus_get_lda_rows_in_the_global_scorers_units(data, hierarchy) -> None:
    (X, y), _, (Xt, yt) = data
    model = hierarchy.model
    router = model.coarse
    assert isinstance(router, LDARouter) and router.lda_scale > 0 and model.fine.lda_scale == router.lda_scale
    # refreshing a known SKU with its own training rows leaves its global row (softmax part included) unchanged
    rows = y == "s03"
    added = model.add_classes(X[rows], y[rows]).model
    j = model.classes.index("s03")
    assert np.allclose(added.fine.Wg[j], model.fine.Wg[j], atol=1e-4)
    moved = model.add_classes(l2_normalize(X[rows][:5] + 0.2), y[rows][:5]).model
    assert not np.allclose(moved.fine.Wg[j], model.fine.Wg[j], atol=1e-4)
    new = model.add_classes(X[rows], np.full(rows.sum(), "new_sku")).model
    assert "new_sku" in new.classes and isinstance(new, HierarchicalClassifier)
    top = new.predict_topk(X[rows], 1).labels[:, 0]
    assert np.isin(top, ["new_sku", "s03"]).mean() >= 0.8  # the new SKU is scored like its twin
