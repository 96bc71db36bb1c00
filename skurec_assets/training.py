"""Training assets: prototypes, superclasses -> router (coarse) -> specialists (fine) = the hierarchical model (the
reference models beside it, flat baselines and the case study, are in :mod:`skurec_assets.baselines`).

The hierarchy (:func:`skurec.models.train_hierarchy`, recipe ``production``) is closed form: one shrinkage-LDA over
every SKU whose pairwise confusions make the superclasses (look-alikes together), whose implied superclass posterior
is the router, and per-superclass local-whitening specialists whose evidence is added to the global scores. Every
choice (shrinkage, superclass size, specialist weight, routing width) is made on the validation split. ``superclasses``
fits the whole hierarchy once: it writes the LDA statistics (``artifacts/lda_statistics``) and hands the chosen
router and specialists on (``artifacts/hierarchy_fit``, recorded with the superclass version and statistics digest);
``coarse_model`` and ``fine_model`` publish those parts and fit their stage again only when their run config changes
it or the hand-off is stale (then loading the statistics, refused when they were computed on other rows). Models are
fitted on ``TrainingData.fit`` (the train rows plus any train-time views); lineage names the train images. Each asset
reads its inputs from the work directory, calls the framework-free core, writes its artifact folder (tensors + JSON,
hash-verified) and returns metadata for the UI. Run-config defaults are the core's own (its dataclasses and function
defaults).
"""

import hashlib
import inspect
import io
import json
import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skurec import layout
from skurec.deployment.training_table import image_ids_sha256, training_table
from skurec.embeddings.training_data import TrainingData, load_training_data
from skurec.layout import (
    COARSE_DIR,
    FLAT_LINEAR_DIR,
    GLOBAL_SCORER_DIR,
    HIERARCHICAL_DIR,
    HIERARCHY_FIT_DIR,
    PROTOTYPES_DIR,
    SIMILAR_JSON,
    SUPERCLASSES_JSON,
    TRAINING_MANIFEST,
    TRAINING_SET,
)
from skurec.layout import superclass_map as load_superclass_map
from skurec.models import (
    FlatSoftmax,
    HierarchicalClassifier,
    SoftmaxConfig,
    SpecialistConfig,
    SpecialistHierarchyConfig,
    choose_route_m,
    class_prototypes,
    confusion_superclasses,
    fit_lda_statistics,
    global_scorer_hierarchy,
    load_classifier,
    superclass_group_ami,
    superclass_names,
    superclass_scatter_png,
    train_lda_router,
    train_specialist_hierarchy,
    train_specialists,
)
from skurec.models import similar_groups as derive_similar_groups
from skurec.models.hierarchical import DEFAULT_ROUTE_M
from skurec.models.serialization import nest, sub
from skurec.store.artifacts import artifact_exists, files_digest, read_files, write_files
from skurec.store.training_artifacts import (
    TRAINING_CODE_VERSION,
    load_lda_statistics,
    load_prototypes,
    prototypes_files,
    write_lda_statistics,
)
from skurec_assets.embeddings import image_embeddings
from skurec_assets.metadata import markdown_table, png_markdown
from skurec_resources import StorageResource

TRAIN = "train"
CODE_VERSION = TRAINING_CODE_VERSION


# ---------------------------------------------------------------------------------------------------------- config
def _default(fn, name: str):
    """The default of parameter ``name`` of the core function ``fn`` (so run config never re-states a default)."""
    return inspect.signature(fn).parameters[name].default


class SuperclassConfig(dg.Config):
    # Superclass size caps tried on validation (the full hierarchy is fitted for each; the best validation top-1 wins).
    max_sizes: list[int] = list(SpecialistHierarchyConfig.max_sizes)
    # Without a validation split: this cap, and the LDA shrinkage below.
    default_max_size: int = _default(confusion_superclasses, "max_size")
    default_shrinkage: float = _default(confusion_superclasses, "shrinkage")


class SimilarConfig(dg.Config):
    # None: data-derived threshold (a quantile of the catalogue's nearest-neighbour cosines)
    threshold: float | None = None
    use_given_groups: bool = True


class CoarseTrainConfig(dg.Config):
    # Shrinkage of the router's LDA; None: the value chosen on validation when the superclasses were derived.
    shrinkage: float | None = SpecialistHierarchyConfig.shrinkage


