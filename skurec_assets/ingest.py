"""Ingest: labelled batches from the drop location (one partition per batch), and the labelled catalogue plus every
ingested batch audited into DuckDB/Parquet tables (``audited_catalogue``)."""

import errno
import json
from collections.abc import Sequence

import dagster as dg
import pandas as pd

from skurec import layout
from skurec.catalogue.audit import AuditResult, audit, catalogue_snapshot_hash
from skurec.catalogue.batches import BatchError, find_batch, inspect_batch
from skurec.catalogue.importer import CatalogueError, ImportReport, import_catalogue
from skurec.catalogue.ingest import batch_record_rel, ingest_batch, ingested_batch_rows, ingested_hashes
from skurec.catalogue.schemas import ClassesSchema, ImagesSchema, QuarantineSchema
from skurec.plots import class_count_histogram_png
from skurec.store.workspace import redact_uri
from skurec_assets.metadata import markdown_table, png_markdown, table_schema, throttled_progress
from skurec_resources import CatalogueResource, LabellingLoopResource, StorageResource

INGEST = "ingest"
BATCH_PARTITIONS = dg.DynamicPartitionsDefinition(name="labelled_batches")
AUDIT_PROBES_TABLE = "audit_probes"  # per-location file stamps and probe results of the last audit


@dg.asset(
    partitions_def=BATCH_PARTITIONS,
    group_name=INGEST,
    code_version="batch-v1",
    kinds={"parquet"},
    description=(
        "One labelled batch from the drop location (a partition per batch folder), validated and copied into the work "
        "directory (batches/<name>/): images, raw rows and an ingestion record keyed by the batch's content hash. "
        "audited_catalogue unions every ingested batch with the base catalogue."
    ),
)
def labelled_batch(
    context: dg.AssetExecutionContext, storage: StorageResource, loop: LabellingLoopResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    name = context.partition_key
    if ws.exists(batch_record_rel(name)):
        record = ws.read_json(batch_record_rel(name))
        context.log.info(f"batch {name} is already ingested (content {record['content_hash'][:12]}); nothing to do")
        return _batch_result("ingested", record, note="already ingested earlier")
    try:
        batch = find_batch(loop.drop_location, name, storage.storage_options())
    except BatchError as exc:
        raise dg.Failure(description=f"{exc}; was the folder moved after it was registered?") from exc
    insp = inspect_batch(batch, storage.storage_options())
    if not insp.ok:
        # Recorded, not raised: a failed partition would hold back every later batch (automation waits for it).
        context.log.error(f"batch {name} rejected: {insp.reason}")
        return dg.MaterializeResult(
            metadata={"status": "rejected", "reason": insp.reason or "", "batch_uri": dg.MetadataValue.path(batch.uri)},
            data_version=dg.DataVersion(f"rejected:{name}"),
        )
    other = ingested_hashes(ws).get(insp.content_hash or "")
    if other is not None and other != name:
        context.log.warning(f"batch {name} has the same content as {other}: skipped")
        return dg.MaterializeResult(
            metadata={"status": "duplicate", "duplicate_of": other, "content_hash": insp.content_hash or ""},
            data_version=dg.DataVersion(f"duplicate:{insp.content_hash}"),
        )
    known = set()
    if ws.has_table("classes"):
        known = set(ws.read_table("classes", columns=["sku_id"])["sku_id"])
    record = ingest_batch(ws, insp)
    new_skus = sorted(set(insp.skus) - known)
    context.log.info(f"ingested batch {name}: {insp.n_images} images, {len(insp.skus)} SKUs ({len(new_skus)} new)")
    return _batch_result("ingested", record, new_skus=new_skus)


def _batch_result(status: str, record: dict, new_skus: Sequence[str] = (), note: str = "") -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "status": status,
            "content_hash": record["content_hash"],
            "n_images": record["n_images"],
            "n_rows": record["n_rows"],
            "skus": dg.MetadataValue.json(record["skus"][:500]),
            "new_skus": dg.MetadataValue.json(list(new_skus)),
            "source_uri": dg.MetadataValue.path(record["source_uri"]),
            "ingested_at": record["ingested_at"],
            "note": note,
        },
        data_version=dg.DataVersion(record["content_hash"]),
    )


