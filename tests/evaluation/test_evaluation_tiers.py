"""Evaluation per tier: head / tail variants next to all / similar, for every model, and catalogue coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skurec.evaluation import catalogue_coverage, evaluate, predict_all, render_markdown_report
from skurec.models import FlatKNN, FlatPrototype, l2_normalize


@pytest.fixture(scope="module")
def setup() -> dict:
    """8 head SKUs (30 train images), 6 tail SKUs (5 train images), noisy enough that models make mistakes."""
    rng = np.random.default_rng(3)
    d = 16
    X_tr, y_tr, X_te, y_te = [], [], [], []
    tiers = {}
    for k in range(14):
        name, n = (f"h{k}", 30) if k < 8 else (f"t{k}", 5)
        tiers[name] = "head" if k < 8 else "tail"
        mean = rng.standard_normal(d)
        X_tr.append(mean + rng.standard_normal((n, d)) * 0.9)
        X_te.append(mean + rng.standard_normal((10, d)) * 0.9)
        y_tr += [name] * n
        y_te += [name] * 10
    X_tr, X_te = l2_normalize(np.concatenate(X_tr)), l2_normalize(np.concatenate(X_te))
    y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
    # a head-only model: it cannot answer the tail at all
    head_rows = np.isin(y_tr, [c for c, t in tiers.items() if t == "head"])
    models = {
        "prototype": FlatPrototype.fit(X_tr, y_tr),
        "knn": FlatKNN(X_tr, y_tr, n_neighbors=5),
        "prototype_head_only": FlatPrototype.fit(X_tr[head_rows], y_tr[head_rows]),
    }
    catalogue = sorted(tiers) + ["u1", "u2"]  # two catalogue SKUs below min_shots: never trained
    tiers = {**tiers, "u1": "untrained", "u2": "untrained"}
    return {"X": X_te, "y": y_te, "tiers": tiers, "models": models, "catalogue": catalogue}


def test_head_and_tail_variants_hold_the_real_numbers(setup):
    X, y, models = setup["X"], setup["y"], setup["models"]
    preds = predict_all(models, X)
    res = evaluate(models, X, y, set(), predictions=preds, tiers=setup["tiers"], catalogue=setup["catalogue"])
    assert list(res["variants"]) == ["all", "similar", "head", "tail"]
    head, tail = res["variants"]["head"], res["variants"]["tail"]
    assert (head["n_images"], head["n_classes"], tail["n_images"], tail["n_classes"]) == (80, 8, 60, 6)
    is_tail = np.char.startswith(y.astype(str), "t")
    for name, p in preds.items():
        for block, mask in ((head, ~is_tail), (tail, is_tail)):
            top1 = float(np.mean(p.labels[mask, 0] == y[mask]))
            top3 = float(np.mean((p.labels[mask] == y[mask][:, None]).any(axis=1)))
            assert block["models"][name] == pytest.approx({"top1": top1, "top3": top3})
    assert 0.0 < head["models"]["prototype"]["top1"] < 1.0  # the data is hard enough to say something
    assert tail["models"]["prototype_head_only"] == {"top1": 0.0, "top3": 0.0}
    json.dumps(res, allow_nan=False)


def test_catalogue_coverage(setup):
    cov = catalogue_coverage(setup["models"], setup["catalogue"], setup["tiers"])
    assert (cov["n_skus"], cov["n_trainable"]) == (16, 14)
    assert cov["n_by_tier"] == {"head": 8, "tail": 6, "untrained": 2}
    assert cov["models"]["prototype"] == {"n_answerable": 14, "share": 14 / 16, "share_of_trainable": 1.0}
    assert cov["models"]["prototype_head_only"] == {"n_answerable": 8, "share": 0.5, "share_of_trainable": 8 / 14}


def test_report_renders_tiers_and_coverage(setup):
    X, y, models = setup["X"], setup["y"], setup["models"]
    res = evaluate(models, X, y, set(), tiers=setup["tiers"], catalogue=setup["catalogue"])
    md = render_markdown_report(res, [])
    assert "head top-1 | head top-3 | tail top-1 | tail top-3" in md
    assert "## Catalogue coverage" in md and "| prototype_head_only | 8 | 0.500 | 0.571 |" in md
    assert "head 8, tail 6, untrained (below min_shots) 2" in md


def test_without_tiers_the_report_is_unchanged(setup):
    X, y, models = setup["X"], setup["y"], setup["models"]
    res = evaluate(models, X, y, set())
    assert list(res["variants"]) == ["all", "similar"] and "coverage" not in res
