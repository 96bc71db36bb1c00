"""Evaluation: the hierarchical model side by side with flat baselines, on all SKUs and on the similar subset."""

import time
from typing import Any

import dagster as dg

from skurec import layout
from skurec.catalogue.audit import tiers_of_classes
from skurec.embeddings.training_data import load_training_data
from skurec.evaluation import (
    CASE_STUDY_KEY,
    GAP_TOLERANCE,
    confusion_png,
    evaluate,
    per_superclass_table,
    predict_all,
    render_markdown_report,
    standard_models,
)
from skurec.layout import (
    CASE_STUDY_DIR,
    CONFUSION_PNG,
    ERROR_GALLERY_PNG,
    EVALUATION_JSON,
    EVALUATION_MD,
    FLAT_LINEAR_DIR,
    FLAT_PROTOTYPE_DIR,
    HIERARCHICAL_DIR,
    SIMILAR_JSON,
)
from skurec.layout import superclass_map as load_superclass_map
from skurec.models import load_classifier
from skurec.models.similar import similar_class_set
from skurec.store.artifacts import artifact_exists, files_digest, read_files
from skurec_assets.metadata import markdown_table, png_markdown
from skurec_resources import StorageResource

EVALUATE = "evaluate"


class EvaluationConfig(dg.Config):
    # Routing width of the soft hierarchical model; None: the model's own (the width that is deployed). m=1 is always
    # reported too, as hierarchical_hard.
    route_m: int | None = None


def _error_gallery(ws, data, split, y_pred, groups) -> bytes:
    """Query photo beside the nearest training photos of the predicted and of the true SKU, for the errors in the
    worst look-alike groups (skurec.deployment.explain.error_gallery_png)."""
    from skurec.deployment.explain import error_gallery_png, gallery_rows
    from skurec.evaluation import worst_similar_groups
    from skurec.store.workspace import read_uri_bytes

    worst = worst_similar_groups(split.y, y_pred, groups)
    rows = gallery_rows(
        split.X, split.y, y_pred, data.train.X, data.train.y, sorted({s for _, m, _ in worst for s in m})
    )
    images = ws.read_table("images", columns=["image_id", "image_uri"])
    uris = dict(zip(images["image_id"].astype(str), images["image_uri"].astype(str)))

    def loader(ids):
        def load(i):
            try:
                return read_uri_bytes(uris[ids[i]], storage_options=ws.storage_options)
            except Exception:  # an unreadable image becomes a grey tile, never a failed report
                return None

        return load

    return error_gallery_png(rows, loader(split.image_ids), loader(data.train.image_ids))


#: the report's rows beyond those of :func:`skurec.evaluation.standard_models`: row name -> (the asset that saves the
#: classifier, its artifact folder in ``layout``). Adding a model to the report is one line here; its asset becomes a
#: dependency of the report.
EXTRA_MODELS: dict[str, tuple[str, str]] = {CASE_STUDY_KEY: ("case_study_model", CASE_STUDY_DIR)}
#: the confusion plot, linked from the report file (the UI shows it as its own metadata entry instead)
CONFUSION_FIGURE = "![confusion among the worst similar groups](confusion_similar.png)"


