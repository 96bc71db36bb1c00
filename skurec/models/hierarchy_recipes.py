"""One hierarchy family, several recipes: :func:`train_hierarchy` assembles a superclass builder, a router and a fine
head from three registries and selects the result on validation.

Every hierarchy is the same :class:`~skurec.models.hierarchical.HierarchicalClassifier` (``p(s | x) p(c | s, x)``
over the top-``m`` superclasses); what differs is how its three parts are made. The parts are registered by name
(like timm's model registry: adding one is one decorated function, here or in any module that imports this one):

* superclass builders (:data:`SUPERCLASS_BUILDERS`): ``"confusion"`` (groups of SKUs the global shrinkage LDA
  confuses, one candidate per size cap, :mod:`.confusion_superclasses`) and ``"umap_agglomerative"`` (class
  prototypes -> UMAP -> agglomerative clustering, :func:`~skurec.models.superclasses.derive_superclasses`);
* routers (:data:`ROUTERS`): ``"lda"`` (:class:`~skurec.models.lda_router.LDARouter`, the superclass posterior of
  the global scorer) and ``"dense"`` (:class:`~skurec.models.coarse.CoarseHead`, a dense superclass softmax validated
  on its own);
* fine heads (:data:`FINE_HEADS`): ``"specialists"`` (:class:`~skurec.models.specialists.SpecialistHead`, global
  scores x superclass-local whitening) and ``"fewshot"`` (:class:`~skurec.models.fine.FineHead`, an episodic
  prototypical metric inside superclasses).

Named recipes (:data:`RECIPES`): ``"production"`` = confusion + lda + specialists on a global scorer chosen on
validation (the shrinkage LDA, the strong flat softmax or their mix, :mod:`.global_scorer`), with the fallback to
that scorer when no hierarchy beats it on validation; :func:`train_specialist_hierarchy` is this recipe.
``"case_study"`` = the published coarse-to-fine recipe: umap_agglomerative superclasses (:func:`case_study_n_superclasses`
of them: ``n_classes / 10`` clamped to 2..100, i.e. 100 at 1-2k SKUs), a dense coarse head and the few-shot fine head
conditioned on it by soft routing.

The engine (:func:`train_hierarchy`) is the same for every recipe: the shared resources the chosen parts need (the
LDA statistics and shrinkage, then the global scorer) are computed once; every superclass candidate gets a router
and a fine head and is scored on validation over all superclasses; the best candidate wins and the routing width
``m`` is chosen on validation (:func:`~skurec.models.specialist_hierarchy.pick_route_m`). A combination whose parts
cannot work together (e.g. specialists behind a dense router: they need the router's global SKU scores) raises
:class:`IncompatibleParts` naming both. The report says which parts and choices were made and the seconds per stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._common import EmbeddingInputError, ProgressFn, check_xy, encode_labels
from .coarse import CoarseHead, train_coarse
from .confusion_superclasses import confusion_superclasses_by_cap
from .dense import DenseConfig
from .fine import FineConfig, FineHead, train_fine
from .global_scorer import GlobalScorer, choose_global_scorer
from .hierarchical import HierarchicalClassifier
from .lda import LDAStatistics, lda_statistics
from .lda_router import SHRINKAGE_GRID, LDARouter, choose_shrinkage, train_lda_router
from .prototypes import class_prototypes
from .softmax import FlatSoftmax, fit_flat_softmax
from .specialist_hierarchy import (
    SpecialistHierarchyConfig,
    TrainedHierarchy,
    global_scorer_hierarchy,
    pick_route_m,
    route_width_scores,
)
from .specialists import SpecialistHead, train_specialists
from .superclasses import Superclasses, derive_superclasses

#: what the parts may need computed once per run, in the order they are computed
RESOURCES = ("lda", "global_scorer")


class IncompatibleParts(ValueError):
    """The chosen superclass builder / router / fine head cannot work together (the message names them)."""


@dataclass(frozen=True)
class CaseStudyConfig:
    """Knobs of the case study's parts. ``n_superclasses``: None = :func:`case_study_n_superclasses`; ``seed``,
    ``n_neighbors``, ``n_components``: of the UMAP (:func:`~skurec.models.superclasses.derive_superclasses`);
    ``coarse``: the dense coarse head (early-stopped on validation superclass top-1); ``fine``: the few-shot head."""

    n_superclasses: int | None = None
    seed: int = 0
    n_neighbors: int = 15
    n_components: int = 8
    coarse: DenseConfig = field(default_factory=DenseConfig)
    fine: FineConfig = field(default_factory=FineConfig)


#: SKUs per superclass of the case study's rule, and its bounds (the published recipe: about 100 at 1-2k SKUs)
CASE_STUDY_SKUS_PER_SUPERCLASS = 10
CASE_STUDY_MAX_SUPERCLASSES = 100


def case_study_n_superclasses(n_classes: int) -> int:
    """``round(n_classes / 10)`` clamped to ``2..100`` (and to ``n_classes``): 100 at 1-2k SKUs as published, one
    superclass per ~10 SKUs below 1000, never fewer than two groups."""
    n = round(n_classes / CASE_STUDY_SKUS_PER_SUPERCLASS)
    return int(max(1, min(n_classes, max(2, min(CASE_STUDY_MAX_SUPERCLASSES, n)))))


# ---------------------------------------------------------------------------------------------------- the run
class HierarchyRun:
    """One :func:`train_hierarchy` call as the parts see it: the data (``X``, ``y``, ``X_val``, ``y_val``, sorted
    ``classes``), the configs, the device, the report under construction and the clock (:meth:`lap`), plus the
    shared resources computed once when a part needs them (:meth:`lda`, :meth:`global_scorer`)."""

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray,
        y_val: np.ndarray,
        config: SpecialistHierarchyConfig,
        case_study: CaseStudyConfig,
        device: str | torch.device | None,
        progress: ProgressFn | None,
        stats: LDAStatistics | None,
        flat: FlatSoftmax | None,
    ):
        self.t0 = self._clock = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.X, self.y = check_xy(X, y)
        self.X_val, self.y_val = check_xy(X_val, y_val, dim=self.X.shape[1], prefix="val ")
        self.classes: list[str] = sorted(np.unique(self.y).tolist())
        unknown = sorted(set(np.unique(self.y_val).tolist()) - set(self.classes))
        if unknown:
            raise EmbeddingInputError(f"validation SKUs without training images: {unknown[:5]}")
        if stats is not None and (stats.n_classes != len(self.classes) or stats.dim != self.X.shape[1]):
            raise EmbeddingInputError("stats were computed for another class list or embedding width")
        self.config, self.case_study = config, case_study
        self.device, self.progress = device, progress
        self.stats, self.flat = stats, flat
        self.shrinkage: float | None = None
        self.scorer: GlobalScorer | None = None
        self.report: dict[str, Any] = {"candidates": []}

    def lap(self, name: str) -> None:
        """Add the seconds since the last lap to stage ``name`` (the report's ``stage_seconds``)."""
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._clock, 3)
        self._clock = now

    def codes_val(self) -> np.ndarray:
        return encode_labels(self.y_val, self.classes, "y_val")

    def lda(self) -> tuple[LDAStatistics, float]:
        """The LDA statistics of ``(X, classes)`` and the shrinkage chosen on validation SKU top-1."""
        if self.stats is None:
            self.stats = lda_statistics(self.X, encode_labels(self.y, self.classes), len(self.classes))
        if self.shrinkage is None:
            self.report["stats_seconds"] = round(time.perf_counter() - self.t0, 3)
            self.lap("stats")
            grid = (self.config.shrinkage,) if self.config.shrinkage is not None else SHRINKAGE_GRID
            lam, flat_top1, _ = choose_shrinkage(self.stats, self.X_val, self.codes_val(), grid)
            self.shrinkage = lam
            self.report.update({"shrinkage": lam, "val_flat_lda_top1": flat_top1})
            self.lap("shrinkage")
        return self.stats, self.shrinkage

    def global_scorer(self) -> GlobalScorer:
        """The global SKU scorer chosen on validation among the LDA, the flat softmax and their mix."""
        if self.scorer is None:
            stats, lam = self.lda()
            if any(w > 0 for w in self.config.global_weights):
                if self.flat is None:
                    self.flat = fit_flat_softmax(
                        self.X, self.y, self.X_val, self.y_val, self.config.softmax, self.device, self.progress
                    )
                elif list(self.flat.classes) != self.classes:
                    raise EmbeddingInputError("the flat softmax was trained on another class list")
                self.lap("softmax")
            else:
                self.flat = None
            self.scorer = choose_global_scorer(
                stats, lam, self.flat, self.X_val, self.codes_val(), self.config.global_weights
            )
            self.report["global_scorer"] = self.scorer.report
            self.lap("global_scorer")
        return self.scorer


