"""Evaluation report: result shape, correctness of the numbers, Markdown and PNG rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skurec.evaluation import (
    confusion_png,
    evaluate,
    per_superclass_table,
    predict_all,
    render_markdown_report,
    standard_models,
    worst_similar_groups,
)
from skurec.models import (
    DenseConfig,
    FineConfig,
    FlatPrototype,
    l2_normalize,
    train_flat_linear,
    train_hierarchical,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_KEYS = {"hierarchical_soft", "hierarchical_hard", "flat_linear", "flat_prototype", "coarse_only"}


@pytest.fixture(scope="module")
def setup() -> dict:
    """4 superclasses x 3 SKUs; SKUs of superclass 0 are near-duplicates (the 'similar' variant)."""
    rng = np.random.default_rng(0)
    d = 24
    centres = rng.standard_normal((4, d)) * 2
    X_tr, y_tr, X_te, y_te, sc = [], [], [], [], {}
    for s in range(4):
        spread = 0.15 if s == 0 else 0.8
        for k in range(3):
            name = f"s{s}-{k}"
            sc[name] = s
            mean = centres[s] + rng.standard_normal(d) * spread
            X_tr.append(mean + rng.standard_normal((20, d)) * 0.1)
            X_te.append(mean + rng.standard_normal((6, d)) * 0.1)
            y_tr += [name] * 20
            y_te += [name] * 6
    X_tr, X_te = l2_normalize(np.concatenate(X_tr)), l2_normalize(np.concatenate(X_te))
    y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
    hier = train_hierarchical(X_tr, y_tr, sc, coarse_config=DenseConfig(max_epochs=10, batch_size=64),
                              fine_config=FineConfig(proj_dim=8, steps=20, episodes_per_step=2), m=2, device="cpu")
    flat = train_flat_linear(X_tr, y_tr, config=DenseConfig(max_epochs=10, batch_size=64), device="cpu")
    models = standard_models(hier, flat, FlatPrototype.fit(X_tr, y_tr))
    groups = {c: ("dup" if s == 0 else f"solo:{c}") for c, s in sc.items()}
    return {"X": X_te, "y": y_te, "sc": sc, "hier": hier, "models": models, "groups": groups,
            "similar": {c for c, s in sc.items() if s == 0}}


def test_result_has_every_model_and_variant_with_correct_numbers(setup: dict) -> None:
    X, y = setup["X"], setup["y"]
    preds = predict_all(setup["models"], X)
    res = evaluate(setup["models"], X, y, setup["similar"], coarse=(setup["hier"].coarse, setup["sc"]),
                   predictions=preds)
    assert set(res) == {"variants"} and set(res["variants"]) == {"all", "similar"}
    all_, sim = res["variants"]["all"], res["variants"]["similar"]
    assert (all_["n_images"], all_["n_classes"]) == (72, 12)
    assert (sim["n_images"], sim["n_classes"]) == (18, 3)
    for block in (all_, sim):
        assert set(block["models"]) == MODEL_KEYS
        for acc in block["models"].values():
            assert set(acc) == {"top1", "top3"} and 0.0 <= acc["top1"] <= acc["top3"] <= 1.0
    # the numbers are the plain top-1 accuracies of the predictions
    mask = np.isin(y, sorted(setup["similar"]))
    for name, p in preds.items():
        assert all_["models"][name]["top1"] == pytest.approx(float(np.mean(p.labels[:, 0] == y)))
        assert sim["models"][name]["top1"] == pytest.approx(float(np.mean(p.labels[mask, 0] == y[mask])))
    assert all_["models"]["hierarchical_soft"]["top1"] >= 0.95
    json.dumps(res, allow_nan=False)
    # recomputing without precomputed predictions gives the same result
    assert evaluate(setup["models"], X, y, setup["similar"], coarse=(setup["hier"].coarse, setup["sc"])) == res


def test_empty_similar_variant_reports_null(setup: dict) -> None:
    res = evaluate(setup["models"], setup["X"], setup["y"], set())
    sim = res["variants"]["similar"]
    assert sim["n_images"] == 0 and sim["models"]["flat_linear"] == {"top1": None, "top3": None}
    assert "coarse_only" not in sim["models"]
    json.dumps(res, allow_nan=False)


def test_markdown_report_and_per_superclass_table(setup: dict) -> None:
    X, y = setup["X"], setup["y"]
    preds = predict_all(setup["models"], X)
    res = evaluate(setup["models"], X, y, setup["similar"], coarse=(setup["hier"].coarse, setup["sc"]),
                   predictions=preds)
    res["encoder"] = "toy-encoder"
    table = per_superclass_table(preds, y, setup["sc"], coarse_superclass=preds["hierarchical_soft"].superclass)
    assert [r["superclass"] for r in table] == [0, 1, 2, 3]
    assert all(r["n_classes"] == 3 and r["n_images"] == 18 for r in table)
    md = render_markdown_report(res, table, notes=["toy data"])
    for key in MODEL_KEYS | {"all top-1", "similar top-3", "Per-superclass", "toy-encoder", "toy data"}:
        assert key in md, key
    assert md.count("\n| 0 | 3 | 18 |") == 1


def test_confusion_png_shows_the_worst_similar_groups(setup: dict) -> None:
    y = setup["y"]
    y_pred = y.copy()
    y_pred[y == "s0-0"] = "s0-1"  # a confusion inside the 'dup' group
    worst = worst_similar_groups(y, y_pred, setup["groups"])
    assert worst[0][0] == "dup" and worst[0][2] == pytest.approx(2 / 3)
    png = confusion_png(y, y_pred, setup["groups"])
    assert png.startswith(PNG_MAGIC) and len(png) > 2000
    empty = confusion_png(y, y_pred, {c: f"solo:{c}" for c in setup["sc"]})
    assert empty.startswith(PNG_MAGIC)


def test_superclass_topk_with_fewer_superclasses_than_k():
    """A catalogue with 2 superclasses still reports coarse top-3 (= top-2: every superclass)."""
    from skurec.models.metrics import superclass_accuracy

    pred = np.array([[0, 1], [1, 0], [1, 0]])
    y = np.array(["a", "b", "a"])
    assert superclass_accuracy(pred, y, {"a": 0, "b": 1}, k=1) == pytest.approx(2 / 3)
    assert superclass_accuracy(pred, y, {"a": 0, "b": 1}, k=3) == 1.0