@dg.asset(
    group_name=EVALUATE,
    deps=["fine_model", "flat_baselines", "similar_groups", *(asset for asset, _ in EXTRA_MODELS.values())],
    code_version="eval-v2",
    kinds={"pytorch"},
    description=(
        "Exact top-1 / top-3 of the hierarchical model (soft and hard routing), the coarse stage alone and the flat "
        "baselines, on every evaluation image and on the visually similar subset. Scores the pinned test split "
        "when the catalogue has one, else the validation split. Writes reports/evaluation.{json,md} and a "
        "confusion plot of the worst similar groups."
    ),
)
def evaluation_report(
    context: dg.AssetExecutionContext, config: EvaluationConfig, storage: StorageResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    data = load_training_data(ws)
    split = data.eval_split
    if len(split) == 0:
        raise ValueError("no evaluation images: the catalogue has neither test rows nor a validation split")
    hier, hier_files, models = _load_models(ws, config.route_m)
    groups = ws.read_json(SIMILAR_JSON)
    sc_map, _ = load_superclass_map(ws)
    result, preds, seconds = _score(ws, data, models, hier, hier_files, groups, sc_map)
    coarse_top, _ = hier.coarse.predict_topk(split.X, 1)
    table = per_superclass_table(preds, split.y, sc_map, coarse_superclass=coarse_top[:, 0])
    body = _report_body(result, table, data.eval_split_name, len(split))
    y_pred = preds["hierarchical_soft"].labels[:, 0]
    png = confusion_png(split.y, y_pred, groups)
    ws.write_json(EVALUATION_JSON, result)
    ws.write_text(EVALUATION_MD, _with_figure(body, CONFUSION_FIGURE))
    ws.write_bytes(CONFUSION_PNG, png)
    gallery = _error_gallery(ws, data, split, y_pred, groups)
    ws.write_bytes(ERROR_GALLERY_PNG, gallery)
    _log_headline(context, result, data.eval_split_name)
    lost_rows = _wrong_where_flat_right(result)
    return dg.MaterializeResult(
        metadata={
            **_flat_metrics(result),
            "split": data.eval_split_name,
            "n_images": len(split),
            "predict_seconds": round(seconds, 3),
            "report": dg.MetadataValue.md(_with_figure(body, "")),
            "confusion_similar": dg.MetadataValue.md(png_markdown(png, "confusion among the worst similar groups")),
            "error_gallery": dg.MetadataValue.md(png_markdown(gallery, "errors in the worst look-alike groups")),
            "hierarchy_wrong_where_flat_right": dg.MetadataValue.md(
                markdown_table(lost_rows, ["sku", "images wrong (flat right)"]) if lost_rows else "(none)"
            ),
            "evaluation_json": dg.MetadataValue.path(ws.uri(EVALUATION_JSON)),
        }
    )


def _load_models(ws, route_m: int | None) -> tuple[Any, dict[str, bytes], dict[str, Any]]:
    """The saved hierarchy (and its files, for the report's digest) and the report's models by row name."""
    hier_files = read_files(ws, HIERARCHICAL_DIR)
    hier = load_classifier(hier_files)
    models = standard_models(
        hier,
        load_classifier(read_files(ws, FLAT_LINEAR_DIR)),
        load_classifier(read_files(ws, FLAT_PROTOTYPE_DIR)),
        route_m=route_m,
        **{
            name: load_classifier(read_files(ws, folder))
            for name, (_, folder) in EXTRA_MODELS.items()
            if artifact_exists(ws, folder)  # an asset may say why it trained nothing (the report notes it)
        },
    )
    return hier, hier_files, models


def _score(ws, data, models, hier, hier_files, groups, sc_map) -> tuple[dict, dict, float]:
    """Every model on the evaluation split: the report's JSON, the predictions and the seconds they took."""
    split = data.eval_split
    t0 = time.perf_counter()
    preds = predict_all(models, split.X)
    seconds = time.perf_counter() - t0
    classes_tbl = ws.read_table("classes")
    result = evaluate(
        models,
        split.X,
        split.y,
        similar_class_set(groups),
        coarse=(hier.coarse, sc_map),
        predictions=preds,
        tiers=tiers_of_classes(classes_tbl),  # head / tail variants and catalogue coverage
        catalogue=classes_tbl["sku_id"].astype(str).tolist(),
    )
    result = {
        "encoder": data.encoder_id,
        "encoder_pretrained": bool(data.encoder.get("pretrained", False)),
        "split": data.eval_split_name,
        "test_split": (layout.audit_summary(ws) or {}).get("test_split"),  # given / carved / none
        "route_m": int(models["hierarchical_soft"].m),
        "hierarchical_digest": files_digest(hier_files),
        **result,
    }
    return result, preds, seconds


def _report_body(result: dict, table: Any, split_name: str, n_images: int) -> str:
    """The report's Markdown without its figure: the rendered result and the notes on what was scored."""
    notes = [f"Scored on the `{split_name}` split ({n_images} images)."]
    scored = result["variants"]["all"]["models"]
    notes += [
        f"No `{n}` row: its asset `{a}` trained no model (see its metadata)."
        for n, (a, _) in EXTRA_MODELS.items()
        if n not in scored
    ]
    if not result["encoder_pretrained"]:
        notes.append("The encoder has RANDOM weights (test encoder): these numbers say nothing about real accuracy.")
    return render_markdown_report(result, table, notes=notes)


def _with_figure(body: str, figure: str) -> str:
    """The report with ``figure`` (a Markdown image line, or ``""`` where the figure is shown beside it)."""
    return f"{body}\n\n{figure}\n"


def _hierarchy_diagnostics(result: dict) -> dict:
    return (result.get("hierarchy") or {}).get("models", {}).get("hierarchical_soft", {})


def _flat_metrics(result: dict) -> dict[str, Any]:
    """Every number of the report as one flat metadata entry (``variant/model/metric``, coverage, gaps, recall)."""
    flat = {}
    for variant, block in result["variants"].items():
        for model, scores in block["models"].items():
            for k, v in scores.items():
                if v is not None:
                    flat[f"{variant}/{model}/{k}"] = round(float(v), 4)
    for model, cov in (result.get("coverage") or {}).get("models", {}).items():
        if cov.get("share") is not None:
            flat[f"coverage/{model}"] = round(float(cov["share"]), 4)
    diag = _hierarchy_diagnostics(result)
    for variant, gap in (diag.get("gap") or {}).items():
        flat[f"{variant}/gap_hierarchical_minus_best_flat"] = round(float(gap["gap_top1"]), 4)
        flat[f"{variant}/best_flat"] = gap["best_flat"]
        if "gap_top3" in gap:
            flat[f"{variant}/gap_top3_hierarchical_minus_best_flat"] = round(float(gap["gap_top3"]), 4)
    for j, r in (diag.get("router_recall") or {}).items():
        if r is not None:
            flat[f"router_recall_at_{j}"] = round(float(r), 4)
    if diag.get("within_superclass_top1") is not None:
        flat["within_superclass_top1"] = round(float(diag["within_superclass_top1"]), 4)
    return flat


def _wrong_where_flat_right(result: dict) -> list[dict[str, Any]]:
    """The SKUs the soft hierarchy gets wrong where the best flat model is right, with their image counts."""
    lost = _hierarchy_diagnostics(result).get("wrong_where_flat_right") or {}
    return [{"sku": sku, "images wrong (flat right)": n} for sku, n in lost.get("skus", [])]


def _log_headline(context: dg.AssetExecutionContext, result: dict, split_name: str) -> None:
    """Top-1 of every model in the run's log, and a warning when the hierarchy is behind the best flat model."""
    context.log.info(
        "top-1 on %s: %s" % (split_name, {m: s["top1"] for m, s in result["variants"]["all"]["models"].items()})
    )
    gap_all = (_hierarchy_diagnostics(result).get("gap") or {}).get("all")
    if gap_all is not None and gap_all["gap_top1"] < -GAP_TOLERANCE:
        context.log.warning(
            f"the hierarchy is {-gap_all['gap_top1']:.1%} below the best flat model ({gap_all['best_flat']})"
        )