# ---------------------------------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class SuperclassBuilder:
    """``build(run) -> [Superclasses, ...]`` (candidates; validation picks one); ``summary(sc)``: its report entry."""

    name: str
    build: Callable[[HierarchyRun], list[Superclasses]]
    needs: frozenset[str] = frozenset()
    summary: Callable[[Superclasses], dict[str, Any]] = lambda sc: {}
    description: str = ""


@dataclass(frozen=True)
class RouterPart:
    """``fit(run, superclasses) -> router`` (``predict_proba`` / ``logits`` over superclasses); ``provides``: what
    fine heads may rely on (``"sku_scores"``: the router scores every SKU, e.g. an LDA router)."""

    name: str
    fit: Callable[[HierarchyRun, Superclasses], Any]
    needs: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()
    summary: Callable[[Any], dict[str, Any]] = lambda router: {}
    stage: str = "routers"
    description: str = ""


@dataclass(frozen=True)
class FineHeadPart:
    """``fit(run, superclasses, router) -> head`` (``class_logits`` over SKUs); ``requires``: what the router must
    provide; ``fallback(model)``: the same stages scoring like their global scorer (validation falls back to it when
    no hierarchy beats that scorer), or None."""

    name: str
    fit: Callable[[HierarchyRun, Superclasses, Any], Any]
    needs: frozenset[str] = frozenset()
    requires: frozenset[str] = frozenset()
    summary: Callable[[Any], dict[str, Any]] = lambda head: {}
    stage: str = "fine_heads"
    fallback: Callable[[HierarchicalClassifier], HierarchicalClassifier] | None = None
    description: str = ""


