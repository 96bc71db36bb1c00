"""Ingest: the labelled catalogue (plus every ingested labelling batch) audited into DuckDB/Parquet tables."""


import dagster as dg
import pandas as pd

from skurec.audit import audit, catalogue_snapshot_hash
from skurec.catalogue import import_catalogue
from skurec.ingest import ingested_batch_rows
from skurec.plots import class_count_histogram_png
from skurec.storage import redact_uri
from skurec.schemas import ClassesSchema, ImagesSchema, QuarantineSchema
from skurec_assets.metadata import markdown_table, png_markdown, table_schema, throttled_progress
from skurec_resources import CatalogueResource, StorageResource

INGEST = "ingest"


@dg.asset(
    group_name=INGEST,
    # Every ingested labelling batch (a partition of labelled_batch) is part of the audited catalogue, and a new
    # batch refreshes it (and, eagerly, what is downstream of it) through declarative automation.
    deps=["labelled_batch"],
    automation_condition=dg.AutomationCondition.eager(),
    code_version="audit-v1",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    kinds={"duckdb", "parquet"},
    description=(
        "The labelled catalogue (folder or manifest) plus every ingested labelling batch, audited: content-hashed "
        "image ids, duplicates collapsed, label conflicts and unreadable rows quarantined with a reason, classes "
        "below min_samples kept but inactive, a stable 90/10 train/val split. Tables: images, quarantine, classes."
    ),
)
def audited_catalogue(
    context: dg.AssetExecutionContext, storage: StorageResource, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    report = import_catalogue(catalogue.location, root=catalogue.root, storage_options=storage.storage_options())
    batch_rows = ingested_batch_rows(ws)
    raw = pd.concat([report.rows, batch_rows], ignore_index=True) if len(batch_rows) else report.rows
    context.log.info(
        f"imported {len(report.rows)} catalogue rows from {redact_uri(catalogue.location)} and {len(batch_rows)} batch rows; auditing"
    )
    if report.unknown_columns:
        context.log.warning(f"manifest columns ignored (unknown): {list(report.unknown_columns)}")

    result = audit(
        raw,
        catalogue.audit_config(),
        storage_options=storage.storage_options(),
        progress=throttled_progress(context, "audited {done}/{total} images"),
    )
    ws.write_table("images", result.images)
    ws.write_table("quarantine", result.quarantine)
    ws.write_table("classes", result.classes)

    s = result.summary
    counts = result.classes["n_images"].astype(int).tolist()
    hist = class_count_histogram_png(counts, catalogue.min_samples)
    ws.write_bytes("reports/class_counts.png", hist)
    snapshot = catalogue_snapshot_hash(result.images)
    ws.write_json("reports/audit_summary.json", {**s, "catalogue_snapshot": snapshot, "location": redact_uri(catalogue.location)})
    quarantine_preview = result.quarantine.head(20)[["image_uri", "sku_id", "reason", "detail"]].to_dict("records")
    return dg.MaterializeResult(
        metadata={
            "n_input_rows": s["n_input_rows"],
            "n_accepted": s["n_accepted"],
            "n_quarantined": s["n_quarantined"],
            "n_classes": s["n_classes"],
            "n_active_classes": s["n_active_classes"],
            "n_filtered_classes": s["n_filtered_classes"],
            "n_active_images": s["n_active_images"],
            "split_counts": dg.MetadataValue.json(s["split_counts"]),
            "quarantine_reasons": dg.MetadataValue.json(s["quarantine_reasons"]),
            "filtered_classes": dg.MetadataValue.json(s["filtered_classes"][:200]),
            "unknown_manifest_columns": dg.MetadataValue.json(list(report.unknown_columns)),
            "class_count_histogram": dg.MetadataValue.md(png_markdown(hist, "images per class")),
            "quarantine_preview": dg.MetadataValue.md(markdown_table(quarantine_preview, ["image_uri", "sku_id", "reason", "detail"])),
            "catalogue_snapshot": snapshot,
            "dagster/column_schema": table_schema(ImagesSchema),
            "quarantine_schema": dg.MetadataValue.table_schema(table_schema(QuarantineSchema)),
            "classes_schema": dg.MetadataValue.table_schema(table_schema(ClassesSchema)),
            "dagster/row_count": s["n_accepted"],
            "duckdb_file": dg.MetadataValue.path(ws.duckdb_path),
            "images_table": dg.MetadataValue.path(ws.uri(ws.table_rel("images"))),
        },
        data_version=dg.DataVersion(snapshot),
    )


@dg.asset_check(asset=audited_catalogue, blocking=True, description="accepted + quarantined rows == input rows")
def rows_conserved(storage: StorageResource) -> dg.AssetCheckResult:
    ws = storage.workspace()
    images, quarantine = ws.read_table("images"), ws.read_table("quarantine")
    n_input = int(ws.read_json("reports/audit_summary.json")["n_input_rows"])
    n_accepted, n_quarantined = len(images), len(quarantine)
    return dg.AssetCheckResult(
        passed=bool(images["image_id"].is_unique and n_accepted + n_quarantined == n_input),
        metadata={"n_input_rows": n_input, "n_accepted": n_accepted, "n_quarantined": n_quarantined},
    )


@dg.asset_check(asset=audited_catalogue, blocking=True, description="every table satisfies its pandera schema")
def catalogue_schema(storage: StorageResource) -> dg.AssetCheckResult:
    ws = storage.workspace()
    errors = {}
    for name, schema in (("images", ImagesSchema), ("quarantine", QuarantineSchema), ("classes", ClassesSchema)):
        try:
            schema.validate(ws.read_table(name), lazy=True)
        except Exception as exc:  # pandera SchemaErrors: report, don't crash the check
            errors[name] = str(exc)[:2000]
    return dg.AssetCheckResult(passed=not errors, metadata={"errors": dg.MetadataValue.json(errors)})
