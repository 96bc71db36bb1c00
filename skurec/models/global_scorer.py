"""The hierarchy's global SKU scorer, chosen on validation: shrinkage LDA, the strong flat softmax, or both.

Every stage of the specialist hierarchy builds on one linear scorer of all SKUs ``g(x) = W x + b``: the router
aggregates it per superclass, the specialist head adds superclass-local evidence to it, and with ``beta = 0`` over all
superclasses the hierarchy IS this scorer. So the hierarchy can only fall below the best flat model through a
validation mistake if ``g`` is the best flat model. Candidates::

    g_a(x) = ((1 - a) * lda(x) / T_lda + a * softmax(x) / T_soft) / T_a,      a in weights (0 = LDA, 1 = softmax)

i.e. temperature-calibrated log-probabilities summed with weights (per-image constants do not change a softmax), each
re-calibrated (``T_a``, validation NLL) so the router and the top-k mix see calibrated log-odds. The weight ``a`` is
chosen on validation top-1 over all SKUs (ties: lower NLL, then the smaller ``a``). Both parts are linear, so ``g_a``
is stored as one row matrix; new SKUs get their LDA row times ``lda_scale = (1 - a) / (T_lda T_a)`` (or
``1 / (T_lda T_a)`` when ``a = 1``: a calibrated LDA row stands in for the softmax row they do not have).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .lda import LDAStatistics, linear_scores
from .lda_router import fit_temperature

#: Softmax weights tried (0 = the shrinkage LDA alone, 1 = the flat softmax alone).
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class GlobalScorer:
    """Rows ``W`` (C, d) / ``b`` (C,) of the chosen scorer (calibrated: temperature 1), its ``name`` ("lda",
    "softmax" or "lda+softmax"), the softmax ``weight``, the LDA's ``lda_scale`` in ``g`` and the validation path."""

    W: np.ndarray
    b: np.ndarray
    name: str
    weight: float
    lda_scale: float
    report: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> tuple[np.ndarray, np.ndarray, float]:
        """``(W, b, lda_scale)``: what :func:`~skurec.models.lda_router.train_lda_router` and
        :func:`~skurec.models.specialists.train_specialists` take as ``global_rows``."""
        return self.W, self.b, self.lda_scale


def _scores(L: torch.Tensor, codes: np.ndarray) -> tuple[float, float]:
    t = torch.from_numpy(np.asarray(codes, dtype=np.int64))
    top1 = float((L.argmax(1) == t).double().mean())
    return top1, float(torch.nn.functional.cross_entropy(L.double(), t))


def choose_global_scorer(
    stats: LDAStatistics,
    shrinkage: float,
    softmax: Any | None,
    X_val: np.ndarray,
    codes_val: np.ndarray,
    weights: tuple[float, ...] = WEIGHT_GRID,
) -> GlobalScorer:
    """Pick the global scorer on validation (module docstring). ``softmax``: a trained
    :class:`~skurec.models.softmax.FlatSoftmax` over the same sorted classes (None: the LDA alone);
    ``codes_val``: class indices of the validation rows."""
    Wl, bl = stats.rows(shrinkage)
    if softmax is None or len(codes_val) == 0:
        return GlobalScorer(Wl, bl, "lda", 0.0, 1.0, {"name": "lda", "weight": 0.0, "reason": "LDA only"})
    if softmax.W.shape != Wl.shape:
        raise ValueError(f"softmax rows {softmax.W.shape} do not match the LDA's {Wl.shape}")
    Ll = linear_scores(X_val, Wl, bl).double()
    Ls = softmax.class_logits(X_val).double()
    T_l = fit_temperature(Ll, codes_val)
    T_s = fit_temperature(Ls, codes_val)
    path, best = [], None
    for a in sorted({float(w) for w in weights}):
        L = (1.0 - a) * Ll / T_l + a * Ls / T_s
        T_a = fit_temperature(L, codes_val)
        top1, nll = _scores(L / T_a, codes_val)
        path.append({"weight": a, "val_top1": round(top1, 6), "val_nll": round(nll, 6), "temperature": T_a})
        key = (round(top1, 6), -nll, -a)
        if best is None or key > best[0]:
            best = (key, a, T_a)
    assert best is not None
    _, a, T_a = best
    chosen = next(p for p in path if p["weight"] == a)
    report = {
        "weight": a,
        "T_lda": T_l,
        "T_softmax": T_s,
        "T_combined": T_a,
        "val_top1": chosen["val_top1"],
        "val_nll": chosen["val_nll"],
        "path": path,
    }
    return global_scorer_from_report(stats, shrinkage, softmax, report)


def global_scorer_from_report(
    stats: LDAStatistics, shrinkage: float, softmax: Any | None, report: dict[str, Any]
) -> GlobalScorer:
    """The scorer :func:`choose_global_scorer` chose, rebuilt from its ``report`` (weight and temperatures), the
    statistics and the softmax: how the pipeline's router and specialist assets get the rows the selection used."""
    Wl, bl = stats.rows(shrinkage)
    a = float(report.get("weight", 0.0))
    if softmax is None or "T_lda" not in report:
        if a > 0:
            raise ValueError("the global scorer uses the flat softmax, but none was given")
        return GlobalScorer(Wl, bl, "lda", 0.0, 1.0, dict(report, name="lda"))
    T_l, T_s, T_a = (float(report[k]) for k in ("T_lda", "T_softmax", "T_combined"))
    W = ((1.0 - a) * Wl.astype(np.float64) / T_l + a * softmax.W.astype(np.float64) / T_s) / T_a
    b = ((1.0 - a) * bl.astype(np.float64) / T_l + a * softmax.b.astype(np.float64) / T_s) / T_a
    lda_scale = ((1.0 - a) if a < 1.0 else 1.0) / (T_l * T_a)
    name = "lda" if a == 0.0 else ("softmax" if a == 1.0 else "lda+softmax")
    return GlobalScorer(W.astype(np.float32), b.astype(np.float32), name, a, float(lda_scale), dict(report, name=name))


__all__ = ["WEIGHT_GRID", "GlobalScorer", "choose_global_scorer", "global_scorer_from_report"]
