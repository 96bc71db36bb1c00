"""Train the specialist hierarchy end to end: global scorer -> confusion superclasses -> router -> specialists.

The global SKU scorer every stage builds on is chosen on validation among the shrinkage LDA, the strong flat softmax
(:mod:`.softmax`) and their calibrated combination (:mod:`.global_scorer`); with ``beta = 0`` over all superclasses
(router temperature 1) the hierarchy is exactly that scorer, and when validation says no hierarchy beats it, that
exact configuration is what is returned (``report["fallback"]``).

One pass of sufficient statistics (:func:`~skurec.models.lda.lda_statistics`) feeds every stage, so the whole
hierarchy is closed form (eigendecompositions and matmuls, no SGD). Every choice is made on the validation split:
the LDA shrinkage (SKU top-1), the router temperature (superclass NLL), the superclass size cap, the specialist
weight ``beta`` (``0`` = fall back to the global model when the specialists do not help) and the default routing
width ``m`` (the smallest whose validation top-1 is within ``m_tolerance`` of the best).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._common import EmbeddingInputError, check_xy, encode_labels, one_thread
from .confusion_superclasses import confusion_superclasses_by_cap
from .global_scorer import WEIGHT_GRID, choose_global_scorer
from .hierarchical import HierarchicalClassifier
from .lda import LDAStatistics, lda_statistics
from .lda_router import SHRINKAGE_GRID, choose_shrinkage, train_lda_router
from .softmax import FlatSoftmax, SoftmaxConfig, fit_flat_softmax
from .specialists import SpecialistConfig, train_specialists
from .superclasses import Superclasses


@dataclass(frozen=True)
class SpecialistHierarchyConfig:
    """``max_sizes``: superclass size caps tried (validation picks one); ``m_grid``: routing widths tried;
    ``global_weights``: softmax weights of the global scorer tried (``(0.0,)``: the LDA alone, no softmax trained);
    ``softmax``: the flat softmax's config when the trainer has to fit it."""

    max_sizes: tuple[int, ...] = (4, 8)
    specialists: SpecialistConfig = field(default_factory=SpecialistConfig)
    m_grid: tuple[int, ...] = (1, 2, 3, 5, 10)
    m_tolerance: float = 0.001
    shrinkage: float | None = None
    global_weights: tuple[float, ...] = WEIGHT_GRID
    softmax: SoftmaxConfig = field(default_factory=SoftmaxConfig)


@dataclass
class SpecialistHierarchy:
    """The trained model, its superclasses, what validation chose (``report``) and the LDA statistics every stage
    was derived from (``stats``, for ``model.classes``: the pipeline stores them for the router and specialist refits).
    """

    model: HierarchicalClassifier
    superclasses: Superclasses
    report: dict[str, Any]
    stats: LDAStatistics | None = None
    #: the chosen routed hierarchy before any global-scorer fallback (its router keeps its validation temperature);
    #: the pipeline hands its router on to ``coarse_model`` so the router is fitted once
    routed: HierarchicalClassifier | None = None


def route_width_scores(
    model: HierarchicalClassifier, X_val: np.ndarray, y_val: np.ndarray, m_grid: tuple[int, ...]
) -> tuple[dict[int, float], dict[int, float]]:
    """Validation ``({m: top-1}, {m: top-3})`` for the widths of ``m_grid`` (capped at the number of superclasses)
    and all superclasses, from one pass of the two stages over ``X_val``."""
    n = model.n_superclasses
    widths = sorted({min(int(m), n) for m in m_grid} | {n})
    with one_thread():  # many small per-batch operations (see skurec.models._common.one_thread)
        preds = model.predict_topk_widths(X_val, min(3, len(model.classes)), widths)
    truth = np.asarray(y_val)[:, None]
    top1 = {m: float(np.mean(preds[m].labels[:, 0] == y_val)) for m in widths}
    top3 = {m: float(np.mean((preds[m].labels == truth).any(axis=1))) for m in widths}
    return top1, top3


def pick_route_m(top1: dict[int, float], top3: dict[int, float], tolerance: float) -> int:
    """Among the widths whose top-1 is within ``tolerance`` of the best, the best top-3 (ties: the smallest)."""
    best = max(top1.values())
    eligible = [m for m in sorted(top1) if top1[m] >= best - tolerance]
    return max(eligible, key=lambda m: (top3[m], -m))


def choose_route_m(
    model: HierarchicalClassifier,
    X_val: np.ndarray,
    y_val: np.ndarray,
    m_grid: tuple[int, ...] = SpecialistHierarchyConfig.m_grid,
    tolerance: float = SpecialistHierarchyConfig.m_tolerance,
) -> tuple[int, dict[int, float]]:
    """The routing width: among the widths of ``m_grid`` (and all superclasses) whose validation top-1 is within
    ``tolerance`` of the best, the one with the best validation top-3 (ties: the smallest, the cheapest); a hard
    split (m=1) ranks only one superclass's SKUs, so it can cost top-3 at no top-1 gain. Returns
    ``(m, {m: val top-1})``; every width is scored from one pass of the two stages over ``X_val``."""
    top1, top3 = route_width_scores(model, X_val, y_val, m_grid)
    return pick_route_m(top1, top3, tolerance), top1


def global_scorer_hierarchy(model: HierarchicalClassifier) -> HierarchicalClassifier:
    """The same stages configured to score exactly like their global scorer: specialist weight ``beta = 0``, router
    temperature 1 (``p(s) = sum of its SKUs' p(c)``) and every superclass routed, so ``p(s) p(c | s) = p(c)``."""
    router, head = copy.copy(model.coarse), copy.copy(model.fine)
    router.temperature = 1.0
    head.beta, head.scale, head._rows = 0.0, 1.0, None
    return HierarchicalClassifier(router, head, model.superclass_of_class(), m=model.n_superclasses)


