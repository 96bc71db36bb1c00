"""Reference models on the same embeddings and split as the deployed hierarchy (group ``train``): the flat baselines
(the strong flat softmax over every SKU, which the hierarchy's global scorer may reuse, and the nearest prototype) and
the published coarse-to-fine recipe (``case_study``). The evaluation report puts them side by side with the deployed
model; none of them is deployed by a full rebuild unless the gate prefers the flat softmax."""

import time

import dagster as dg

from skurec.embeddings.training_data import load_training_data
from skurec.layout import CASE_STUDY_DIR, FLAT_LINEAR_DIR, FLAT_PROTOTYPE_DIR
from skurec.models import (
    CaseStudyConfig,
    FlatPrototype,
    SoftmaxConfig,
    fit_flat_softmax,
    superclass_names,
    train_hierarchy,
)
from skurec.store.artifacts import artifact_exists, files_digest, write_files
from skurec_assets.embeddings import image_embeddings
from skurec_assets.metadata import markdown_table
from skurec_assets.training import CODE_VERSION, TRAIN
from skurec_resources import StorageResource


class CaseStudyTrainConfig(dg.Config):
    # Superclasses of the published recipe; None: its rule (about one per 10 SKUs, 100 at 1-2k SKUs).
    n_superclasses: int | None = CaseStudyConfig.n_superclasses
    seed: int = CaseStudyConfig.seed


class FlatTrainConfig(dg.Config):
    # L2 strengths of the flat softmax trained side by side (validation over all SKUs picks one, with the epoch).
    weight_decays: list[float] = list(SoftmaxConfig.weight_decays)
    max_epochs: int = SoftmaxConfig.max_epochs


@dg.asset(
    group_name=TRAIN,
    deps=[image_embeddings],
    code_version=CODE_VERSION,
    kinds={"pytorch", "safetensors"},
    description=(
        "Flat baselines on the same embeddings and split: the strong flat softmax over all SKUs (minibatch Adam, L2 "
        "strength and stopping epoch chosen on validation over every SKU, temperature-calibrated) and nearest class "
        "prototype."
    ),
)
def flat_baselines(
    context: dg.AssetExecutionContext, config: FlatTrainConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    t0 = time.perf_counter()
    has_val = len(data.val) > 0
    context.log.info(
        f"fitting the flat softmax over {len(data.classes)} SKUs"
        + (f" (L2 from {config.weight_decays} on validation)" if has_val else " (no validation: first L2 strength)")
    )
    linear = fit_flat_softmax(
        data.fit.X,
        data.fit.y,
        X_val=data.val.X if has_val else None,
        y_val=data.val.y if has_val else None,
        config=SoftmaxConfig(weight_decays=tuple(config.weight_decays), max_epochs=config.max_epochs),
    )
    proto = FlatPrototype.fit(data.fit.X, data.fit.y)
    seconds = time.perf_counter() - t0
    d1 = write_files(ws, FLAT_LINEAR_DIR, linear.to_files())
    d2 = write_files(ws, FLAT_PROTOTYPE_DIR, proto.to_files())
    chosen = {k: v for k, v in linear.metrics.items() if isinstance(v, (int, float, bool))}
    return dg.MaterializeResult(
        metadata={
            "train_seconds": round(seconds, 2),
            "n_classes": len(data.classes),
            "flat_linear": dg.MetadataValue.json(chosen),
        },
        data_version=dg.DataVersion(files_digest({"linear": d1.encode(), "prototype": d2.encode()})),
    )


@dg.asset(
    group_name=TRAIN,
    deps=[image_embeddings],
    code_version=CODE_VERSION,
    kinds={"pytorch", "safetensors"},
    description=(
        "The published coarse-to-fine recipe on the same embeddings and split, for comparison (never deployed): class "
        "prototypes -> UMAP -> agglomerative superclasses (about 100 at 1-2k SKUs), a dense coarse head validated on "
        "its own and a few-shot fine head conditioned on the coarse output (train_hierarchy recipe 'case_study'). "
        "The evaluation report's `case_study` row."
    ),
)
def case_study_model(
    context: dg.AssetExecutionContext, config: CaseStudyTrainConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    if len(data.val) == 0:  # the recipe chooses its head's stopping point and its routing width on validation
        if artifact_exists(ws, CASE_STUDY_DIR):
            ws.delete(CASE_STUDY_DIR)
        reason = "no validation split: the case study chooses its stopping and routing width on validation"
        context.log.warning(f"case study not trained ({reason}); the report has no case_study row")
        return dg.MaterializeResult(metadata={"trained": False, "reason": reason})
    t0 = time.perf_counter()

    def progress(stage: str, step: int, total: int, metrics) -> None:
        if step == total or step % max(1, total // 4) == 0:
            context.log.info(f"case study {stage}: {step}/{total} {dict(metrics)}")

    trained = train_hierarchy(
        data.fit.X,
        data.fit.y,
        data.val.X,
        data.val.y,
        recipe="case_study",
        progress=progress,
        n_superclasses=config.n_superclasses,
        seed=config.seed,
    )
    seconds = time.perf_counter() - t0
    digest = write_files(ws, CASE_STUDY_DIR, trained.model.to_files())
    report = trained.report
    names = superclass_names(trained.superclasses)
    rows = [{"superclass": names[i], "n_classes": len(m)} for i, m in enumerate(trained.superclasses.members())]
    context.log.info(
        f"case study: {trained.superclasses.n_superclasses} superclasses, m {trained.model.m}, "
        f"validation top-1 {report.get('val_top1', float('nan')):.4f} in {seconds:.1f}s"
    )
    return dg.MaterializeResult(
        metadata={
            "trained": True,
            "n_superclasses": trained.superclasses.n_superclasses,
            "superclass_method": str(report.get("superclass_method", trained.superclasses.method)),
            "route_m": int(trained.model.m),
            "val_top1": round(float(report.get("val_top1", float("nan"))), 4),
            "train_seconds": round(seconds, 2),
            "stage_seconds": dg.MetadataValue.json(report.get("stage_seconds") or {}),
            "superclasses": dg.MetadataValue.md(markdown_table(rows[:200])),
        },
        data_version=dg.DataVersion(digest),
    )
