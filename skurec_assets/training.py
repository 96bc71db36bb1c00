"""Training assets: prototypes -> superclasses -> coarse head -> fine head (the hierarchical model), flat baselines.

Each asset reads its inputs from the work directory, calls the framework-free core in ``skurec.models``, writes
its artifact folder (tensor files + JSON, hash-verified) and returns metadata the UI shows. Hyper-parameters are
run config (editable in the launchpad); defaults are the ones the benchmarks were run with.
"""

import hashlib
import io
import json
import time

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skurec import layout
from skurec.artifacts import files_digest, read_files, write_files
from skurec.deployment.training_table import image_ids_sha256, training_table
from skurec.layout import (
    COARSE_DIR,
    FLAT_LINEAR_DIR,
    FLAT_PROTOTYPE_DIR,
    HIERARCHICAL_DIR,
    PROTOTYPES_DIR,
    SIMILAR_JSON,
    SUPERCLASSES_JSON,
    TRAINING_MANIFEST,
    TRAINING_SET,
)
from skurec.layout import superclass_map as load_superclass_map
from skurec.training import TRAINING_CODE_VERSION, load_prototypes, prototypes_files, superclass_count
from skurec.datasets import TrainingData, load_training_data
from skurec.models import (
    DenseConfig,
    FineConfig,
    FlatPrototype,
    fit_flat_logreg,
    HierarchicalClassifier,
    Prototypes,
    class_prototypes,
    derive_superclasses,
    similar_groups as derive_similar_groups,
    superclass_group_ami,
    superclass_scatter_png,
    train_coarse,
    train_fine,
)
from skurec.models.coarse import CoarseHead
from skurec_assets.embeddings import image_embeddings
from skurec_assets.metadata import markdown_table, png_markdown, training_progress
from skurec_resources import StorageResource

TRAIN = "train"
CODE_VERSION = TRAINING_CODE_VERSION

# ---------------------------------------------------------------------------------------------------------- config
class SuperclassConfig(dg.Config):
    # At most this many superclasses ("about 100" for catalogues of 1-2k SKUs) ...
    n_superclasses: int = 100
    # ... and about this many SKUs per superclass on smaller catalogues (81 SKUs -> 10 superclasses, not 81).
    classes_per_superclass: float = 8.0
    seed: int = 0
    n_neighbors: int = 15
    n_components: int = 8


class SimilarConfig(dg.Config):
    # None: data-derived threshold (a quantile of the catalogue's nearest-neighbour cosines)
    threshold: float | None = None
    use_given_groups: bool = True


class CoarseTrainConfig(dg.Config):
    # Hidden width of the coarse head; -1 = auto: linear below 500 SKUs, a 512-wide MLP above (a linear router
    # under-routes at ~20 SKUs per superclass: superclass top-1 0.75 vs 0.95 with the MLP at 2000 SKUs).
    hidden: int = -1
    max_epochs: int = 30
    lr: float = 3e-3
    label_smoothing: float = 0.1
    seed: int = 0


class FineTrainConfig(dg.Config):
    proj_dim: int = 256
    steps: int = 300
    n_support: int = 5
    n_query: int = 5
    route_m: int = 3
    seed: int = 0


class FlatTrainConfig(dg.Config):
    # L2 regularisation of the flat logistic regression (inverse strength, scikit-learn's C).
    C: float = 1.0
    max_iter: int = 300


# ---------------------------------------------------------------------------------------------------------- helpers
def _training_set_table(data: TrainingData) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(training_table(data), preserve_index=False), buf)
    return buf.getvalue()


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
    protos = class_prototypes(data.train.X, data.train.y)
    digest = write_files(ws, PROTOTYPES_DIR, prototypes_files(protos))
    ws.write_bytes(TRAINING_SET, _training_set_table(data))
    context.log.info(f"{len(protos.classes)} prototypes of dim {protos.dim} from {len(data.train)} train images")
    return dg.MaterializeResult(
        metadata={
            "n_classes": len(protos.classes),
            "dim": protos.dim,
            "n_train_images": len(data.train),
            "n_val_images": len(data.val),
            "n_test_images": len(data.test),
            "encoder_id": data.encoder_id,
            "min_images_per_class": int(protos.counts.min()),
        },
        data_version=dg.DataVersion(digest),
    )