class FineTrainConfig(dg.Config):
    # Weight of the superclass-local covariance against the global one, and local eigen-directions per superclass.
    mix: float = SpecialistConfig.mix
    rank: int = SpecialistConfig.rank
    # Specialist weights tried on validation (0 = the global model alone, always tried).
    betas: list[float] = list(SpecialistConfig.betas)
    # Routing width of the deployed model; None: chosen on validation from m_grid.
    route_m: int | None = None
    m_grid: list[int] = list(SpecialistHierarchyConfig.m_grid)
    m_tolerance: float = SpecialistHierarchyConfig.m_tolerance


# ---------------------------------------------------------------------------------------------------------- helpers
def _training_set_table(data: TrainingData) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(training_table(data), preserve_index=False), buf)
    return buf.getvalue()


def _flat_softmax(ws, classes: list[str]) -> FlatSoftmax | None:
    """The ``flat_baselines`` softmax when it exists and covers exactly these classes (the hierarchy reuses it)."""
    if not artifact_exists(ws, FLAT_LINEAR_DIR):
        return None
    flat = load_classifier(read_files(ws, FLAT_LINEAR_DIR))
    return flat if isinstance(flat, FlatSoftmax) and list(flat.classes) == list(classes) else None


def _global_rows(ws, classes: list[str]):
    """``(W, b, lda_scale)`` of the global scorer the ``superclasses`` selection chose (None: the LDA itself)."""
    if not artifact_exists(ws, GLOBAL_SCORER_DIR):
        return None
    g = load_classifier(read_files(ws, GLOBAL_SCORER_DIR))
    if list(g.classes) != list(classes):
        raise ValueError("the stored global scorer was fitted on another class list; rematerialise superclasses")
    return g.W, g.b, float(g.metrics["lda_scale"])


FIT_JSON = "fit.json"


def _write_fit(ws, chosen, superclass_version: str, stats_digest: str) -> str:
    """Hand the superclasses' one hierarchy fit on: the deployable model (``deployed/``), its router as validated on
    its own (``router/``, before any global-scorer fallback) and what they were fitted on (``fit.json``)."""
    report = chosen.report
    files = {
        **nest("deployed/", chosen.model.to_files()),
        **nest("router/", (chosen.routed or chosen.model).coarse.to_files()),
        FIT_JSON: json.dumps(
            {
                "superclass_version": superclass_version,
                "lda_statistics_digest": stats_digest,
                "route_m": int(chosen.model.m),
                "val_top1_by_m": {str(k): float(v) for k, v in (report.get("val_top1_by_m") or {}).items()},
                "fallback": report.get("fallback"),
            }
        ).encode(),
    }
    return write_files(ws, HIERARCHY_FIT_DIR, files)


def _hierarchy_fit(ws, sc_doc: dict) -> tuple[dict[str, bytes], dict] | None:
    """``(files, fit.json)`` of the superclasses' hierarchy fit when it was made on exactly these superclasses and LDA
    statistics; ``None`` otherwise (the caller fits its stage). Parts: ``sub(files, "router/")`` and ``"deployed/"``."""
    if not artifact_exists(ws, HIERARCHY_FIT_DIR):
        return None
    files = read_files(ws, HIERARCHY_FIT_DIR)
    fit = json.loads(files[FIT_JSON])
    same = (fit.get("superclass_version"), fit.get("lda_statistics_digest")) == (
        sc_doc.get("version"),
        sc_doc.get("lda_statistics_digest"),
    )
    return (files, fit) if same else None


def _fit_defaults_fine(config: "FineTrainConfig") -> bool:
    """True when the fine stage's config is the one the superclasses' fit used (the core's defaults)."""
    d = SpecialistHierarchyConfig()
    spec = SpecialistConfig(mix=config.mix, rank=config.rank, betas=tuple(config.betas))
    return (
        config.route_m is None
        and spec == d.specialists
        and tuple(config.m_grid) == d.m_grid
        and config.m_tolerance == d.m_tolerance
    )