def train_specialist_hierarchy(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: SpecialistHierarchyConfig | None = None,
    device: str | torch.device | None = None,
    stats: LDAStatistics | None = None,
    flat: FlatSoftmax | None = None,
) -> SpecialistHierarchy:
    """Fit and select the whole hierarchy on ``(X, y)`` with validation ``(X_val, y_val)`` (module docstring).

    ``stats``: precomputed :func:`~skurec.models.lda.lda_statistics` of ``(X, sorted classes of y)``; ``flat``: the
    already trained :func:`~skurec.models.softmax.fit_flat_softmax` of the same rows (else it is fitted here when
    ``config.global_weights`` has a weight > 0). The report's ``stage_seconds`` says where the time went."""
    t0 = time.perf_counter()
    clock = t0
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(seconds.get(name, 0.0) + now - clock, 3)
        clock = now

    config = config or SpecialistHierarchyConfig()
    X, y = check_xy(X, y)
    X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
    classes = sorted(np.unique(y).tolist())
    unknown = sorted(set(np.unique(y_val).tolist()) - set(classes))
    if unknown:
        raise EmbeddingInputError(f"validation SKUs without training images: {unknown[:5]}")
    if stats is None:
        stats = lda_statistics(X, encode_labels(y, classes), len(classes))
    elif stats.n_classes != len(classes) or stats.dim != X.shape[1]:
        raise EmbeddingInputError("stats were computed for another class list or embedding width")
    t_stats = time.perf_counter() - t0
    lap("stats")
    # shrinkage first (superclass-independent: the global SKU scorer's top-1 does not depend on the grouping)
    grid = (config.shrinkage,) if config.shrinkage is not None else SHRINKAGE_GRID
    lam, flat_top1, _ = choose_shrinkage(stats, X_val, encode_labels(y_val, classes, "y_val"), grid)
    report: dict[str, Any] = {"shrinkage": lam, "val_flat_lda_top1": flat_top1, "candidates": []}
    lap("shrinkage")
    codes_val = encode_labels(y_val, classes, "y_val")
    if any(w > 0 for w in config.global_weights):
        if flat is None:
            flat = fit_flat_softmax(X, y, X_val, y_val, config.softmax, device=device)
        elif list(flat.classes) != classes:
            raise EmbeddingInputError("the flat softmax was trained on another class list")
        lap("softmax")
    else:
        flat = None
    scorer = choose_global_scorer(stats, lam, flat, X_val, codes_val, config.global_weights)
    report["global_scorer"] = scorer.report
    lap("global_scorer")
    by_cap = confusion_superclasses_by_cap(stats, classes, config.max_sizes, lam)
    lap("superclasses")
    best: tuple[float, int, Any] | None = None
    for cap, sc in by_cap.items():
        sc_map = sc.superclass_of_class()
        router = train_lda_router(
            X,
            y,
            sc_map,
            X_val,
            y_val,
            shrinkage=lam,
            n_superclasses=sc.n_superclasses,
            stats=stats,
            device=device,
            global_rows=scorer.rows(),
        )
        lap("routers")
        spec = train_specialists(
            X,
            y,
            sc_map,
            router,
            X_val,
            y_val,
            config.specialists,
            stats=stats,
            device=device,
            global_rows=scorer.rows(),
        )
        lap("specialists")
        model = HierarchicalClassifier(router, spec, sc_map, m=sc.n_superclasses)
        widths = route_width_scores(model, X_val, y_val, config.m_grid)  # the cap's score and its route-m search
        score = widths[0][sc.n_superclasses]
        lap("candidate_scores")
        report["candidates"].append(
            {
                "max_size": cap,
                "n_superclasses": sc.n_superclasses,
                "val_top1": score,
                "beta": spec.beta,
                "router_val_top1": router.metrics.get("val_top1"),
                "router_val_top3": router.metrics.get("val_top3"),
            }
        )
        if best is None or score > best[0]:
            best = (score, cap, (model, sc, widths))
    assert best is not None
    model, sc, (by_m, top3) = best[2]
    routed = model
    m_best = pick_route_m(by_m, top3, config.m_tolerance)
    g_top1 = float(scorer.report.get("val_top1", flat_top1))
    report["val_global_top1"] = g_top1
    if by_m[m_best] < g_top1:  # no hierarchy beats its own global scorer on validation: deploy exactly that scorer
        model = global_scorer_hierarchy(model)
        by_m, m_best = {**by_m, model.m: g_top1}, model.m
        report["fallback"] = "global scorer (beta 0, all superclasses, router temperature 1)"
    report.update(
        {
            "max_size": best[1],
            "n_superclasses": sc.n_superclasses,
            "val_top1_by_m": by_m,
            "m": m_best,
            "val_top1": by_m[m_best],
            "beta": model.fine.beta,
            "temperature": model.coarse.temperature,
            "stats_seconds": round(t_stats, 3),
            "stage_seconds": seconds,
            "train_seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return SpecialistHierarchy(model.with_m(m_best), sc, report, stats, routed)


__all__ = [
    "SpecialistHierarchy",
    "SpecialistHierarchyConfig",
    "choose_route_m",
    "global_scorer_hierarchy",
    "pick_route_m",
    "route_width_scores",
    "train_specialist_hierarchy",
]