@dg.asset(
    name="superclasses",
    group_name=TRAIN,
    deps=["class_prototypes"],
    code_version=CODE_VERSION,
    kinds={"umap", "scikitlearn"},
    description="Superclasses derived from the data: class prototypes -> UMAP (cosine) -> agglomerative clustering.",
)
def superclasses_asset(
    context: dg.AssetExecutionContext, config: SuperclassConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    protos = load_prototypes(ws)
    t0 = time.perf_counter()
    n_target = superclass_count(len(protos.classes), config.n_superclasses, config.classes_per_superclass)
    sc = derive_superclasses(
        protos.vectors,
        protos.classes,
        n_superclasses=n_target,
        seed=config.seed,
        n_neighbors=config.n_neighbors,
        n_components=config.n_components,
    )
    seconds = time.perf_counter() - t0
    doc = sc.to_json_dict()
    version = hashlib.sha256(json.dumps([doc["classes"], doc["assignment"]]).encode()).hexdigest()
    doc["version"] = version
    ws.write_json(SUPERCLASSES_JSON, doc)
    scatter = superclass_scatter_png(sc)
    ws.write_bytes(layout.SUPERCLASSES_PNG, scatter)
    classes_tbl = ws.read_table("classes").set_index("sku_id")
    groups = {c: g for c, g in classes_tbl["group_id"].items() if isinstance(g, str) and g and c in set(sc.classes)}
    ami = superclass_group_ami(sc.assignment, sc.classes, groups) if groups else None
    sizes = sc.sizes()
    context.log.info(f"{sc.n_superclasses} superclasses over {len(sc.classes)} classes ({sc.method}) in {seconds:.1f}s")
    members = sc.members()
    table = [
        {"superclass": i, "n_classes": len(m), "classes": ", ".join(m[:8]) + (" ..." if len(m) > 8 else "")}
        for i, m in enumerate(members)
    ]
    return dg.MaterializeResult(
        metadata={
            "n_superclasses": sc.n_superclasses,
            "n_classes": len(sc.classes),
            "method": sc.method,
            "note": sc.note or "",
            "size_min": int(sizes.min()),
            "size_median": float(np.median(sizes)),
            "size_max": int(sizes.max()),
            "sizes": dg.MetadataValue.json(sizes.astype(int).tolist()),
            "ami_vs_group_id": float(ami) if ami is not None else dg.MetadataValue.null(),
            "superclass_version": version,
            "seconds": round(seconds, 2),
            "umap_projection": dg.MetadataValue.md(png_markdown(scatter, "UMAP projection of class prototypes")),
            "members": dg.MetadataValue.md(markdown_table(table[:200])),
        },
        data_version=dg.DataVersion(version),
    )


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
    groups = derive_similar_groups(protos.vectors, protos.classes, threshold=config.threshold, given_groups=given or None)
    ws.write_json(SIMILAR_JSON, groups)
    multi = group_members(groups, min_size=2)
    n_similar = sum(len(v) for v in multi.values())
    context.log.info(f"{len(multi)} similar groups covering {n_similar}/{len(protos.classes)} classes")
    rows = [{"group": g, "n": len(m), "classes": ", ".join(m[:10])} for g, m in sorted(multi.items(), key=lambda kv: -len(kv[1]))]
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
    description="Coarse dense head over the superclasses, validated on its own (top-1/top-3 superclass accuracy).",
)
def coarse_model(context: dg.AssetExecutionContext, config: CoarseTrainConfig, storage: StorageResource) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    sc_map, sc_doc = load_superclass_map(ws)
    hidden = config.hidden if config.hidden >= 0 else (512 if len(data.classes) >= 500 else 0)
    cfg = DenseConfig(hidden=hidden, max_epochs=config.max_epochs, lr=config.lr, label_smoothing=config.label_smoothing, seed=config.seed)
    t0 = time.perf_counter()
    head = train_coarse(
        data.train.X, data.train.y, sc_map,
        X_val=data.val.X if len(data.val) else None, y_val=data.val.y if len(data.val) else None,
        config=cfg, n_superclasses=int(sc_doc["n_superclasses"]), progress=training_progress(context),
    )
    seconds = time.perf_counter() - t0
    digest = write_files(ws, COARSE_DIR, head.to_files())
    metrics = {k: float(v) for k, v in head.metrics.items() if isinstance(v, (int, float))}
    context.log.info(f"coarse head trained in {seconds:.1f}s: {metrics}")
    return dg.MaterializeResult(
        metadata={
            **{k: round(v, 4) for k, v in metrics.items()},
            "train_seconds": round(seconds, 2),
            "n_superclasses": int(sc_doc["n_superclasses"]),
            "config": dg.MetadataValue.json(cfg.__dict__),
        },
        data_version=dg.DataVersion(digest),
    )


