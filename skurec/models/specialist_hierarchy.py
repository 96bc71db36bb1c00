"""The specialist hierarchy (the ``"production"`` recipe of :func:`~skurec.models.hierarchy_recipes.train_hierarchy`,
also :func:`~skurec.models.hierarchy_recipes.train_specialist_hierarchy`): global scorer -> confusion superclasses ->
router -> specialists; this module holds its config, the trained-hierarchy record and the validation helpers every
recipe uses (routing width, fallback to the global scorer).

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._common import one_thread
from .global_scorer import WEIGHT_GRID
from .hierarchical import HierarchicalClassifier
from .lda import LDAStatistics
from .softmax import SoftmaxConfig
from .specialists import SpecialistConfig
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
class TrainedHierarchy:
    """A trained hierarchy of any recipe (:func:`~skurec.models.hierarchy_recipes.train_hierarchy`): the model, its
    superclasses, what validation chose (``report``) and the LDA statistics every stage
    was derived from (``stats``, for ``model.classes``: the pipeline stores them for the router and specialist refits).
    """

    model: HierarchicalClassifier
    superclasses: Superclasses
    report: dict[str, Any]
    stats: LDAStatistics | None = None
    #: the chosen routed hierarchy before any global-scorer fallback (its router keeps its validation temperature);
    #: the pipeline hands its router on to ``coarse_model`` so the router is fitted once
    routed: HierarchicalClassifier | None = None


#: the former name of :class:`TrainedHierarchy`
SpecialistHierarchy = TrainedHierarchy


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


__all__ = [
    "SpecialistHierarchy",
    "SpecialistHierarchyConfig",
    "TrainedHierarchy",
    "choose_route_m",
    "global_scorer_hierarchy",
    "pick_route_m",
    "route_width_scores",
]
