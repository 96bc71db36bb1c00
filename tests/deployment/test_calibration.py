"""Calibration on validation (temperature by ECE, unknown score + threshold, fusion rule), the score graph against
the model's own predict_topk, and the decision / fusion rules the Recognizer and the edge runner share."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

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


def _posteriors_with_ties_and_impossible_skus(seed: int = 3, n: int = 70, C: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Log-posteriors spanning hundreds of nats (like the LDA's), some SKUs impossible (-inf) in some rows, a row
    where every SKU but one is impossible, and classes with 1, 2 and many rows (tracks of every length)."""
    rng = np.random.default_rng(seed)
    post = rng.normal(0, 60, (n, C))
    post[rng.random((n, C)) < 0.15] = -np.inf
    post[np.arange(n), rng.integers(0, C, n)] = rng.normal(0, 60, n)  # at least one finite entry per row
    post[5, 1:] = -np.inf
    target = np.concatenate([[0], [1, 1], rng.integers(2, C, n - 3)])
    return post, target


def test_the_temperature_grid_reads_the_calibrated_top1_exactly_as_the_full_log_probability_table():
    """fit_temperature_on computes only the predicted SKU's calibrated probability, block by block; it must be the
    very number ``calibrated_log_probs`` gives (bit for bit), so the chosen temperature cannot move."""
    from skurec.deployment.calibration import TEMPERATURE_GRID, calibrated_top1_probability
    from skurec.edge.decide import calibrated_log_probs

    post, target = _posteriors_with_ties_and_impossible_skus()
    pred = np.argmax(post, axis=1)
    rows = np.arange(len(post))
    for T in (TEMPERATURE_GRID[0], 1.0, 3.7, TEMPERATURE_GRID[-1]):
        full = np.exp(calibrated_log_probs(post, T)[rows, pred])
        np.testing.assert_array_equal(calibrated_top1_probability(post, pred, T), full)
    # the grid search itself, against the plain definition (ECE of the full-table probabilities)
    correct = pred == target
    keys = {
        T: (
            round(expected_calibration_error(np.exp(calibrated_log_probs(post, T)[rows, pred]), correct), 9),
            abs(np.log(T)),
        )
        for T in TEMPERATURE_GRID
    }
    assert fit_temperature_on(post, target, pred) == min(keys, key=keys.get)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_the_fusion_rule_is_chosen_from_the_same_hits_as_fusing_each_track(temperature):
    """choose_fusion scores every validation track at once; each track's hit must equal what fuse_track (the
    runtime's rule, one track at a time) ranks first, including the sum_log -> mean_prob fallback."""
    from skurec.deployment.calibration import choose_fusion, fused_track_hits
    from skurec.edge.decide import FUSION_RULES, calibrated_log_probs

    post, target = _posteriors_with_ties_and_impossible_skus()
    post[[3, 4], :] = -np.inf  # two rows of one class with disjoint possible SKUs: their sum_log has no mass
    post[3, 2], post[4, 3] = 0.0, 0.0
    target[3] = target[4] = 2  # the fallback ranks SKU 2 first (a sum with no mass would answer SKU 0)
    outputs = {
        "log_scores": post,
        "log_posterior": post,
        "energy": np.zeros(len(post)),
        "distance": np.zeros(len(post)),
    }
    rec = {"temperature": temperature}
    lp = calibrated_log_probs(post, temperature)
    expected = {}
    for rule in FUSION_RULES:
        hits = []
        for k in (2, 3):
            tracks = val_tracks(target, k)
            ours = fused_track_hits(lp, target, tracks, rule, temperature)
            theirs = [
                int(np.argmax(fuse_track({n: v[g] for n, v in outputs.items()}, rec, rule)["log_scores"][0]))
                == int(target[g[0]])
                for g in tracks
            ]
            assert ours == theirs
            hits += theirs
        expected[rule] = float(np.mean(hits))
    rule, scores = choose_fusion(outputs, target, temperature)
    assert scores == expected
    assert rule == max(FUSION_RULES, key=lambda r: (expected[r], r == "sum_log"))


def test_routing_mask_equals_the_pairwise_rank_with_ties():
    """The score graph's top-m superclass mask (TopK cut + lowest ids among ties) equals the plain definition: a
    superclass is routed when fewer than m superclasses come before it (higher, or equal with a lower id)."""

    def pairwise(logp: torch.Tensor, m: int) -> torch.Tensor:
        a, b, ids = logp[:, :, None], logp[:, None, :], torch.arange(logp.shape[1])
        before = (b > a) | ((b == a) & (ids[None, None, :] < ids[None, :, None]))
        return before.sum(dim=2) < m

    rng = np.random.default_rng(0)
    for S in (2, 7, 40):
        for m in range(1, S + 1):
            graph = SimpleNamespace(S=S, m=m)
            tied = torch.from_numpy(rng.integers(0, 4, (100, S)).astype(np.float64))  # many ties at the cut
            for logp in (tied, torch.from_numpy(rng.normal(size=(100, S)))):
                assert torch.equal(ScoreGraph._routed(graph, logp), pairwise(logp, m)), (S, m)


def test_a_fast_path_candidate_keeps_its_base_calibration_only_while_it_still_fits(hierarchy):
    from skurec.deployment.calibration import calibrate_outputs

    model, Xv, yv, _ = hierarchy
    out = score_arrays(ScoreGraph(model), Xv)
    target = encode_labels(yv, model.classes)
    fresh = calibrate_outputs(out, target, "energy")
    assert fresh["temperature_source"] == "chosen on validation"
    base = {**fresh, "temperature": fresh["temperature"], "fusion": "sum_log"}
    kept = calibrate_outputs(out, target, "energy", previous=base)
    assert kept["temperature_source"] == "kept from the base model"
    assert kept["temperature"] == fresh["temperature"] and kept["fusion"] == "sum_log"
    assert kept["threshold"] == fresh["threshold"]  # the threshold is fitted again (same rows: same value)
    # a base temperature that no longer fits these rows (its ECE far above the base's record): searched again
    stale = {**base, "temperature": 50.0, "ece_after": 0.0}
    again = calibrate_outputs(out, target, "energy", previous=stale)
    assert again["temperature_source"] == "chosen on validation" and again["temperature"] == fresh["temperature"]