SUPERCLASS_BUILDERS: dict[str, SuperclassBuilder] = {}
ROUTERS: dict[str, RouterPart] = {}
FINE_HEADS: dict[str, FineHeadPart] = {}


def _register(table: dict[str, Any], kind: str, part: Any) -> Any:
    if part.name in table:
        raise ValueError(f"a {kind} named {part.name!r} is already registered")
    bad = set(part.needs) - set(RESOURCES)
    if bad:
        raise ValueError(f"{kind} {part.name!r} needs unknown resources {sorted(bad)} (known: {list(RESOURCES)})")
    table[part.name] = part
    return part


def register_superclass_builder(name: str, *, needs: Iterable[str] = (), summary=None, description: str = ""):  # type: ignore[no-untyped-def]
    """Decorator: register ``build(run) -> list[Superclasses]`` as superclass builder ``name``."""

    def deco(build: Callable[[HierarchyRun], list[Superclasses]]) -> Callable[[HierarchyRun], list[Superclasses]]:
        part = SuperclassBuilder(name, build, frozenset(needs), summary or (lambda sc: {}), description)
        _register(SUPERCLASS_BUILDERS, "superclass builder", part)
        return build

    return deco


def register_router(  # type: ignore[no-untyped-def]
    name: str, *, needs: Iterable[str] = (), provides: Iterable[str] = (), summary=None, description: str = ""
):
    """Decorator: register ``fit(run, superclasses) -> router`` as router ``name``."""

    def deco(fit: Callable[[HierarchyRun, Superclasses], Any]) -> Callable[[HierarchyRun, Superclasses], Any]:
        part = RouterPart(
            name, fit, frozenset(needs), frozenset(provides), summary or (lambda r: {}), description=description
        )
        _register(ROUTERS, "router", part)
        return fit

    return deco


def register_fine_head(  # type: ignore[no-untyped-def]
    name: str,
    *,
    needs: Iterable[str] = (),
    requires: Iterable[str] = (),
    summary=None,
    stage: str = "fine_heads",
    fallback=None,
    description: str = "",
):
    """Decorator: register ``fit(run, superclasses, router) -> head`` as fine head ``name``."""

    def deco(fit: Callable[[HierarchyRun, Superclasses, Any], Any]) -> Callable[[HierarchyRun, Superclasses, Any], Any]:
        part = FineHeadPart(
            name, fit, frozenset(needs), frozenset(requires), summary or (lambda h: {}), stage, fallback, description
        )
        _register(FINE_HEADS, "fine head", part)
        return fit

    return deco


