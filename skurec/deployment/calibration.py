"""Scores that mean probabilities and an "unknown" decision, both calibrated on the model's validation split
(recorded in its card as ``recognition``, read by the Recognizer and the edge runner).

* **Temperature**: ``p(c | x) = softmax(log_posterior / T)`` over every SKU (the score graph's full posterior,
  :mod:`skurec.deployment.scoring`), ``T`` minimising the validation ECE (:func:`fit_temperature_on` says why not the
  NLL). The track fusion rule (``sum_log`` of calibrated log-posteriors or ``mean_prob``) is chosen on validation
  tracks of same-SKU photos (:func:`choose_fusion`). The ranking does not change (top-1
  is untouched); the expected calibration error (ECE, 15 bins of the top-1 probability) is reported before (the
  model's own top-1 score) and after.
* **Unknown score**: one of ``max_prob`` (calibrated top-1 probability), ``energy`` (``logsumexp`` of the global SKU
  logits) or ``distance`` (minus the squared Mahalanobis distance to the nearest SKU mean under the LDA's shared
  covariance). The default (:class:`RecognitionConfig`) was chosen on Grocery Store validation data with SKUs held
  out of training as the unknowns (``benchmarks/open_set.py``: ``energy`` had the best validation AUROC); a model
  whose router is not the LDA (dense heads, flat models) falls back to ``max_prob``. Its threshold keeps ``keep`` (95 %) of the correct validation predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from skurec.edge.decide import calibrated_log_probs, unknown_score
from skurec.store.workspace import Workspace


@dataclass(frozen=True)
class RecognitionConfig:
    """Defaults of the calibration: ``unknown_score`` (chosen on validation, see the module docstring), ``keep``
    (share of correct validation predictions answered), ``bounds`` (clip of a ``max_prob`` threshold),
    ``ece_bins``."""

    unknown_score: str = "energy"
    keep: float = 0.95
    bounds: tuple[float, float] = (0.05, 0.9)
    ece_bins: int = 15
    #: a fast-path candidate keeps its base model's temperature and fusion rule while its validation ECE at that
    #: temperature is within this of the base's (a few SKUs' means changed, not the scale of the scores)
    reuse_ece_slack: float = 0.01


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the mean over equal-width confidence bins of |accuracy - mean confidence|, weighted by bin size."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(total / len(confidence))


TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.05, 50.0, 61))
_BLOCK_ELEMENTS = 1 << 18  # rows x SKUs per block of the vectorised loops (2 MiB of float64: stays in cache)


def fit_temperature_on(
    log_posterior: np.ndarray, target: np.ndarray, pred: np.ndarray | None = None, bins: int = 15
) -> float:
    """The temperature of :data:`TEMPERATURE_GRID` whose calibrated top-1 probabilities have the smallest validation
    ECE (ties: the one closest to 1). Not the NLL: the LDA's log-posteriors span hundreds of nats, so a handful of
    confidently wrong validation photos drive the NLL's temperature to the top of any grid and flatten every answer
    (measured on Grocery Store: test ECE 0.13 -> 0.43 with the NLL's T, 0.07 with this one)."""
    post = np.asarray(log_posterior, dtype=np.float64)
    target = np.asarray(target)
    pred = np.argmax(post, axis=1) if pred is None else np.asarray(pred)
    if not len(post):
        return 1.0
    correct = pred == target
    best, best_key = 1.0, (float("inf"), 0.0)
    for T in TEMPERATURE_GRID:
        conf = calibrated_top1_probability(post, pred, T)
        key = (round(expected_calibration_error(conf, correct, bins), 9), abs(np.log(T)))
        if key < best_key:
            best, best_key = T, key
    return float(best)


def calibrated_top1_probability(log_posterior: np.ndarray, pred: np.ndarray, temperature: float) -> np.ndarray:
    """``exp(calibrated_log_probs(log_posterior, T)[i, pred[i]])`` for every row, computed with the same float64
    operations block by block and without the (n, C) log-probability table: the temperature grid runs this 61 times
    on every validation row, so it is the calibration's main cost."""
    post = np.asarray(log_posterior, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.int64).reshape(-1, 1)
    out = np.empty(len(post), dtype=np.float64)
    step = max(1, _BLOCK_ELEMENTS // max(1, post.shape[1]))
    for a in range(0, len(post), step):
        z = post[a : a + step] / float(temperature)
        top = np.max(z, axis=1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        at_pred = np.take_along_axis(z, pred[a : a + step], axis=1)
        np.subtract(z, top, out=z)
        np.exp(z, out=z)
        with np.errstate(divide="ignore"):
            out[a : a + step] = np.exp(at_pred - top - np.log(np.sum(z, axis=1, keepdims=True)))[:, 0]
    return out


def val_tracks(target: np.ndarray, k: int) -> list[np.ndarray]:
    """Deterministic validation "tracks": every row with the next ``k - 1`` rows of the same class (cyclically);
    classes with fewer than ``k`` rows give shorter tracks."""
    target = np.asarray(target)
    out = []
    for c in np.unique(target):
        rows = np.flatnonzero(target == c)
        n = min(k, len(rows))
        out += [rows[(np.arange(n) + i) % len(rows)] for i in range(len(rows))]
    return out


def choose_fusion(outputs: dict[str, np.ndarray], target: np.ndarray, temperature: float) -> tuple[str, dict]:
    """The track fusion rule (:data:`skurec.edge.decide.FUSION_RULES`) with the best validation top-1 over tracks of
    2 and 3 same-SKU photos (ties: ``sum_log``); returns ``(rule, {rule: mean top-1})``."""
    from skurec.edge.decide import FUSION_RULES

    target = np.asarray(target)
    # The calibrated log-posterior of every row once (fuse_track computes it per track: the same rows, many times).
    lp = calibrated_log_probs(outputs.get("log_posterior", outputs["log_scores"]), float(temperature or 1.0))
    scores = {}
    for rule in FUSION_RULES:
        hits = [h for k in (2, 3) for h in fused_track_hits(lp, target, val_tracks(target, k), rule, temperature)]
        scores[rule] = float(np.mean(hits)) if hits else 0.0
    return max(FUSION_RULES, key=lambda r: (scores[r], r == "sum_log")), scores


def fused_track_hits(
    lp: np.ndarray, target: np.ndarray, tracks: list[np.ndarray], rule: str, temperature: float
) -> list[bool]:
    """For each track (row indices of one SKU), whether :func:`skurec.edge.decide.fuse_track` with ``rule`` ranks the
    track's SKU first, from the rows' calibrated log-posteriors ``lp``: the same float64 operations as ``fuse_track``,
    on every track of one length at once (block by block) instead of one track at a time."""
    from skurec.edge.decide import log_softmax_rows

    T = float(temperature or 1.0)
    hits = np.zeros(len(tracks), dtype=bool)
    by_length: dict[int, list[int]] = {}
    for i, g in enumerate(tracks):
        by_length.setdefault(len(g), []).append(i)
    for length, which in by_length.items():
        idx = np.stack([tracks[i] for i in which])  # (m, length)
        step = max(1, _BLOCK_ELEMENTS // max(1, length * lp.shape[1]))
        for a in range(0, len(which), step):
            rows = lp[idx[a : a + step]]  # (b, length, C)
            top = np.max(rows, axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):
                mean_prob = (top + np.log(np.mean(np.exp(rows - top), axis=1, keepdims=True)))[:, 0]
            if rule == "sum_log":
                fused = np.sum(rows, axis=1)
                no_mass = ~np.isfinite(fused).any(axis=1)  # fuse_track falls back to mean_prob for such a track
                fused[no_mass] = mean_prob[no_mass]
            else:
                fused = mean_prob
            best = np.argmax(log_softmax_rows(fused) * T, axis=1)
            hits[np.asarray(which[a : a + step])] = best == target[idx[a : a + step, 0]]
    return hits.tolist()


def threshold_keeping(score: np.ndarray, correct: np.ndarray, keep: float) -> float | None:
    """A threshold that at least ``keep`` of the correct predictions reach (None without a correct one): halfway
    between the highest rejected and the lowest kept correct score, so that no validation image sits on the threshold
    (where float32 noise between torch and onnxruntime could flip its unknown flag)."""
    if not correct.any():
        return None
    s = np.sort(np.asarray(score, dtype=np.float64)[correct])
    r = int(np.floor(len(s) * (1.0 - keep) + 1e-9))  # correct answers that may be rejected
    if r == 0:
        return float(s[0] - 1e-3 * max(1.0, abs(s[0])))
    return float((s[r - 1] + s[r]) / 2.0)


def calibrate_outputs(
    outputs: dict[str, np.ndarray],
    target: np.ndarray,
    method: str,
    config: RecognitionConfig | None = None,
    score_is_log: bool = True,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Temperature, ECE before/after and the threshold of ``method`` from score-graph outputs of validation rows
    whose true class index is ``target``. ``previous``: the base model's ``recognition`` (a fast-path candidate):
    its temperature and fusion rule are kept while the validation ECE at that temperature stays within
    ``config.reuse_ece_slack`` of the base's (the 61-temperature search and the fusion choice are most of a labelled
    batch's cost at 2,000 SKUs); the threshold is always fitted again."""
    config = config or RecognitionConfig()
    ls = np.asarray(outputs["log_scores"], dtype=np.float64)
    post = np.asarray(outputs.get("log_posterior", ls), dtype=np.float64)
    pred = np.argmax(ls, axis=1)  # the model's top-1 (its routed ranking)
    raw_top = ls[np.arange(len(ls)), pred]
    correct = pred == target
    kept = _kept_calibration(post, pred, correct, previous, config)
    if kept is not None:
        T, conf, fusion, fusion_scores = kept
    else:
        T = fit_temperature_on(post, target, pred, config.ece_bins)
        conf = calibrated_top1_probability(post, pred, T)
        fusion, fusion_scores = choose_fusion(outputs, target, T)
    u = unknown_score(method, conf, outputs["energy"], outputs["distance"])
    t = threshold_keeping(u, correct, config.keep)
    if t is not None and method == "max_prob":
        t = float(min(max(t, config.bounds[0]), config.bounds[1]))
    wrong = u[~correct]
    return {
        "temperature": T,
        "temperature_source": "kept from the base model" if kept is not None else "chosen on validation",
        "fusion": fusion,
        "fusion_val_top1": fusion_scores,
        "unknown_score": method,
        "threshold": None if t is None else round(t, 6),
        "method": f"{method} >= threshold keeps {config.keep:.0%} of correct validation predictions",
        "n_val": int(len(ls)),
        "val_top1": float(correct.mean()) if len(ls) else None,
        "ece_before": expected_calibration_error(
            np.exp(raw_top) if score_is_log else raw_top, correct, config.ece_bins
        ),
        "ece_after": expected_calibration_error(conf, correct, config.ece_bins),
        "wrong_rejected_share": float(np.mean(wrong < t)) if len(wrong) and t is not None else None,
    }


def _kept_calibration(post, pred, correct, previous: Mapping[str, Any] | None, config: RecognitionConfig):
    """``(T, calibrated top-1 probabilities, fusion, fusion scores)`` of the base model's calibration when it still
    fits these validation rows (ECE within ``config.reuse_ece_slack`` of the base's), else ``None``."""
    if not previous or previous.get("temperature") is None or not previous.get("fusion"):
        return None
    if previous.get("ece_after") is None or not len(post):
        return None
    T = float(previous["temperature"])
    conf = calibrated_top1_probability(post, pred, T)
    if (
        expected_calibration_error(conf, correct, config.ece_bins)
        > float(previous["ece_after"]) + config.reuse_ece_slack
    ):
        return None
    return T, conf, previous["fusion"], previous.get("fusion_val_top1")


def calibrate_threshold(
    ws: Workspace,
    model: Any,
    data: Any | None = None,
    keep: float | None = None,
    bounds: tuple[float, float] | None = None,
    config: RecognitionConfig | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card's ``recognition``: temperature, unknown score and threshold calibrated on the validation split
    (module docstring). Models without a score graph keep the old rule (top-1 score quantile, no temperature).
    ``previous``: the base model's ``recognition`` for a fast-path candidate (see :func:`calibrate_outputs`)."""
    from skurec.deployment.scoring import ScoreGraph, ScoringUnsupported, score_arrays
    from skurec.embeddings.training_data import load_training_data
    from skurec.models._common import encode_labels

    config = config or RecognitionConfig()
    if keep is not None or bounds is not None:
        config = RecognitionConfig(config.unknown_score, keep or config.keep, bounds or config.bounds, config.ece_bins)
    data = data if data is not None else load_training_data(ws)
    if len(data.val) == 0:
        return {"threshold": None, "method": "no validation images"}
    known = np.isin(data.val.y.astype(str), np.asarray(model.classes, dtype=str))
    try:
        graph = ScoreGraph(model)
    except ScoringUnsupported:
        return _top1_rule(model, data, config)
    if not known.any():
        return {"threshold": None, "method": "no validation image of a known SKU"}
    out = score_arrays(graph, data.val.X[known])
    target = encode_labels(data.val.y[known].astype(str), model.classes)
    method = config.unknown_score
    if not getattr(graph, "lda", False):  # energy / distance were chosen for the LDA hierarchy's global scores only
        method = "max_prob"
    rec = calibrate_outputs(out, target, method, config, graph.info.score_is_log, previous)
    if rec["threshold"] is None:
        return {"threshold": None, "method": "no correct validation prediction"}
    return rec


def _top1_rule(model: Any, data: Any, config: RecognitionConfig) -> dict[str, Any]:
    pred = model.predict_topk(data.val.X, k=1)
    correct = pred.labels[:, 0].astype(str) == data.val.y.astype(str)
    if not correct.any():
        return {"threshold": None, "method": "no correct validation prediction"}
    q = float(np.quantile(pred.scores[correct, 0], 1.0 - config.keep))
    t = float(min(max(q, config.bounds[0]), config.bounds[1]))
    wrong = pred.scores[~correct, 0]
    return {
        "threshold": round(t, 4),
        "method": f"{config.keep:.0%} of correct validation predictions score >= threshold",
        "n_val": int(len(correct)),
        "wrong_rejected_share": float(np.mean(wrong < t)) if len(wrong) else None,
    }


__all__ = [
    "RecognitionConfig",
    "calibrate_outputs",
    "calibrate_threshold",
    "choose_fusion",
    "expected_calibration_error",
    "TEMPERATURE_GRID",
    "calibrated_top1_probability",
    "fit_temperature_on",
    "fused_track_hits",
    "threshold_keeping",
]