# ---------------------------------------------------------------------------------------------------------- assets
@dg.asset(
    name="class_prototypes",
    group_name=TRAIN,
    deps=[image_embeddings],
    code_version=CODE_VERSION,
    kinds={"numpy"},
    description="Per-SKU prototype: the re-normalised mean of the SKU's L2-normalised train embeddings.",
)
def class_prototypes_asset(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    protos = class_prototypes(data.fit.X, data.fit.y)
    digest = write_files(ws, PROTOTYPES_DIR, prototypes_files(protos))
    ws.write_bytes(TRAINING_SET, _training_set_table(data))
    context.log.info(
        f"{len(protos.classes)} prototypes of dim {protos.dim} from {len(data.train)} train images "
        f"({len(data.fit)} fit rows)"
    )
    return dg.MaterializeResult(
        metadata={
            "n_classes": len(protos.classes),
            "dim": protos.dim,
            "n_train_images": len(data.train),
            "n_fit_rows": len(data.fit),
            "n_val_images": len(data.val),
            "n_test_images": len(data.test),
            "encoder_id": data.encoder_id,
            "min_images_per_class": int(np.unique(data.train.y, return_counts=True)[1].min()),
        },
        data_version=dg.DataVersion(digest),
    )


@dg.asset(
    name="superclasses",
    group_name=TRAIN,
    deps=[image_embeddings, "flat_baselines"],
    code_version=CODE_VERSION,
    kinds={"pytorch"},
    description=(
        "Superclasses derived from the data: SKUs grouped by the pairwise confusions of a shrinkage-LDA over every "
        "SKU (Mahalanobis distance of the SKU means, closest pairs first, a size cap), so look-alikes share a "
        "superclass. The cap and the LDA shrinkage are chosen on the validation split by fitting the whole hierarchy "
        "for each cap, on a global SKU scorer chosen on validation among the shrinkage LDA, the flat softmax "
        "(flat_baselines, reused) and their calibrated combination. Writes the LDA statistics of the fit rows "
        "(computed once; coarse_model and fine_model reuse them, verified by digest) and the global scorer's rows."
    ),
)
def superclasses_asset(
    context: dg.AssetExecutionContext, config: SuperclassConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    t0 = time.perf_counter()
    classes, stats = fit_lda_statistics(data.fit.X, data.fit.y)  # once: every stage derives from them
    chosen, sc, selection = _choose_superclasses(context, config, ws, data, classes, stats)
    stats_digest = write_lda_statistics(ws, stats, classes, data.fit.X, data.fit.y)
    doc = _write_superclasses(ws, chosen, sc, selection, classes, stats_digest)
    seconds = time.perf_counter() - t0
    context.log.info(f"{sc.n_superclasses} superclasses over {len(sc.classes)} classes ({sc.method}) in {seconds:.1f}s")
    scatter = superclass_scatter_png(sc)
    ws.write_bytes(layout.SUPERCLASSES_PNG, scatter)
    return dg.MaterializeResult(
        metadata={**_superclass_metadata(data, sc, doc, scatter), "seconds": round(seconds, 2)},
        data_version=dg.DataVersion(hashlib.sha256(f"{doc['version']}:{stats_digest}".encode()).hexdigest()),
    )


def _choose_superclasses(context, config: SuperclassConfig, ws, data: TrainingData, classes, stats):
    """``(the hierarchy fit or None, superclasses, selection)``: with a validation split the whole hierarchy is fitted
    per size cap and the best kept; without one, the default cap and shrinkage."""
    fit = data.fit
    if not len(data.val):
        context.log.warning("no validation images: superclass cap and shrinkage are the defaults, not chosen")
        sc = confusion_superclasses(
            fit.X,
            fit.y,
            max_size=config.default_max_size,
            shrinkage=config.default_shrinkage,
            stats=stats,
            classes=classes,
        )
        return None, sc, {"max_size": config.default_max_size, "shrinkage": config.default_shrinkage, "chosen_on": None}
    context.log.info(f"choosing the superclass size cap among {config.max_sizes} on {len(data.val)} validation images")
    chosen = train_specialist_hierarchy(
        fit.X,
        fit.y,
        data.val.X,
        data.val.y,
        SpecialistHierarchyConfig(max_sizes=tuple(config.max_sizes)),
        stats=stats,
        flat=_flat_softmax(ws, classes),
    )
    return chosen, chosen.superclasses, {k: v for k, v in chosen.report.items() if k != "val_top1_by_m"}


def _write_superclasses(ws, chosen, sc, selection: dict, classes, stats_digest: str) -> dict:
    """Write the global scorer's rows, the one hierarchy fit (both only with a fit) and ``superclasses.json``."""
    if chosen is not None:
        router = chosen.model.coarse
        gs = selection.get("global_scorer") or {}
        scorer = FlatSoftmax(classes, router.W, router.b, 1.0, metrics={"lda_scale": router.lda_scale, **gs})
        write_files(ws, GLOBAL_SCORER_DIR, scorer.to_files())
    elif artifact_exists(ws, GLOBAL_SCORER_DIR):
        ws.delete(GLOBAL_SCORER_DIR)  # no validation: the LDA is the global scorer
    doc = sc.to_json_dict()
    doc["version"] = hashlib.sha256(json.dumps([doc["classes"], doc["assignment"]]).encode()).hexdigest()
    doc["selection"] = selection
    doc["lda_statistics_digest"] = stats_digest
    if chosen is not None:  # the one fit: coarse_model and fine_model take its parts instead of fitting them again
        _write_fit(ws, chosen, doc["version"], stats_digest)
    elif artifact_exists(ws, HIERARCHY_FIT_DIR):
        ws.delete(HIERARCHY_FIT_DIR)  # no validation, no fit: the stages fit with their defaults
    ws.write_json(SUPERCLASSES_JSON, doc)
    return doc


def _superclass_metadata(data: TrainingData, sc, doc: dict, scatter: bytes) -> dict:
    """The UI's view of the superclasses: sizes, the cap search, agreement with the catalogue's groups, the members
    by their SKU names and the projection plot."""
    selection = doc["selection"]
    groups = {c: g for c, g in data.group_of_class.items() if c in set(sc.classes)}
    ami = superclass_group_ami(sc.assignment, sc.classes, groups) if groups else None
    sizes = sc.sizes()
    names = superclass_names(sc)  # superclasses by their SKUs, not bare numbers
    table = [
        {"superclass": names[i], "n_classes": len(m), "classes": ", ".join(m[:8]) + (" ..." if len(m) > 8 else "")}
        for i, m in enumerate(sc.members())
    ]
    candidates = selection.get("candidates") or []
    return {
        "n_superclasses": sc.n_superclasses,
        "n_classes": len(sc.classes),
        "method": sc.method,
        "note": sc.note or "",
        "max_size": int(selection["max_size"]),
        "shrinkage": float(selection["shrinkage"]),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "sizes": dg.MetadataValue.json(sizes.astype(int).tolist()),
        "ami_vs_group_id": float(ami) if ami is not None else dg.MetadataValue.null(),
        "superclass_version": doc["version"],
        "lda_statistics_digest": doc["lda_statistics_digest"],
        "n_fit_rows": len(data.fit),
        "stage_seconds": dg.MetadataValue.json(selection.get("stage_seconds") or {}),
        "cap_search": dg.MetadataValue.md(markdown_table(candidates)) if candidates else "",
        "projection": dg.MetadataValue.md(png_markdown(scatter, "SKU means in LDA space, coloured by superclass")),
        "members": dg.MetadataValue.md(markdown_table(table[:200])),
    }


@dg.asset(
    name="similar_groups",
    group_name=TRAIN,
    deps=["class_prototypes"],
    code_version=CODE_VERSION,
    description=(
        "Visually similar SKU groups: mutual nearest-neighbour prototypes above a cosine threshold, joined with the "
        "catalogue's group_id families. The evaluation's 'similar' variant scores the SKUs in these groups."
    ),
)
def similar_groups_asset(
    context: dg.AssetExecutionContext, config: SimilarConfig, storage: StorageResource
) -> dg.MaterializeResult:
    from skurec.models.similar import group_members

    ws = storage.workspace()
    protos = load_prototypes(ws)
    given = None
    if config.use_given_groups:
        classes_tbl = ws.read_table("classes").set_index("sku_id")
        given = {c: g for c, g in classes_tbl["group_id"].items() if isinstance(g, str) and g}
    groups = derive_similar_groups(
        protos.vectors, protos.classes, threshold=config.threshold, given_groups=given or None
    )
    ws.write_json(SIMILAR_JSON, groups)
    multi = group_members(groups, min_size=2)
    n_similar = sum(len(v) for v in multi.values())
    context.log.info(f"{len(multi)} similar groups covering {n_similar}/{len(protos.classes)} classes")
    rows = [
        {"group": g, "n": len(m), "classes": ", ".join(m[:10])}
        for g, m in sorted(multi.items(), key=lambda kv: -len(kv[1]))
    ]
    return dg.MaterializeResult(
        metadata={
            "n_groups": len(multi),
            "n_similar_classes": n_similar,
            "share_similar_classes": round(n_similar / max(1, len(protos.classes)), 3),
            "groups": dg.MetadataValue.md(markdown_table(rows[:100])),
        },
        data_version=dg.DataVersion(hashlib.sha256(json.dumps(groups, sort_keys=True).encode()).hexdigest()),
    )


@dg.asset(
    group_name=TRAIN,
    deps=["superclasses"],
    code_version=CODE_VERSION,
    kinds={"pytorch", "safetensors"},
    description=(
        "Coarse stage: the router over the superclasses, the shrinkage-LDA's implied superclass posterior "
        "(log-sum-exp of its SKUs' scores) with a temperature fitted on validation; validated on its own "
        "(superclass top-1 / top-3)."
    ),
)
def coarse_model(
    context: dg.AssetExecutionContext, config: CoarseTrainConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    sc_map, sc_doc = load_superclass_map(ws)
    shrinkage = config.shrinkage if config.shrinkage is not None else (sc_doc.get("selection") or {}).get("shrinkage")
    has_val = len(data.val) > 0
    t0 = time.perf_counter()
    fit = _hierarchy_fit(ws, sc_doc) if has_val and config.shrinkage is None else None
    router_files = sub(fit[0], "router/") if fit is not None else None
    if router_files is not None:
        router, fitted_by = load_classifier(router_files), "superclasses (the one hierarchy fit, handed on)"
    else:
        why = (
            "no validation split"
            if not has_val
            else "run config sets the shrinkage"
            if config.shrinkage is not None
            else "no hierarchy fit for these superclasses"
        )
        router = _fit_router(ws, data, sc_map, sc_doc, shrinkage, refit_global=config.shrinkage is None)
        fitted_by = f"coarse_model ({why})"
    seconds = time.perf_counter() - t0
    digest = write_files(ws, COARSE_DIR, router_files or router.to_files())  # handed-on bytes stay byte-identical
    metrics = {k: float(v) for k, v in router.metrics.items() if isinstance(v, (int, float))}
    context.log.info(f"router from {fitted_by} in {seconds:.1f}s: {metrics}")
    return dg.MaterializeResult(
        metadata={
            **{k: round(v, 4) for k, v in metrics.items()},
            "fitted_by": fitted_by,
            "train_seconds": round(seconds, 2),
            "n_superclasses": int(sc_doc["n_superclasses"]),
            "shrinkage": float(router.shrinkage),
            "temperature": float(router.temperature),
        },
        data_version=dg.DataVersion(digest),
    )


def _fit_router(ws, data: TrainingData, sc_map, sc_doc, shrinkage, refit_global: bool):
    """Fit the router here (no usable hand-off: no validation split, a shrinkage override, or stale superclasses)."""
    has_val = len(data.val) > 0
    stats = load_lda_statistics(ws, data.fit.X, data.fit.y, sc_doc.get("lda_statistics_digest"))
    router = train_lda_router(
        data.fit.X,
        data.fit.y,
        sc_map,
        X_val=data.val.X if has_val else None,
        y_val=data.val.y if has_val else None,
        shrinkage=shrinkage,
        n_superclasses=int(sc_doc["n_superclasses"]),
        stats=stats,
        global_rows=_global_rows(ws, data.classes) if has_val and refit_global else None,
    )
    return router


def _fit_specialists(ws, data: TrainingData, sc_map, sc_doc, router, config: FineTrainConfig, spec_cfg):
    """Fit the specialists and choose the routing width here (no usable hand-off from the superclasses' fit):
    ``(model, route_m, {m: val top-1})``."""
    has_val = len(data.val) > 0
    stats = load_lda_statistics(ws, data.fit.X, data.fit.y, sc_doc.get("lda_statistics_digest"))
    fine = train_specialists(
        data.fit.X,
        data.fit.y,
        sc_map,
        router,
        X_val=data.val.X if has_val else None,
        y_val=data.val.y if has_val else None,
        config=spec_cfg,
        stats=stats,
        global_rows=(router.W, router.b, router.lda_scale),  # the router aggregates the chosen global scorer
    )
    model = HierarchicalClassifier(router, fine, sc_map, m=router.n_superclasses)
    by_m: dict = {}
    if config.route_m is not None:
        route_m = int(config.route_m)
    elif has_val:
        route_m, by_m = choose_route_m(model, data.val.X, data.val.y, tuple(config.m_grid), config.m_tolerance)
    else:
        route_m = min(DEFAULT_ROUTE_M, router.n_superclasses)
    model = model.with_m(route_m)
    g_top1 = (sc_doc.get("selection") or {}).get("val_global_top1")
    if has_val and config.route_m is None and g_top1 is not None and by_m.get(route_m, 1.0) < float(g_top1):
        # validation says no routing beats the hierarchy's own global scorer: deploy exactly that scorer
        model = global_scorer_hierarchy(model)
        route_m = model.m
        by_m = {**by_m, route_m: float(g_top1)}
    return model, route_m, by_m


@dg.asset(
    group_name=TRAIN,
    deps=["coarse_model", "superclasses"],
    code_version=CODE_VERSION,
    kinds={"pytorch", "safetensors"},
    description=(
        "Fine stage conditioned on the coarse output: one specialist per superclass (superclass-local whitening of "
        "its SKUs' covariance) whose log-likelihoods are added to the global LDA scores with a weight chosen on "
        "validation (0 = the global model alone); bundled with the router as the hierarchical model, routing over "
        "the top-m superclasses (m chosen on validation; m=1 is the hard split)."
    ),
)
def fine_model(
    context: dg.AssetExecutionContext, config: FineTrainConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    sc_map, sc_doc = load_superclass_map(ws)
    coarse_files = read_files(ws, COARSE_DIR)
    router = load_classifier(coarse_files)
    has_val = len(data.val) > 0
    spec_cfg = SpecialistConfig(mix=config.mix, rank=config.rank, betas=tuple(config.betas))
    t0 = time.perf_counter()
    fit = _hierarchy_fit(ws, sc_doc) if has_val and _fit_defaults_fine(config) else None
    if fit is not None and files_digest(sub(fit[0], "router/")) == files_digest(coarse_files):
        model = load_classifier(sub(fit[0], "deployed/"))
        route_m, by_m = int(model.m), {int(m): float(v) for m, v in fit[1]["val_top1_by_m"].items()}
        fitted_by = "superclasses (the one hierarchy fit, handed on)"
    else:
        model, route_m, by_m = _fit_specialists(ws, data, sc_map, sc_doc, router, config, spec_cfg)
        fitted_by = "fine_model (run config differs from the fit's, or no fit for this router)"
    fine = model.fine
    seconds = time.perf_counter() - t0
    files = model.to_files()
    digest = write_files(ws, HIERARCHICAL_DIR, files)
    val_metrics = {}
    if has_val:  # the widths the route-m search scored are not scored again
        scored = {min(m, router.n_superclasses): v for m, v in by_m.items()}
        wanted = {"val_top1_soft": min(route_m, router.n_superclasses), "val_top1_hard": 1}
        missing = sorted({m for m in wanted.values() if m not in scored})
        if missing:
            preds = model.predict_topk_widths(data.val.X, 1, missing)
            scored.update({m: float(np.mean(p.labels[:, 0] == data.val.y)) for m, p in preds.items()})
        val_metrics = {name: round(scored[m], 4) for name, m in wanted.items()}
    manifest = {
        "catalogue_snapshot": layout.catalogue_snapshot(ws),
        "encoder": data.encoder,
        "superclass_version": sc_doc["version"],
        "train_image_ids_sha256": image_ids_sha256(data.train.image_ids),
        "training_set": TRAINING_SET,
        "n_train": len(data.train),
        "n_fit_rows": len(data.fit),
        "n_val": len(data.val),
        "n_test": len(data.test),
        "classes": data.classes,
        "configs": {
            "coarse": json.loads(coarse_files["config.json"]).get("hyper_params", {}),
            "fine": {**spec_cfg.__dict__, "beta": float(fine.beta)},
            "superclasses": {**sc_doc.get("params", {}), "selection": sc_doc.get("selection")},
            "route_m": route_m,
        },
        "seeds": {"flat_softmax": SoftmaxConfig().seed},  # the rest of the hierarchy is closed form
        "code_version": CODE_VERSION,
        "metrics": {**val_metrics, "fine_train_seconds": round(seconds, 2)},
        "hierarchical_digest": digest,
    }
    ws.write_json(TRAINING_MANIFEST, manifest)
    context.log.info(
        f"specialists from {fitted_by} in {seconds:.1f}s (beta {fine.beta}, m {route_m}); validation {val_metrics}"
    )
    return dg.MaterializeResult(
        metadata={
            **val_metrics,
            "train_seconds": round(seconds, 2),
            "route_m": route_m,
            "fitted_by": fitted_by,
            "beta": float(fine.beta),
            "val_top1_by_m": dg.MetadataValue.json({str(k): round(v, 4) for k, v in by_m.items()}),
            "n_classes": len(data.classes),
            "config": dg.MetadataValue.json(spec_cfg.__dict__),
            "artifact": dg.MetadataValue.path(ws.uri(HIERARCHICAL_DIR)),
        },
        data_version=dg.DataVersion(digest),
    )
