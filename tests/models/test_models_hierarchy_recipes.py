"""One hierarchy family: train_hierarchy's recipes (production, case_study), its registered parts, their
compatibility check, a part registered by a test, and the case-study model's save/load round trip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from skurec.models import (
    FINE_HEADS,
    ROUTERS,
    SUPERCLASS_BUILDERS,
    CaseStudyConfig,
    CoarseHead,
    DenseConfig,
    FineConfig,
    FineHead,
    FlatSoftmax,
    HierarchicalClassifier,
    IncompatibleParts,
    LDARouter,
    SoftmaxConfig,
    SpecialistHead,
    SpecialistHierarchyConfig,
    Superclasses,
    case_study_n_superclasses,
    choose_global_scorer,
    choose_route_m,
    confusion_superclasses,
    fit_flat_softmax,
    global_scorer_hierarchy,
    l2_normalize,
    lda_statistics,
    load_classifier,
    register_superclass_builder,
    train_hierarchy,
    train_lda_router,
    train_specialist_hierarchy,
    train_specialists,
)
from skurec.models._common import encode_labels
from skurec.models.hierarchy_recipes import unregister
from skurec.models.lda_router import SHRINKAGE_GRID, choose_shrinkage
from skurec.models.superclasses import METHOD_UMAP

N_FAMILIES, PER_FAMILY, DIM = 8, 5, 24
FAST = dict(coarse=DenseConfig(max_epochs=10, batch_size=128), fine=FineConfig(proj_dim=16, steps=40, eval_every=20))


@dataclass
class Data:
    X: np.ndarray
    y: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    Xt: np.ndarray
    yt: np.ndarray
    flat: FlatSoftmax


@pytest.fixture(scope="module")
def data() -> Data:
    """40 SKUs in 8 families of look-alikes (family f: SKUs ``f<f>-<k>``), noisy enough that routing matters."""
    rng = np.random.default_rng(0)
    fam = rng.normal(size=(N_FAMILIES, DIM)) * 2
    names = [f"f{f}-{k}" for f in range(N_FAMILIES) for k in range(PER_FAMILY)]
    means = np.stack([fam[i // PER_FAMILY] + rng.normal(size=DIM) * 0.6 for i in range(len(names))])

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = np.concatenate([m + rng.normal(size=(n, DIM)) * 1.0 for m in means])
        return l2_normalize(X).astype(np.float32), np.repeat(names, n)

    (X, y), (Xv, yv), (Xt, yt) = draw(20), draw(6), draw(6)
    flat = fit_flat_softmax(X, y, Xv, yv, SoftmaxConfig(max_epochs=5, min_steps=50), device="cpu")
    return Data(X, y, Xv, yv, Xt, yt, flat)


def _same_predictions(a: HierarchicalClassifier, b: HierarchicalClassifier, X: np.ndarray) -> None:
    pa, pb = a.predict_topk(X, 3), b.predict_topk(X, 3)
    np.testing.assert_array_equal(pa.labels, pb.labels)
    np.testing.assert_array_equal(pa.scores, pb.scores)


def test_production_recipe_is_train_specialist_hierarchy_and_its_registered_parts(data: Data) -> None:
    cfg = SpecialistHierarchyConfig(max_sizes=(4,))
    got = train_hierarchy(data.X, data.y, data.Xv, data.yv, "production", device="cpu", flat=data.flat, config=cfg)
    alias = train_specialist_hierarchy(data.X, data.y, data.Xv, data.yv, cfg, device="cpu", flat=data.flat)
    _same_predictions(got.model, alias.model, data.Xt)
    assert got.report["parts"] == {"superclasses": "confusion", "router": "lda", "fine_head": "specialists"}
    assert isinstance(got.model.coarse, LDARouter) and isinstance(got.model.fine, SpecialistHead)
    # the same parts assembled by hand from the public functions give exactly the same model
    classes = sorted(set(data.y))
    stats = lda_statistics(data.X, encode_labels(data.y, classes), len(classes))
    codes_val = encode_labels(data.yv, classes)
    lam, _, _ = choose_shrinkage(stats, data.Xv, codes_val, SHRINKAGE_GRID)
    scorer = choose_global_scorer(stats, lam, data.flat, data.Xv, codes_val, cfg.global_weights)
    sc = confusion_superclasses(data.X, data.y, max_size=4, shrinkage=lam, stats=stats)
    sc_map = sc.superclass_of_class()
    common = dict(stats=stats, device="cpu", global_rows=scorer.rows())
    router = train_lda_router(
        data.X, data.y, sc_map, data.Xv, data.yv, shrinkage=lam, n_superclasses=sc.n_superclasses, **common
    )
    spec = train_specialists(data.X, data.y, sc_map, router, data.Xv, data.yv, cfg.specialists, **common)
    model = HierarchicalClassifier(router, spec, sc_map, m=sc.n_superclasses)
    m, _ = choose_route_m(model, data.Xv, data.yv, cfg.m_grid, cfg.m_tolerance)
    expected = global_scorer_hierarchy(model) if "fallback" in got.report else model.with_m(m)
    _same_predictions(got.model, expected, data.Xt)
    np.testing.assert_array_equal(got.superclasses.assignment, sc.assignment)
    assert got.stats is not None and got.report["shrinkage"] == lam
    assert {"stats", "shrinkage", "global_scorer", "superclasses", "routers", "specialists"} <= set(
        got.report["stage_seconds"]
    )


def test_case_study_recipe_builds_umap_superclasses_a_dense_router_and_the_fewshot_head(data: Data) -> None:
    res = train_hierarchy(
        data.X, data.y, data.Xv, data.yv, "case_study", device="cpu", case_study=CaseStudyConfig(**FAST)
    )
    model, sc, report = res.model, res.superclasses, res.report
    assert isinstance(model.coarse, CoarseHead) and isinstance(model.fine, FineHead)
    assert sc.method == METHOD_UMAP and sc.n_superclasses == case_study_n_superclasses(40) == 4
    assert model.superclass_of_class() == sc.superclass_of_class()
    assert report["recipe"] == "case_study" and report["parts"]["router"] == "dense"
    assert report["m"] in report["val_top1_by_m"] and model.m == report["m"]
    assert report["val_top1"] == max(report["val_top1_by_m"].values()) or report["m"] < sc.n_superclasses
    assert report["router_val_top1"] == model.coarse.metrics["val_top1"]  # the coarse head validated on its own
    assert {"prototypes", "superclasses", "routers", "fine_heads", "candidate_scores"} <= set(report["stage_seconds"])
    assert res.stats is None  # the case study needs no LDA statistics
    top1 = float(np.mean(model.predict_topk(data.Xt, 1).labels[:, 0] == data.yt))
    assert top1 > 0.5  # far above chance (1/40) on a noisy catalogue
    # the case-study model round-trips through the one loader
    loaded = load_classifier(model.to_files(), device="cpu")
    assert isinstance(loaded, HierarchicalClassifier) and isinstance(loaded.coarse, CoarseHead)
    assert loaded.m == model.m
    _same_predictions(loaded, model, data.Xt)


@pytest.mark.parametrize(
    "n_classes, expected", [(1, 1), (2, 2), (10, 2), (40, 4), (60, 6), (500, 50), (1000, 100), (2000, 100)]
)
def test_the_case_study_superclass_count_rule(n_classes: int, expected: int) -> None:
    assert case_study_n_superclasses(n_classes) == expected


def test_incompatible_or_unknown_parts_raise_clear_errors(data: Data) -> None:
    with pytest.raises(IncompatibleParts, match=r"fine head 'specialists' cannot work behind router 'dense'.*'lda'"):
        train_hierarchy(data.X, data.y, data.Xv, data.yv, "case_study", fine_head="specialists")
    with pytest.raises(ValueError, match=r"unknown router part 'mystery'; registered: \['dense', 'lda'\]"):
        train_hierarchy(data.X, data.y, data.Xv, data.yv, router="mystery")
    with pytest.raises(ValueError, match="unknown hierarchy recipe 'flat'"):
        train_hierarchy(data.X, data.y, data.Xv, data.yv, "flat")
    with pytest.raises(TypeError, match=r"unknown options \['n_superclass'\]"):
        train_hierarchy(data.X, data.y, data.Xv, data.yv, "case_study", n_superclass=3)
    assert {"confusion", "umap_agglomerative"} <= set(SUPERCLASS_BUILDERS)
    assert {"lda", "dense"} <= set(ROUTERS) and {"specialists", "fewshot"} <= set(FINE_HEADS)


def test_a_part_registered_by_a_test_is_used_and_mixes_with_the_other_recipes_parts(data: Data) -> None:
    calls = []

    @register_superclass_builder("by_family_prefix", summary=lambda sc: {"method": sc.method})
    def by_family(run):  # type: ignore[no-untyped-def]
        calls.append(len(run.classes))
        assignment = np.asarray([int(c[1 : c.index("-")]) for c in run.classes], dtype=np.int64)
        proj = np.zeros((len(run.classes), 2), np.float32)
        return [Superclasses(run.classes, assignment, N_FAMILIES, proj, "family-prefix")]

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_superclass_builder("by_family_prefix")(by_family)
        res = train_hierarchy(
            data.X,
            data.y,
            data.Xv,
            data.yv,
            "case_study",
            superclasses="by_family_prefix",
            router="lda",
            device="cpu",
            flat=data.flat,
            fine=FAST["fine"],
        )
    finally:
        unregister("by_family_prefix", SUPERCLASS_BUILDERS)
    assert calls == [40] and "by_family_prefix" not in SUPERCLASS_BUILDERS
    assert res.report["parts"] == {"superclasses": "by_family_prefix", "router": "lda", "fine_head": "fewshot"}
    assert res.superclasses.method == "family-prefix" and res.model.n_superclasses == N_FAMILIES
    assert isinstance(res.model.coarse, LDARouter) and isinstance(res.model.fine, FineHead)
    assert res.model.superclass_of_class()["f3-2"] == 3
    assert "global_scorer" in res.report  # the LDA router built on the global scorer chosen on validation
