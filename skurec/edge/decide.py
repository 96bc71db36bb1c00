"""From every SKU's score to an answer: top-k, calibrated probabilities, the unknown decision, track fusion.

numpy only: the Recognizer (torch) and the edge runner (onnxruntime) both call these functions on the outputs of the
same score graph (:mod:`skurec.deployment.scoring`), so they answer alike by construction.

``recognition`` (the model card's calibration, :func:`skurec.deployment.calibration.calibrate_recognition`):
``temperature`` T (absent: scores are shown raw, as before calibration existed), ``unknown_score`` (``max_prob``,
``energy`` or ``distance``) and ``threshold`` (an image is ``unknown`` when its unknown score is below it; for
``distance`` the score is the negated squared Mahalanobis distance, so "below" still means "less like the catalogue").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

UNKNOWN = "unknown"
UNKNOWN_SCORES = ("max_prob", "energy", "distance")


def log_softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64; ``-inf`` entries (non-candidates) stay ``-inf``."""
    z = np.asarray(z, dtype=np.float64)
    top = np.max(z, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return z - top - np.log(np.sum(np.exp(z - top), axis=1, keepdims=True))


def calibrated_log_probs(log_scores: np.ndarray, temperature: float) -> np.ndarray:
    """``log softmax(key / T)`` over each row's candidates: the temperature-calibrated log-posterior."""
    return log_softmax_rows(np.asarray(log_scores, dtype=np.float64) / float(temperature))


def unknown_score(method: str, top_prob: np.ndarray, energy: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Higher = more like a catalogue SKU. ``max_prob``: the calibrated probability of the top-1 SKU; ``energy``:
    ``logsumexp`` of the global SKU logits; ``distance``: ``-`` the squared Mahalanobis distance to the nearest SKU
    mean."""
    if method == "max_prob":
        return np.asarray(top_prob, dtype=np.float64)
    if method == "energy":
        return np.asarray(energy, dtype=np.float64)
    if method == "distance":
        return -np.asarray(distance, dtype=np.float64)
    raise ValueError(f"unknown score {method!r}; use one of {UNKNOWN_SCORES}")


def topk_rows(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, values)`` of each row's ``k`` largest finite values, ties to the lower index (stable);
    ``-inf`` entries are never returned (index ``-1``, value ``-inf`` pads)."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(values, order, axis=1)
    bad = ~np.isfinite(vals)
    return np.where(bad, -1, order), np.where(bad, -np.inf, vals)


def decide(
    outputs: Mapping[str, np.ndarray],
    classes: Sequence[str],
    superclass_of_class: Sequence[int] | None,
    recognition: Mapping[str, Any],
    k: int,
    threshold: float,
    score_is_log: bool = True,
    names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every row's answer: ``{label, sku_id, score, unknown, superclass, top_k, unknown_score}``.

    ``outputs``: the score graph's ``log_scores`` (n, C) (ranking), ``log_posterior`` (n, C), ``energy`` (n,),
    ``distance`` (n,). Scores shown are the calibrated probabilities of the full posterior (``softmax(log_posterior /
    T)`` at the ranked SKUs) when the card has a ``temperature``, else the model's own scores (``exp`` of the key).
    """
    names = names or {}
    ls = np.asarray(outputs["log_scores"], dtype=np.float64)
    T = recognition.get("temperature")
    method = recognition.get("unknown_score") or "max_prob"
    idx, vals = topk_rows(ls, k)  # the model's ranking (routed candidates)
    if T is not None:  # calibrated probabilities of the full posterior, read at the ranked SKUs
        lp = calibrated_log_probs(outputs.get("log_posterior", ls), float(T))
        vals = np.where(idx >= 0, np.exp(np.take_along_axis(lp, np.maximum(idx, 0), axis=1)), 0.0)
    elif score_is_log:
        vals = np.exp(vals)
    u = unknown_score(method, vals[:, 0], outputs["energy"], outputs["distance"])
    out = []
    for i in range(len(ls)):
        top = [
            {
                "sku_id": classes[j],
                "score": round(float(s), 6),
                **({"sku_name": names[classes[j]]} if classes[j] in names else {}),
            }
            for j, s in zip(idx[i].tolist(), vals[i].tolist())
            if j >= 0
        ]
        best = top[0] if top else None
        ui = float(u[i]) if best is not None else float("-inf")
        is_unknown = best is None or (round(ui, 6) if method == "max_prob" else ui) < threshold
        sc = -1
        if best is not None and superclass_of_class is not None:
            sc = int(superclass_of_class[idx[i, 0]])
        out.append(
            {
                "label": UNKNOWN if is_unknown else best["sku_id"],
                "sku_id": best["sku_id"] if best else None,
                "score": best["score"] if best else 0.0,
                "unknown": bool(is_unknown),
                "superclass": sc,
                "top_k": top,
                "unknown_score": round(ui, 6) if np.isfinite(ui) else None,
            }
        )
    return out


FUSION_RULES = ("sum_log", "mean_prob")


def fuse_track(
    outputs: Mapping[str, np.ndarray], recognition: Mapping[str, Any], rule: str | None = None
) -> dict[str, np.ndarray]:
    """Several frames of one product -> one row of score-graph outputs, from the frames' calibrated posteriors over
    every SKU (not only the routed candidates). ``rule`` (default: the card's ``fusion``, else ``sum_log``):
    ``sum_log`` = the sum of the calibrated log-posteriors (independent frames, Bayes); ``mean_prob`` = the log of
    their mean (robust to one confidently wrong frame). Energy and distance are averaged; the unknown decision then
    reads the fused row (its ``max_prob`` is the fused, renormalised posterior of the top SKU)."""
    rule = rule or recognition.get("fusion") or "sum_log"
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; use one of {FUSION_RULES}")
    T = float(recognition.get("temperature") or 1.0)
    lp = calibrated_log_probs(outputs.get("log_posterior", outputs["log_scores"]), T)
    if rule == "sum_log":
        fused = np.sum(lp, axis=0, keepdims=True)  # -inf only where a SKU has no probability in some frame
    if rule == "mean_prob" or not np.isfinite(fused).any():
        top = np.max(lp, axis=0, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore"):
            fused = top + np.log(np.mean(np.exp(lp - top), axis=0, keepdims=True))
    fused = log_softmax_rows(fused) * T  # decide() divides by T again: the fused posterior is the softmax of this / T
    return {
        "log_scores": fused,
        "log_posterior": fused,
        "energy": np.mean(outputs["energy"], keepdims=True),
        "distance": np.mean(outputs["distance"], keepdims=True),
    }


__all__ = [
    "UNKNOWN",
    "FUSION_RULES",
    "UNKNOWN_SCORES",
    "calibrated_log_probs",
    "decide",
    "fuse_track",
    "log_softmax_rows",
    "topk_rows",
    "unknown_score",
]
