"""Calibration on validation (temperature by ECE, unknown score + threshold, fusion rule), the score graph against
the model's own predict_topk, and the decision / fusion rules the Recognizer and the edge runner share."""

from __future__ import annotations

import numpy as np
import pytest

from skurec.deployment.calibration import (
    calibrate_outputs,
    expected_calibration_error,
    fit_temperature_on,
    val_tracks,
)
from skurec.deployment.scoring import ScoreGraph, graph_disagreement, score_arrays
from skurec.edge.decide import decide, fuse_track, topk_rows
from skurec.models import l2_normalize, train_specialist_hierarchy
from skurec.models._common import encode_labels


@pytest.fixture(scope="module")
def hierarchy():
    """An LDA hierarchy on overlapping Gaussian classes (so it makes mistakes) + held-out "unknown" classes."""
    rng = np.random.default_rng(0)
    d, C = 24, 12
    centres = rng.normal(size=(C + 3, d))

    def draw(classes, n):
        y = np.repeat(classes, n)
        return l2_normalize(centres[y] + rng.normal(0, 1.1, (len(y), d))), np.asarray([f"s{c:02d}" for c in y])

    X, y = draw(np.arange(C), 40)
    Xv, yv = draw(np.arange(C), 15)
    Xu, _ = draw(np.arange(C, C + 3), 15)
    h = train_specialist_hierarchy(X, y, Xv, yv)
    return h.model, Xv, yv, Xu


def test_score_graph_ranks_like_predict_topk(hierarchy):
    model, Xv, yv, _ = hierarchy
    for m in (1, model.n_superclasses):
        out = score_arrays(ScoreGraph(model, m), Xv)
        pred = model.predict_topk(Xv, k=3, m=m)
        idx, vals = topk_rows(out["log_scores"], 3)
        assert (idx >= 0).all()  # every rank filled, also with one superclass routed (the rest by the global scorer)
        labels = np.asarray(model.classes)[idx]
        assert (labels == pred.labels).all()  # the cart's top-3 is the evaluated top-3, not only its top-1
        np.testing.assert_allclose(np.exp(vals), pred.scores, atol=1e-5)
        assert (np.diff(pred.scores, axis=1) <= 0).all()  # scores fall with the rank
        post = np.exp(out["log_posterior"].astype(np.float64)).sum(axis=1)
        np.testing.assert_allclose(post, 1.0, atol=1e-4)  # the full posterior is a distribution over every SKU


def test_temperature_by_validation_ece_and_threshold_keeps_95_percent(hierarchy):
    model, Xv, yv, Xu = hierarchy
    out = score_arrays(ScoreGraph(model), Xv)
    target = encode_labels(yv, model.classes)
    rec = calibrate_outputs(out, target, "max_prob")
    assert rec["ece_after"] <= rec["ece_before"] + 1e-9
    T = fit_temperature_on(out["log_posterior"], target)
    assert rec["temperature"] == T and T != 1.0  # over-confident LDA posteriors need flattening
    # the threshold keeps (at least) 95 % of the correct validation answers
    answers = decide(out, model.classes, None, rec, 1, rec["threshold"])
    correct = np.asarray([a["sku_id"] for a in answers]) == yv
    kept = np.asarray([not a["unknown"] for a in answers])
    assert kept[correct].mean() >= 0.95
    # the calibrated top-1 probability is what the answer shows and what max_prob compares
    assert all(abs(a["score"] - a["unknown_score"]) < 1e-6 for a in answers)
    # energy / distance: thresholds on their own scale; unknown classes score lower on average
    for method in ("energy", "distance"):
        r = calibrate_outputs(out, target, method)
        known = decide(out, model.classes, None, r, 1, r["threshold"])
        unknown = decide(score_arrays(ScoreGraph(model), Xu), model.classes, None, r, 1, r["threshold"])
        assert np.mean([a["unknown"] for a in unknown]) > np.mean([a["unknown"] for a in known])


def test_ece_of_perfectly_calibrated_scores_is_zero_and_of_overconfident_ones_is_not():
    conf = np.asarray([0.5] * 4 + [1.0] * 2)
    correct = np.asarray([1, 0, 1, 0, 1, 1])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    assert expected_calibration_error(np.ones(4), np.asarray([1, 0, 0, 0])) == pytest.approx(0.75)


def test_fusion_rules():
    """Three frames of one product: sum_log is the Bayes product; mean_prob survives one confidently wrong frame."""
    lp = np.log(
        np.asarray(
            [
                [0.90, 0.05, 0.05],
                [0.80, 0.15, 0.05],
                [1e-12, 0.999, 1e-3],  # a confidently wrong frame
            ]
        )
    )
    out = {"log_scores": lp, "log_posterior": lp, "energy": np.zeros(3), "distance": np.zeros(3)}
    rec = {"temperature": 1.0}
    assert np.argmax(fuse_track(out, rec, "sum_log")["log_scores"]) == 1  # the wrong frame vetoes class 0
    fused = fuse_track(out, rec, "mean_prob")
    assert np.argmax(fused["log_scores"]) == 0
    np.testing.assert_allclose(np.exp(fused["log_posterior"][0]), np.exp(lp).mean(axis=0), atol=1e-9)
    assert fuse_track(out, {**rec, "fusion": "mean_prob"})["log_scores"].argmax() == 0  # the card's rule
    with pytest.raises(ValueError, match="fusion rule"):
        fuse_track(out, rec, "median")
    # deterministic validation tracks: each row with the next rows of its class
    tracks = val_tracks(np.asarray([0, 1, 0, 0, 1]), 3)
    assert [t.tolist() for t in tracks] == [[0, 2, 3], [2, 3, 0], [3, 0, 2], [1, 4], [4, 1]]


def test_a_score_graph_that_no_longer_matches_the_model_is_detected(hierarchy):
    """If the model's scoring changes (e.g. a new global scorer) and the graph does not follow, the Recognizer's
    load-time probe says so (it then answers with predict_topk) and the exporter has no graph to export."""
    import copy

    model = hierarchy[0]
    assert graph_disagreement(ScoreGraph(model), model) is None
    assert graph_disagreement(ScoreGraph(model, 1), model.with_m(1)) is None

    class Rescored(type(model)):
        def predict_topk(self, X, k=3, m=None):
            pred = super().predict_topk(X, k, m)
            pred.scores = pred.scores**2
            return pred

    changed = copy.copy(model)
    changed.__class__ = Rescored
    assert "scores differ" in graph_disagreement(ScoreGraph(changed), changed)
