"""Train the specialist hierarchy end to end: global LDA -> confusion superclasses -> LDA router -> specialists.

One pass of sufficient statistics (:func:`~skurec.models.lda.lda_statistics`) feeds every stage, so the whole
hierarchy is closed form (eigendecompositions and matmuls, no SGD). Every choice is made on the validation split:
the LDA shrinkage (SKU top-1), the router temperature (superclass NLL), the superclass size cap, the specialist
weight ``beta`` (``0`` = fall back to the global model when the specialists do not help) and the default routing
width ``m`` (the smallest whose validation top-1 is within ``m_tolerance`` of the best).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._common import EmbeddingInputError, check_xy, encode_labels
from .confusion_superclasses import confusion_superclasses
from .hierarchical import HierarchicalClassifier
from .lda import lda_statistics
from .lda_router import train_lda_router
from .specialists import SpecialistConfig, train_specialists
from .superclasses import Superclasses


@dataclass(frozen=True)
class SpecialistHierarchyConfig:
    """``max_sizes``: superclass size caps tried (validation picks one); ``m_grid``: routing widths tried."""

    max_sizes: tuple[int, ...] = (4, 8)
    specialists: SpecialistConfig = field(default_factory=SpecialistConfig)
    m_grid: tuple[int, ...] = (1, 2, 3, 5, 10)
    m_tolerance: float = 0.001
    shrinkage: float | None = None


@dataclass
class SpecialistHierarchy:
    """The trained model, its superclasses and what validation chose (``report``)."""

    model: HierarchicalClassifier
    superclasses: Superclasses
    report: dict[str, Any]


def _val_top1(model: HierarchicalClassifier, X: np.ndarray, y: np.ndarray, m: int) -> float:
    return float(np.mean(model.predict_topk(X, k=1, m=m).labels[:, 0] == y))


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
    ``(m, {m: val top-1})``."""
    n = model.n_superclasses
    widths = sorted({min(int(m), n) for m in m_grid} | {n})
    top1, top3 = {}, {}
    for m in widths:
        labels = model.predict_topk(X_val, k=min(3, len(model.classes)), m=m).labels
        top1[m] = float(np.mean(labels[:, 0] == y_val))
        top3[m] = float(np.mean((labels == np.asarray(y_val)[:, None]).any(axis=1)))
    best = max(top1.values())
    eligible = [m for m in widths if top1[m] >= best - tolerance]
    return max(eligible, key=lambda m: (top3[m], -m)), top1


def train_specialist_hierarchy(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: SpecialistHierarchyConfig | None = None,
    device: str | torch.device | None = None,
) -> SpecialistHierarchy:
    """Fit and select the whole hierarchy on ``(X, y)`` with validation ``(X_val, y_val)`` (module docstring)."""
    t0 = time.perf_counter()
    config = config or SpecialistHierarchyConfig()
    X, y = check_xy(X, y)
    X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
    classes = sorted(np.unique(y).tolist())
    unknown = sorted(set(np.unique(y_val).tolist()) - set(classes))
    if unknown:
        raise EmbeddingInputError(f"validation SKUs without training images: {unknown[:5]}")
    stats = lda_statistics(X, encode_labels(y, classes), len(classes))
    t_stats = time.perf_counter() - t0
    # shrinkage first (superclass-independent: the router's SKU top-1 does not depend on the grouping)
    probe = train_lda_router(
        X, y, {c: 0 for c in classes}, X_val, y_val, shrinkage=config.shrinkage, stats=stats, device=device
    )
    lam = float(probe.shrinkage)
    report: dict[str, Any] = {
        "shrinkage": lam,
        "val_flat_lda_top1": probe.metrics.get("val_sku_top1"),
        "candidates": [],
    }
    best: tuple[float, int, Any] | None = None
    for cap in config.max_sizes:
        sc = confusion_superclasses(X, y, max_size=cap, shrinkage=lam, stats=stats, classes=classes)
        sc_map = sc.superclass_of_class()
        router = train_lda_router(
            X, y, sc_map, X_val, y_val, shrinkage=lam, n_superclasses=sc.n_superclasses, stats=stats, device=device
        )
        spec = train_specialists(X, y, sc_map, router, X_val, y_val, config.specialists, stats=stats, device=device)
        model = HierarchicalClassifier(router, spec, sc_map, m=sc.n_superclasses)
        score = _val_top1(model, X_val, y_val, sc.n_superclasses)
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
            best = (score, cap, (model, sc))
    assert best is not None
    model, sc = best[2]
    m_best, by_m = choose_route_m(model, X_val, y_val, config.m_grid, config.m_tolerance)
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
            "train_seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return SpecialistHierarchy(model.with_m(m_best), sc, report)


__all__ = ["SpecialistHierarchy", "SpecialistHierarchyConfig", "choose_route_m", "train_specialist_hierarchy"]
