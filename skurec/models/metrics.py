"""Accuracy metrics on top-k label arrays (pure numpy; labels are SKU-id strings, ``""`` = no prediction)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _check(labels: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    y_true = np.asarray(y_true).astype(str)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != y_true.shape[0]:
        raise ValueError(f"labels {labels.shape} and y_true {y_true.shape} must have the same number of rows")
    return labels.astype(str), y_true


def topk_hits(labels: np.ndarray, y_true: np.ndarray, k: int) -> np.ndarray:
    """Boolean (n,): is the true label among the first ``k`` columns of ``labels`` (n, >=k)?"""
    labels, y_true = _check(labels, y_true)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if labels.shape[1] < k:
        raise ValueError(f"top-{k} accuracy needs at least {k} predictions per row, got {labels.shape[1]}")
    return (labels[:, :k] == y_true[:, None]).any(axis=1)


def topk_accuracy(labels: np.ndarray, y_true: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true label is in the top ``k``; NaN for an empty set."""
    hits = topk_hits(labels, y_true, k)
    return float(hits.mean()) if hits.size else float("nan")


def per_class_accuracy(pred: np.ndarray, y_true: np.ndarray) -> dict[str, float]:
    """Top-1 accuracy of every true class (pred: (n,) or (n, k) -> first column)."""
    labels, y_true = _check(pred, y_true)
    hit = labels[:, 0] == y_true
    classes, codes = np.unique(y_true, return_inverse=True)
    correct = np.bincount(codes, weights=hit.astype(float), minlength=len(classes))
    total = np.bincount(codes, minlength=len(classes))
    return {str(c): float(a / t) for c, a, t in zip(classes, correct, total)}


def mean_per_class_accuracy(pred: np.ndarray, y_true: np.ndarray) -> float:
    """Balanced accuracy: unweighted mean of :func:`per_class_accuracy`."""
    acc = per_class_accuracy(pred, y_true)
    return float(np.mean(list(acc.values()))) if acc else float("nan")


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], other: str | None = "<other>"
) -> tuple[np.ndarray, list[str]]:
    """Counts ``M[i, j]`` of true ``labels[i]`` predicted as ``labels[j]``.

    Rows are restricted to true labels in ``labels``; predictions outside ``labels`` go to a final ``other``
    column (omitted when ``other`` is None). Returns the matrix and its column names.
    """
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if y_pred.ndim == 2:
        y_pred = y_pred[:, 0]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    labels = [str(x) for x in labels]
    index = {c: i for i, c in enumerate(labels)}
    cols = labels + ([other] if other is not None else [])
    M = np.zeros((len(labels), len(cols)), dtype=np.int64)
    rows = np.asarray([index.get(t, -1) for t in y_true.tolist()], dtype=np.int64)
    colsi = np.asarray(
        [index.get(p, len(labels) if other is not None else -1) for p in y_pred.tolist()], dtype=np.int64
    )
    keep = (rows >= 0) & (colsi >= 0)
    np.add.at(M, (rows[keep], colsi[keep]), 1)
    return M, cols


def normalize_rows(M: np.ndarray) -> np.ndarray:
    """Row-normalised confusion matrix (rows sum to 1; empty rows stay 0)."""
    M = np.asarray(M, dtype=np.float64)
    s = M.sum(axis=1, keepdims=True)
    return np.divide(M, s, out=np.zeros_like(M), where=s > 0)


def superclass_accuracy(
    topk_superclasses: np.ndarray, y_true: np.ndarray, superclass_of_class: Mapping[str, int], k: int = 1
) -> float:
    """Top-k accuracy of superclass predictions (n, >=k) against the superclass of each true SKU."""
    y_true = np.asarray(y_true).astype(str)
    missing = sorted({c for c in np.unique(y_true).tolist() if c not in superclass_of_class})
    if missing:
        raise ValueError(f"{len(missing)} true SKUs have no superclass, e.g. {missing[:5]}")
    truth = np.asarray([superclass_of_class[c] for c in y_true.tolist()], dtype=np.int64)
    pred = np.asarray(topk_superclasses)
    if pred.ndim == 1:
        pred = pred[:, None]
    if pred.shape[0] != truth.shape[0] or pred.shape[1] == 0:
        raise ValueError(f"superclass predictions {pred.shape} do not fit {truth.shape[0]} rows / k={k}")
    # A coarse head over fewer than k superclasses returns all of them: its top-k is its top-(S).
    k = min(k, pred.shape[1])
    if truth.size == 0:
        return float("nan")
    return float((pred[:, :k] == truth[:, None]).any(axis=1).mean())