def unregister(name: str, table: dict[str, Any]) -> None:
    """Remove a registered part (tests register their own and clean up)."""
    table.pop(name, None)


# ---------------------------------------------------------------------------------------------------- built-in parts
@register_superclass_builder(
    "confusion",
    needs=("lda",),
    summary=lambda sc: {"max_size": sc.params.get("max_size")},
    description="groups of SKUs the global shrinkage LDA confuses, one candidate per size cap",
)
def _confusion(run: HierarchyRun) -> list[Superclasses]:
    stats, lam = run.lda()
    return list(confusion_superclasses_by_cap(stats, run.classes, run.config.max_sizes, lam).values())


@register_superclass_builder(
    "umap_agglomerative",
    summary=lambda sc: {"method": sc.method, "rule": sc.params.get("rule")},
    description="class prototypes -> UMAP (cosine) -> agglomerative clustering",
)
def _umap_agglomerative(run: HierarchyRun) -> list[Superclasses]:
    cfg = run.case_study
    protos = class_prototypes(run.X, run.y)
    run.lap("prototypes")
    n = cfg.n_superclasses
    rule = "given" if n is not None else f"round(n_classes / {CASE_STUDY_SKUS_PER_SUPERCLASS}) clamped to 2..100"
    n = n if n is not None else case_study_n_superclasses(len(protos.classes))
    sc = derive_superclasses(
        protos.vectors, protos.classes, n, seed=cfg.seed, n_neighbors=cfg.n_neighbors, n_components=cfg.n_components
    )
    return [dataclasses.replace(sc, params={**sc.params, "rule": rule})]


def _lda_router_summary(router: LDARouter) -> dict[str, Any]:
    return {
        "temperature": router.temperature,
        "router_val_top1": router.metrics.get("val_top1"),
        "router_val_top3": router.metrics.get("val_top3"),
    }


@register_router(
    "lda",
    needs=("lda", "global_scorer"),
    provides=("sku_scores",),
    summary=_lda_router_summary,
    description="superclass posterior of the global SKU scorer (LDARouter)",
)
def _lda_router(run: HierarchyRun, sc: Superclasses) -> LDARouter:
    stats, lam = run.lda()
    return train_lda_router(
        run.X,
        run.y,
        sc.superclass_of_class(),
        run.X_val,
        run.y_val,
        shrinkage=lam,
        n_superclasses=sc.n_superclasses,
        stats=stats,
        device=run.device,
        global_rows=run.global_scorer().rows(),
    )


@register_router(
    "dense",
    summary=lambda head: {
        "router_val_top1": head.metrics.get("val_top1"),
        "router_val_top3": head.metrics.get("val_top3"),
        "router_epochs": head.metrics.get("epochs_run"),
    },
    description="dense superclass softmax (CoarseHead), early-stopped on validation superclass top-1",
)
def _dense_router(run: HierarchyRun, sc: Superclasses) -> CoarseHead:
    return train_coarse(
        run.X,
        run.y,
        sc.superclass_of_class(),
        run.X_val,
        run.y_val,
        run.case_study.coarse,
        n_superclasses=sc.n_superclasses,
        device=run.device,
        progress=run.progress,
    )


@register_fine_head(
    "specialists",
    needs=("lda", "global_scorer"),
    requires=("sku_scores",),
    summary=lambda head: {"beta": head.beta},
    stage="specialists",
    fallback=global_scorer_hierarchy,
    description="global scores x superclass-local whitening specialists (SpecialistHead)",
)
def _specialists(run: HierarchyRun, sc: Superclasses, router: Any) -> SpecialistHead:
    stats, _ = run.lda()
    return train_specialists(
        run.X,
        run.y,
        sc.superclass_of_class(),
        router,
        run.X_val,
        run.y_val,
        run.config.specialists,
        stats=stats,
        device=run.device,
        global_rows=run.global_scorer().rows(),
    )


@register_fine_head(
    "fewshot",
    summary=lambda head: {"fine_val_within_top1": head.metrics.get("val_within_top1")},
    description="episodic prototypical metric inside superclasses (FineHead)",
)
def _fewshot(run: HierarchyRun, sc: Superclasses, router: Any) -> FineHead:
    del router  # conditioned on the router at inference (soft routing), not in training
    return train_fine(
        run.X,
        run.y,
        sc.superclass_of_class(),
        run.X_val,
        run.y_val,
        run.case_study.fine,
        device=run.device,
        progress=run.progress,
    )


