"""Evaluation report: result shape, correctness of the numbers, Markdown and PNG rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skurec.evaluation import (
    GAP_TOLERANCE,
    confusion_png,
    evaluate,
    hierarchy_headline,
    per_superclass_table,
    predict_all,
    render_markdown_report,
    standard_models,
    worst_similar_groups,
)
from skurec.models import (
    CaseStudyConfig,
    DenseConfig,
    FineConfig,
    FlatPrototype,
    SoftmaxConfig,
    fit_flat_softmax,
    l2_normalize,
    train_hierarchy,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODEL_KEYS = {"hierarchical_soft", "hierarchical_hard", "flat_linear", "flat_prototype", "coarse_only"}


@pytest.fixture(scope="module")
def setup() -> dict:
    """4 superclasses x 3 SKUs; SKUs of superclass 0 are near-duplicates (the 'similar' variant). The hierarchy is the
    case_study recipe (its UMAP superclasses recover the 4 families), the flat model the strong softmax."""
    rng = np.random.default_rng(0)
    d = 24
    centres = rng.standard_normal((4, d)) * 2
    X_tr, y_tr, X_va, y_va, X_te, y_te, sc = [], [], [], [], [], [], {}
    for s in range(4):
        spread = 0.15 if s == 0 else 0.8
        for k in range(3):
            name = f"s{s}-{k}"
            sc[name] = s
            mean = centres[s] + rng.standard_normal(d) * spread
            X_tr.append(mean + rng.standard_normal((20, d)) * 0.1)
            X_te.append(mean + rng.standard_normal((6, d)) * 0.1)
            X_va.append(mean + rng.standard_normal((4, d)) * 0.1)
            y_tr += [name] * 20
            y_te += [name] * 6
            y_va += [name] * 4
    X_tr, X_va, X_te = (l2_normalize(np.concatenate(a)) for a in (X_tr, X_va, X_te))
    y_tr, y_va, y_te = np.asarray(y_tr), np.asarray(y_va), np.asarray(y_te)
    case = CaseStudyConfig(
        n_superclasses=4,
        coarse=DenseConfig(max_epochs=10, batch_size=64),
        fine=FineConfig(proj_dim=8, steps=20, episodes_per_step=2),
    )
    trained = train_hierarchy(X_tr, y_tr, X_va, y_va, "case_study", device="cpu", case_study=case)
    assert trained.model.superclass_of_class() == sc  # the UMAP superclasses are the 4 families
    hier = trained.model.with_m(2)
    flat = fit_flat_softmax(X_tr, y_tr, X_va, y_va, SoftmaxConfig(max_epochs=5, min_steps=50), device="cpu")
    models = standard_models(hier, flat, FlatPrototype.fit(X_tr, y_tr))
    groups = {c: ("dup" if s == 0 else f"solo:{c}") for c, s in sc.items()}
    return {
        "X": X_te,
        "y": y_te,
        "sc": sc,
        "hier": hier,
        "models": models,
        "groups": groups,
        "similar": {c for c, s in sc.items() if s == 0},
    }


def test_result_has_every_model_and_variant_with_correct_numbers(setup: dict) -> None:
    X, y = setup["X"], setup["y"]
    preds = predict_all(setup["models"], X)
    res = evaluate(
        setup["models"], X, y, setup["similar"], coarse=(setup["hier"].coarse, setup["sc"]), predictions=preds
    )
    assert set(res) == {"variants", "hierarchy"} and set(res["variants"]) == {"all", "similar"}
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
    res = evaluate(
        setup["models"], X, y, setup["similar"], coarse=(setup["hier"].coarse, setup["sc"]), predictions=preds
    )
    res["encoder"] = "toy-encoder"
    table = per_superclass_table(preds, y, setup["sc"], coarse_superclass=preds["hierarchical_soft"].superclass)
    assert [r["superclass"] for r in table] == [0, 1, 2, 3]
    assert all(r["n_classes"] == 3 and r["n_images"] == 18 for r in table)
    md = render_markdown_report(res, table, notes=["toy data"])
    for key in MODEL_KEYS | {"all top-1", "similar top-3", "Per-superclass", "toy-encoder", "toy data"}:
        assert key in md, key
    assert md.count("\n| 0 | s0-0 / s0-1 / s0-2 | 3 | 18 |") == 1  # superclasses appear by their SKUs
    assert [r["name"] for r in table] == [f"s{s}-0 / s{s}-1 / s{s}-2" for s in range(4)]


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


def test_hierarchy_diagnostics_are_the_real_numbers(setup: dict) -> None:
    X, y = setup["X"], setup["y"]
    models = setup["models"]
    preds = predict_all(models, X)
    res = evaluate(models, X, y, setup["similar"], predictions=preds)
    diag = res["hierarchy"]
    assert diag["flat_models"] == ["flat_linear", "flat_prototype"]
    assert set(diag["models"]) == {"hierarchical_soft", "hierarchical_hard"}
    hier = models["hierarchical_soft"]
    truth = np.asarray([setup["sc"][c] for c in y])
    soft = diag["models"]["hierarchical_soft"]
    assert soft["m"] == hier.m == 2 and diag["models"]["hierarchical_hard"]["m"] == 1
    top, _ = hier.coarse.predict_topk(X, 2)
    assert soft["router_recall"] == {
        "1": pytest.approx(float(np.mean(top[:, 0] == truth))),
        "2": pytest.approx(float(np.mean((top == truth[:, None]).any(1)))),
    }
    # within-superclass accuracy: the fine stage's argmax among the true superclass's SKUs
    logits = hier.fine.class_logits(X).numpy()
    sc_idx = np.asarray(hier.sc_of_index)
    masked = np.where(sc_idx[None, :] == truth[:, None], logits, -np.inf)
    expected = float(np.mean(np.asarray(hier.classes)[masked.argmax(1)] == y))
    assert soft["within_superclass_top1"] == pytest.approx(expected)
    # gap = hierarchical top-1 minus the best flat top-1, per variant
    acc = {n: float(np.mean(p.labels[:, 0] == y)) for n, p in preds.items()}
    best_flat = max(("flat_linear", "flat_prototype"), key=lambda n: (acc[n], n))
    assert soft["gap"]["all"]["best_flat"] == best_flat
    assert soft["gap"]["all"]["gap_top1"] == pytest.approx(acc["hierarchical_soft"] - acc[best_flat])
    lost = soft["wrong_where_flat_right"]
    wrong = (preds["hierarchical_soft"].labels[:, 0] != y) & (preds[best_flat].labels[:, 0] == y)
    assert lost["n_images"] == int(wrong.sum()) == sum(n for _, n in lost["skus"])
    json.dumps(res, allow_nan=False)


def test_report_first_line_says_when_hierarchy_is_behind_flat(setup: dict) -> None:
    X, y = setup["X"], setup["y"]

    # a "flat" model that is always right beats every hierarchy: the oracle below is not hierarchical
    class Oracle:
        classes = sorted(set(y.tolist()))

        def predict_topk(self, X_, k=3):
            from skurec.models import Predictions

            lab = np.asarray([[t] + [""] * (k - 1) for t in y]) if len(X_) == len(y) else None
            return Predictions(labels=lab, scores=np.ones(lab.shape, np.float32))

    hard = setup["models"]["hierarchical_hard"]
    res = evaluate({"hierarchical_hard": hard, "flat_oracle": Oracle()}, X, y, setup["similar"])
    gap = res["hierarchy"]["models"]["hierarchical_hard"]["gap"]["all"]["gap_top1"]
    md = render_markdown_report(res, [])
    first = md.splitlines()[0]
    if gap < -GAP_TOLERANCE:
        assert first.startswith("**WARNING") and "flat_oracle" in first
    else:  # the hierarchy is perfect too on this toy set: then the line says it is not behind
        assert gap == 0.0 and first.startswith("**Hierarchical is not behind flat")
    assert "## Hierarchy diagnostics" in md
    behind = {
        "hierarchy": {"models": {"h": {"gap": {"all": {"best_flat": "f", "best_flat_top1": 0.9, "gap_top1": -0.006}}}}}
    }
    ahead = {
        "hierarchy": {"models": {"h": {"gap": {"all": {"best_flat": "f", "best_flat_top1": 0.9, "gap_top1": -0.004}}}}}
    }
    assert hierarchy_headline(behind).startswith("**WARNING") and "-0.6 points vs f" in hierarchy_headline(behind)
    assert hierarchy_headline(ahead).startswith("**Hierarchical is not behind")


def test_route_m_defaults_to_the_models_own_width(setup: dict) -> None:
    hier = setup["hier"]
    models = standard_models(hier, setup["models"]["flat_linear"], setup["models"]["flat_prototype"])
    assert models["hierarchical_soft"].m == hier.m == 2 and models["hierarchical_hard"].m == 1
    assert standard_models(hier, None, None, route_m=3)["hierarchical_soft"].m == 3
    with pytest.raises(ValueError):
        standard_models(hier, None, None, route_m=3, soft_m=2)