@dg.asset(
    group_name=INGEST,
    # Every ingested labelling batch (a partition of labelled_batch) is part of the audited catalogue, and a new
    # batch refreshes it (and, eagerly, what is downstream of it) through declarative automation.
    deps=[labelled_batch],
    automation_condition=dg.AutomationCondition.eager(),
    code_version="audit-v3",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    kinds={"duckdb", "parquet"},
    description=(
        "The labelled catalogue (folder or manifest) plus every ingested labelling batch, audited: content-hashed "
        "image ids, duplicates collapsed, label conflicts and unreadable rows quarantined with a reason, classes "
        "below min_shots kept but inactive, head (>= min_samples) and tail (>= min_shots) tiers both trained, a "
        "stable 90/10 train/val split, and a stable-hash test share carved from the head when the catalogue has no "
        "test rows (test_split says given / carved / none). Tables: images, quarantine, classes."
    ),
)
def audited_catalogue(
    context: dg.AssetExecutionContext, storage: StorageResource, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    report, raw = _import_rows(context, ws, storage, catalogue)
    result = _audit_rows(context, ws, storage, catalogue, raw)
    snapshot = catalogue_snapshot_hash(result.images)
    summary = {**result.summary, "catalogue_snapshot": snapshot, "location": redact_uri(catalogue.location)}
    hist = _write_audit(ws, result, summary, catalogue.min_samples)
    return dg.MaterializeResult(
        metadata=_audit_metadata(ws, result, report, hist, snapshot), data_version=dg.DataVersion(snapshot)
    )


def _import_rows(
    context: dg.AssetExecutionContext, ws, storage: StorageResource, catalogue: CatalogueResource
) -> tuple[ImportReport, pd.DataFrame]:
    """The catalogue's rows plus every ingested batch's rows."""
    try:
        report = import_catalogue(
            catalogue.location,
            root=catalogue.root,
            storage_options=storage.storage_options(),
            allow=catalogue.allowed_roots(),
        )
    except CatalogueError as exc:  # a configuration error: retrying cannot fix it (its message is redacted)
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    batch_rows = ingested_batch_rows(ws)
    raw = pd.concat([report.rows, batch_rows], ignore_index=True) if len(batch_rows) else report.rows
    context.log.info(
        f"imported {len(report.rows)} catalogue rows from {redact_uri(catalogue.location)} and {len(batch_rows)} batch rows; auditing"
    )
    if report.unknown_columns:
        context.log.warning(f"manifest columns ignored (unknown): {list(report.unknown_columns)}")
    return report, raw


def _audit_rows(
    context: dg.AssetExecutionContext, ws, storage: StorageResource, catalogue: CatalogueResource, raw: pd.DataFrame
) -> AuditResult:
    """The audit, incremental on the previous one: an unchanged file is not read again (its recorded probe), and an
    image already audited keeps its split (README: "an image keeps its split when new images arrive")."""
    previous = ws.read_table(AUDIT_PROBES_TABLE) if ws.has_table(AUDIT_PROBES_TABLE) else None
    return audit(
        raw,
        catalogue.audit_config(),
        storage_options=storage.storage_options(),
        progress=throttled_progress(context, "audited {done}/{total} images"),
        previous=previous,
        keep_splits=ws.read_table("images", columns=["image_id", "split", "split_pinned"])
        if ws.has_table("images")
        else None,
    )


def _write_audit(ws, result: AuditResult, summary: dict, min_samples: int) -> bytes:
    """All of the audit's tables and its summary change together: a new snapshot, then one pointer switch; then the
    class-count histogram and the summary's copy for people. Returns the histogram (PNG)."""
    try:
        ws.write_table_group(
            "audit",
            {
                "images": result.images,
                "quarantine": result.quarantine,
                "classes": result.classes,
                AUDIT_PROBES_TABLE: result.probes,
            },
            files={
                layout.AUDIT_SUMMARY_IN_SNAPSHOT: json.dumps(summary, indent=2, sort_keys=True, default=str).encode()
            },
        )
    except OSError as exc:  # a full disk: the previous audit stays whole; retrying in 10 s would not free space
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    hist = class_count_histogram_png(result.classes["n_images"].astype(int).tolist(), min_samples)
    ws.write_bytes(layout.CLASS_COUNTS_PNG, hist)
    ws.write_json(layout.AUDIT_SUMMARY, summary)  # the copy for people; readers use the snapshot's
    return hist


def _audit_metadata(ws, result: AuditResult, report: ImportReport, hist: bytes, snapshot: str) -> dict:
    s = result.summary
    quarantine_preview = result.quarantine.head(20)[["image_uri", "sku_id", "reason", "detail"]].to_dict("records")
    return {
        "n_input_rows": s["n_input_rows"],
        "n_accepted": s["n_accepted"],
        "n_quarantined": s["n_quarantined"],
        "n_classes": s["n_classes"],
        "n_active_classes": s["n_active_classes"],
        "n_filtered_classes": s["n_filtered_classes"],
        "n_active_images": s["n_active_images"],
        # two tiers, one model: head (>= min_samples labelled images) and tail (>= min_shots), both trained
        "n_head_classes": s["tiers"]["head"]["n_classes"],
        "n_tail_classes": s["tiers"]["tail"]["n_classes"],
        "n_untrained_classes": s["tiers"]["untrained"]["n_classes"],
        "tiers": dg.MetadataValue.json({**s["tiers"], "min_samples": s["min_samples"], "min_shots": s["min_shots"]}),
        "tail_validation": dg.MetadataValue.json(s["tail_validation"]),
        "split_counts": dg.MetadataValue.json(s["split_counts"]),
        # the test split: given by the manifest, carved by the stable hash from the head classes, or none
        "test_split": s["test_split"],
        "test_carve": dg.MetadataValue.json(s["test_carve"]),
        "quarantine_reasons": dg.MetadataValue.json(s["quarantine_reasons"]),
        "filtered_classes": dg.MetadataValue.json(s["filtered_classes"][:200]),
        "active_classes_without_val": dg.MetadataValue.json(list(s.get("active_classes_without_val", []))[:200]),
        "audit_io": dg.MetadataValue.json(result.io),
        "unknown_manifest_columns": dg.MetadataValue.json(list(report.unknown_columns)),
        "class_count_histogram": dg.MetadataValue.md(png_markdown(hist, "images per class")),
        "quarantine_preview": dg.MetadataValue.md(
            markdown_table(quarantine_preview, ["image_uri", "sku_id", "reason", "detail"])
        ),
        "catalogue_snapshot": snapshot,
        "dagster/column_schema": table_schema(ImagesSchema),
        "quarantine_schema": dg.MetadataValue.table_schema(table_schema(QuarantineSchema)),
        "classes_schema": dg.MetadataValue.table_schema(table_schema(ClassesSchema)),
        "dagster/row_count": s["n_accepted"],
        "duckdb_file": dg.MetadataValue.path(ws.duckdb_path),
        "images_table": dg.MetadataValue.path(ws.uri(ws.table_rel("images"))),
    }


@dg.asset_check(asset=audited_catalogue, blocking=True, description="accepted + quarantined rows == input rows")
def rows_conserved(storage: StorageResource) -> dg.AssetCheckResult:
    ws = storage.workspace()
    images, quarantine = ws.read_table("images"), ws.read_table("quarantine")
    n_input = int(layout.audit_summary(ws)["n_input_rows"])
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