@dg.asset(
    group_name=TRAIN,
    deps=["coarse_model", "superclasses"],
    code_version=CODE_VERSION,
    kinds={"pytorch", "safetensors"},
    description=(
        "Fine few-shot head conditioned on the coarse output: a metric learned episodically inside superclasses, "
        "SKUs as prototypes in that space; bundled with the coarse head as the hierarchical model (soft routing over "
        "the top-m superclasses: p(superclass) x p(SKU | superclass))."
    ),
)
def fine_model(context: dg.AssetExecutionContext, config: FineTrainConfig, storage: StorageResource) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    sc_map, sc_doc = load_superclass_map(ws)
    coarse_files = read_files(ws, COARSE_DIR)
    coarse = CoarseHead.from_files(coarse_files)
    cfg = FineConfig(proj_dim=config.proj_dim, steps=config.steps, n_support=config.n_support, n_query=config.n_query, seed=config.seed)
    t0 = time.perf_counter()
    fine = train_fine(
        data.train.X, data.train.y, sc_map,
        X_val=data.val.X if len(data.val) else None, y_val=data.val.y if len(data.val) else None,
        config=cfg, progress=training_progress(context),
    )
    seconds = time.perf_counter() - t0
    model = HierarchicalClassifier(coarse, fine, sc_map, m=config.route_m)
    files = model.to_files()
    digest = write_files(ws, HIERARCHICAL_DIR, files)
    val_metrics = {}
    if len(data.val):
        for name, m in (("val_top1_soft", config.route_m), ("val_top1_hard", 1)):
            pred = model.predict_topk(data.val.X, k=1, m=m)
            val_metrics[name] = round(float(np.mean(pred.labels[:, 0] == data.val.y)), 4)
    manifest = {
        "catalogue_snapshot": layout.catalogue_snapshot(ws),
        "encoder": data.encoder,
        "superclass_version": sc_doc["version"],
        "train_image_ids_sha256": image_ids_sha256(data.train.image_ids),
        "training_set": TRAINING_SET,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
        "classes": data.classes,
        "configs": {
            "coarse": json.loads(coarse_files["config.json"]).get("hyper_params", {}),
            "fine": cfg.__dict__,
            "superclasses": sc_doc.get("params", {}),
            "route_m": config.route_m,
        },
        "seeds": {"fine": config.seed, "superclasses": sc_doc.get("params", {}).get("seed")},
        "code_version": CODE_VERSION,
        "metrics": {**val_metrics, "fine_train_seconds": round(seconds, 2)},
        "hierarchical_digest": digest,
    }
    ws.write_json(TRAINING_MANIFEST, manifest)
    context.log.info(f"fine head trained in {seconds:.1f}s; validation {val_metrics}")
    return dg.MaterializeResult(
        metadata={
            **val_metrics,
            "train_seconds": round(seconds, 2),
            "route_m": config.route_m,
            "n_classes": len(data.classes),
            "config": dg.MetadataValue.json(cfg.__dict__),
            "artifact": dg.MetadataValue.path(ws.uri(HIERARCHICAL_DIR)),
        },
        data_version=dg.DataVersion(digest),
    )


@dg.asset(
    group_name=TRAIN,
    deps=[image_embeddings],
    code_version=CODE_VERSION,
    kinds={"pytorch", "safetensors"},
    description=(
        "Flat baselines on the same embeddings and split: L2-regularised multinomial logistic regression over all "
        "SKUs (the standard frozen-feature baseline) and nearest class prototype."
    ),
)
def flat_baselines(context: dg.AssetExecutionContext, config: FlatTrainConfig, storage: StorageResource) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    t0 = time.perf_counter()
    context.log.info(f"fitting the flat logistic regression over {len(data.classes)} SKUs")
    linear = fit_flat_logreg(data.train.X, data.train.y, C=config.C, max_iter=config.max_iter)
    proto = FlatPrototype.fit(data.train.X, data.train.y)
    seconds = time.perf_counter() - t0
    d1 = write_files(ws, FLAT_LINEAR_DIR, linear.to_files())
    d2 = write_files(ws, FLAT_PROTOTYPE_DIR, proto.to_files())
    return dg.MaterializeResult(
        metadata={"train_seconds": round(seconds, 2), "n_classes": len(data.classes)},
        data_version=dg.DataVersion(files_digest({"linear": d1.encode(), "prototype": d2.encode()})),
    )