#: named recipes: which part of each registry they use
RECIPES: dict[str, dict[str, str]] = {
    "production": {"superclasses": "confusion", "router": "lda", "fine_head": "specialists"},
    "case_study": {"superclasses": "umap_agglomerative", "router": "dense", "fine_head": "fewshot"},
}
PART_KEYS = ("superclasses", "router", "fine_head")


# ---------------------------------------------------------------------------------------------------- the engine
def resolve_parts(recipe: str, overrides: Mapping[str, Any]) -> tuple[SuperclassBuilder, RouterPart, FineHeadPart]:
    """The recipe's parts with ``overrides`` (``superclasses=`` / ``router=`` / ``fine_head=`` names) applied;
    raises :class:`IncompatibleParts` when the fine head needs something the router does not provide."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown hierarchy recipe {recipe!r}; known: {sorted(RECIPES)}")
    names = {**RECIPES[recipe], **{k: overrides[k] for k in PART_KEYS if overrides.get(k) is not None}}
    parts = []
    for key, table in zip(PART_KEYS, (SUPERCLASS_BUILDERS, ROUTERS, FINE_HEADS)):
        if names[key] not in table:
            raise ValueError(f"unknown {key} part {names[key]!r}; registered: {sorted(table)}")
        parts.append(table[names[key]])
    builder, router, fine = parts
    missing = fine.requires - router.provides
    if missing:
        able = sorted(n for n, r in ROUTERS.items() if fine.requires <= r.provides)
        raise IncompatibleParts(
            f"fine head {fine.name!r} cannot work behind router {router.name!r}: it needs a router that provides "
            f"{sorted(missing)} (routers that do: {able}); superclass builder {builder.name!r}"
        )
    return builder, router, fine


def _split_overrides(overrides: Mapping[str, Any]) -> tuple[SpecialistHierarchyConfig, CaseStudyConfig]:
    """``config=`` / ``case_study=`` objects and single fields of either config (``m_grid=(1, 2)``,
    ``n_superclasses=20``...) -> the two configs; unknown keys raise :class:`TypeError` naming the known ones."""
    config = overrides.get("config") or SpecialistHierarchyConfig()
    case = overrides.get("case_study") or CaseStudyConfig()
    main_fields = {f.name for f in dataclasses.fields(SpecialistHierarchyConfig)}
    case_fields = {f.name for f in dataclasses.fields(CaseStudyConfig)}
    rest = {k: v for k, v in overrides.items() if k not in (*PART_KEYS, "config", "case_study")}
    unknown = sorted(set(rest) - main_fields - case_fields)
    if unknown:
        known = sorted({*PART_KEYS, "config", "case_study", *main_fields, *case_fields})
        raise TypeError(f"train_hierarchy got unknown options {unknown}; known: {known}")
    config = dataclasses.replace(config, **{k: v for k, v in rest.items() if k in main_fields})
    case = dataclasses.replace(case, **{k: v for k, v in rest.items() if k in case_fields})
    return config, case


def _fit_candidates(
    run: HierarchyRun, builder: SuperclassBuilder, router_part: RouterPart, fine_part: FineHeadPart
) -> tuple[HierarchicalClassifier, Superclasses, tuple[dict[int, float], dict[int, float]]]:
    """Router + fine head for every superclass candidate, each scored on validation over all superclasses (and its
    routing widths); the best (ties: the first) with its ``({m: top-1}, {m: top-3})``."""
    candidates = builder.build(run)
    run.lap("superclasses")
    best: tuple[float, Any] | None = None
    for sc in candidates:
        router = router_part.fit(run, sc)
        run.lap(router_part.stage)
        head = fine_part.fit(run, sc, router)
        run.lap(fine_part.stage)
        model = HierarchicalClassifier(router, head, sc.superclass_of_class(), m=sc.n_superclasses)
        widths = route_width_scores(model, run.X_val, run.y_val, run.config.m_grid)  # score + route-m search
        score = widths[0][sc.n_superclasses]
        run.lap("candidate_scores")
        run.report["candidates"].append(
            {
                **builder.summary(sc),
                "n_superclasses": sc.n_superclasses,
                "val_top1": score,
                **fine_part.summary(head),
                **router_part.summary(router),
            }
        )
        if best is None or score > best[0]:
            best = (score, (model, sc, widths))
    if best is None:
        raise EmbeddingInputError(f"superclass builder {builder.name!r} produced no candidate")
    return best[1]


def train_hierarchy(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    recipe: str = "production",
    *,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    stats: LDAStatistics | None = None,
    flat: FlatSoftmax | None = None,
    **overrides: Any,
) -> TrainedHierarchy:
    """Train the hierarchy of ``recipe`` (:data:`RECIPES`) on ``(X, y)``, every choice made on ``(X_val, y_val)``.

    ``overrides``: ``superclasses=`` / ``router=`` / ``fine_head=`` (registered part names), ``config=``
    (:class:`~skurec.models.specialist_hierarchy.SpecialistHierarchyConfig`: the LDA parts' knobs and the routing
    widths ``m_grid`` / ``m_tolerance`` of every recipe), ``case_study=`` (:class:`CaseStudyConfig`), or single fields
    of either config. ``stats``: precomputed :func:`~skurec.models.lda.lda_statistics` of ``(X, sorted classes of
    y)``; ``flat``: the already trained flat softmax of the same rows (used when a part needs the global scorer).
    Returns ``(model, superclasses, report, stats)``; the report names the recipe and its parts, what validation
    chose and ``stage_seconds``."""
    builder, router_part, fine_part = resolve_parts(recipe, overrides)
    config, case = _split_overrides(overrides)
    run = HierarchyRun(X, y, X_val, y_val, config, case, device, progress, stats, flat)
    needs = builder.needs | router_part.needs | fine_part.needs
    if "lda" in needs:
        run.lda()
    if "global_scorer" in needs:
        run.global_scorer()
    model, sc, (by_m, top3) = _fit_candidates(run, builder, router_part, fine_part)
    routed = model
    report = run.report
    m_best = pick_route_m(by_m, top3, config.m_tolerance)
    if run.scorer is not None:
        g_top1 = float(run.scorer.report.get("val_top1", report.get("val_flat_lda_top1", 0.0)))
        report["val_global_top1"] = g_top1
        if fine_part.fallback is not None and by_m[m_best] < g_top1:
            # no hierarchy beats its own global scorer on validation: deploy exactly that scorer
            model = fine_part.fallback(model)
            by_m, m_best = {**by_m, model.m: g_top1}, model.m
            report["fallback"] = "global scorer (beta 0, all superclasses, router temperature 1)"
    report.update(
        {
            "recipe": recipe,
            "parts": {"superclasses": builder.name, "router": router_part.name, "fine_head": fine_part.name},
            **builder.summary(sc),
            "n_superclasses": sc.n_superclasses,
            "superclass_method": sc.method,
            "val_top1_by_m": by_m,
            "m": m_best,
            "val_top1": by_m[m_best],
            **fine_part.summary(model.fine),
            **router_part.summary(model.coarse),
            "stage_seconds": run.seconds,
            "train_seconds": round(time.perf_counter() - run.t0, 3),
        }
    )
    return TrainedHierarchy(model.with_m(m_best), sc, report, run.stats, routed)


def train_specialist_hierarchy(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    config: SpecialistHierarchyConfig | None = None,
    device: str | torch.device | None = None,
    stats: LDAStatistics | None = None,
    flat: FlatSoftmax | None = None,
) -> TrainedHierarchy:
    """The ``"production"`` recipe of :func:`train_hierarchy` (confusion superclasses -> LDA router -> specialists on
    a global scorer chosen on validation; :mod:`.specialist_hierarchy`)."""
    return train_hierarchy(X, y, X_val, y_val, "production", device=device, stats=stats, flat=flat, config=config)


__all__ = [
    "CASE_STUDY_MAX_SUPERCLASSES",
    "CASE_STUDY_SKUS_PER_SUPERCLASS",
    "CaseStudyConfig",
    "FINE_HEADS",
    "FineHeadPart",
    "HierarchyRun",
    "IncompatibleParts",
    "RECIPES",
    "ROUTERS",
    "RouterPart",
    "SUPERCLASS_BUILDERS",
    "SuperclassBuilder",
    "case_study_n_superclasses",
    "register_fine_head",
    "register_router",
    "register_superclass_builder",
    "resolve_parts",
    "train_hierarchy",
    "train_specialist_hierarchy",
    "unregister",
]
