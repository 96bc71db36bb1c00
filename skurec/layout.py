"""The work directory, in one place: every path skurec reads or writes below ``<workdir>``, and typed readers.

Nothing else in the code base names a work-directory path (``tests/store/test_layout.py`` greps for literals). Paths are
relative to the work directory (``Workspace`` resolves them, locally or on object storage)::

    <workdir>/
      skurec.duckdb                       DuckDB mirror of the tables (SQL for analysts)
      .skurec.lock, .skurec.lock.json     one writer at a time (`skurec demo` / `run`); the holder's pid and host
      skurec.json                         settings of `skurec demo` / `skurec ui` (catalogue, encoder, Dagster home)
      catalogue/                          the demo's rendered catalogue (a user's catalogue lives where they keep it)
      drop/                               default drop location of labelled batches
      dagster_home/                       the Dagster instance of `skurec demo` / `skurec ui`
      tables/<name>.parquet               tables written alone (batch inbox, ...)
      tables/audit.json, tables/audit/    the audit's tables (images, quarantine, classes, audit_probes) and summary:
                                          one snapshot folder per audit, switched by the one pointer file
      batches/<batch_id>/                 ingested labelled batches (rows.parquet, images/, batch.json last)
      embeddings/<encoder>/part-*.parquet embedding cache (one set of parts per hash shard); current_encoder.json
      dagster_step_io/<run_id>/           the embedding steps' JSON hand-offs while a run is in flight
      asset_values/<asset>.json           an asset value handed on through the graph (the candidate record)
      artifacts/                          training outputs of the full rebuild (hash-verified folders)
      reports/                            audit summary, evaluation JSON/Markdown, plots
      candidates/<model_id>.json          candidate records (the latest is candidate_model's value in asset_values/)
      models/<model_id>/                  immutable model bundles; models/deployed.json; models/history/;
                                          models/card_digests/ (each card's SHA-256)
      review_queue/                       low-confidence predictions waiting for a label
      edge/<model_id>/                    the deployed model's edge bundle (ONNX + manifest, skurec.edge runs it)
      edge/_encoders/<key>/               the fp32 encoder ONNX of one encoder identity, reused by later bundles
"""

from __future__ import annotations

from typing import Any, Protocol


class Workspace(Protocol):
    """What the readers below need of :class:`skurec.store.workspace.Workspace` (a protocol: layout imports nothing)."""

    def exists(self, rel: str) -> bool: ...

    def read_json(self, *parts: str) -> Any: ...


# ------------------------------------------------------------------------------------------------ top level
DUCKDB_FILE = "skurec.duckdb"
SETTINGS_FILE = "skurec.json"
DEMO_CATALOGUE_DIR = "catalogue"
DROP_DIR = "drop"
DAGSTER_HOME_DIR = "dagster_home"
#: one writer per work directory: the lock file (held with flock, released by the OS when its holder dies) and the
#: holder's pid / host / command, read by the second writer to say who holds it
WRITER_LOCK = ".skurec.lock"
WRITER_LOCK_HOLDER = ".skurec.lock.json"
LOOP_CURSORS = "skurec_loop_cursors.json"  # inside the Dagster home: cursors of the in-process loop harness

# ------------------------------------------------------------------------------------------------ tables
TABLES_DIR = "tables"
#: tables that change together: written as one snapshot (``tables/<group>/<snapshot>/``) and switched by one pointer
#: (``tables/<group>.json``), so readers see the whole old or the whole new group, never a mix
TABLE_GROUPS = {"audit": ("images", "quarantine", "classes", "audit_probes")}
#: the audit summary is part of the audit snapshot (``reports/audit_summary.json`` is a copy for people)
AUDIT_SUMMARY_IN_SNAPSHOT = "audit_summary.json"
EMBEDDINGS_VIEW = "embeddings"  # DuckDB view over the current encoder's cache parts

# ------------------------------------------------------------------------------------------------ labelling batches
BATCHES_DIR = "batches"
BATCH_RECORD = "batch.json"
BATCH_ROWS = "rows.parquet"
BATCH_IMAGES = "images"

# ------------------------------------------------------------------------------------------------ embeddings
EMBEDDINGS_DIR = "embeddings"
CURRENT_ENCODER = f"{EMBEDDINGS_DIR}/current_encoder.json"
#: small JSON hand-offs between the embedding graph's steps, per run (``<run_id>/<step>.json``), removed on success
STEP_IO_DIR = "dagster_step_io"
#: the value of an asset handed to its checks and downstream assets through the graph (``<asset key>.json``)
ASSET_VALUES_DIR = "asset_values"

# ------------------------------------------------------------------------------------------------ training artifacts
ARTIFACTS_DIR = "artifacts"
PROTOTYPES_DIR = f"{ARTIFACTS_DIR}/prototypes"
SUPERCLASSES_JSON = f"{ARTIFACTS_DIR}/superclasses.json"
#: the shrinkage-LDA statistics of the fit rows (safetensors + JSON), computed once by the superclasses step and
#: reused by the router (coarse) and specialist (fine) refits; superclasses.json records their digest
LDA_STATISTICS_DIR = f"{ARTIFACTS_DIR}/lda_statistics"
SIMILAR_JSON = f"{ARTIFACTS_DIR}/similar_groups.json"
COARSE_DIR = f"{ARTIFACTS_DIR}/coarse"
HIERARCHICAL_DIR = f"{ARTIFACTS_DIR}/hierarchical"
FLAT_LINEAR_DIR = f"{ARTIFACTS_DIR}/flat_linear"
GLOBAL_SCORER_DIR = f"{ARTIFACTS_DIR}/global_scorer"  # the hierarchy's global SKU scorer (rows, chosen on val)
FLAT_PROTOTYPE_DIR = f"{ARTIFACTS_DIR}/flat_prototype"
CASE_STUDY_DIR = f"{ARTIFACTS_DIR}/case_study"  # the published recipe's hierarchy (the report's `case_study` row)
HIERARCHY_FIT_DIR = f"{ARTIFACTS_DIR}/hierarchy_fit"  # superclasses' one fit: router + specialists handed on
TRAINING_MANIFEST = f"{ARTIFACTS_DIR}/training_manifest.json"
TRAINING_SET = f"{ARTIFACTS_DIR}/training_set.parquet"

# ------------------------------------------------------------------------------------------------ reports
REPORTS_DIR = "reports"
AUDIT_SUMMARY = f"{REPORTS_DIR}/audit_summary.json"
CLASS_COUNTS_PNG = f"{REPORTS_DIR}/class_counts.png"
EMBEDDING_FAILURES = f"{REPORTS_DIR}/embedding_failures.json"
SUPERCLASSES_PNG = f"{REPORTS_DIR}/superclasses.png"
EVALUATION_JSON = f"{REPORTS_DIR}/evaluation.json"
EVALUATION_MD = f"{REPORTS_DIR}/evaluation.md"
CONFUSION_PNG = f"{REPORTS_DIR}/confusion_similar.png"
ERROR_GALLERY_PNG = f"{REPORTS_DIR}/error_gallery.png"

# ------------------------------------------------------------------------------------------------ deployment
CANDIDATES_DIR = "candidates"
MODELS_DIR = "models"
DEPLOYED_POINTER = f"{MODELS_DIR}/deployed.json"
MODEL_HISTORY_DIR = f"{MODELS_DIR}/history"
#: the SHA-256 of each published model card, recorded outside its bundle (``<model_id>.json``)
MODEL_CARD_DIGESTS_DIR = f"{MODELS_DIR}/card_digests"
#: inside a model bundle: the exact (image_id, sku_id, split, added_by) table that built the model
BUNDLE_LINEAGE_DIR = "lineage"
BUNDLE_TRAINING_TABLE = f"{BUNDLE_LINEAGE_DIR}/training_images.parquet"
BUNDLE_EXEMPLARS_DIR = "exemplars"  # nearest-training-image explanations (skurec.deployment.explain)
BUNDLE_EXEMPLARS_VECTORS = f"{BUNDLE_EXEMPLARS_DIR}/vectors.safetensors"
BUNDLE_EXEMPLARS_INDEX = f"{BUNDLE_EXEMPLARS_DIR}/index.json"

# ------------------------------------------------------------------------------------------------ serving
REVIEW_QUEUE_DIR = "review_queue"
EDGE_DIR = "edge"


def table_path(name: str) -> str:
    return f"{TABLES_DIR}/{name}.parquet"


def table_group_of(name: str) -> str | None:
    return next((g for g, names in TABLE_GROUPS.items() if name in names), None)


def table_group_pointer(group: str) -> str:
    return f"{TABLES_DIR}/{group}.json"


def table_group_dir(group: str) -> str:
    return f"{TABLES_DIR}/{group}"


def batch_dir(batch_id: str) -> str:
    return f"{BATCHES_DIR}/{batch_id}"


def candidate_record(model_id: str) -> str:
    return f"{CANDIDATES_DIR}/{model_id}.json"


def model_dir(model_id: str) -> str:
    return f"{MODELS_DIR}/{model_id}"


def card_digest_record(model_id: str) -> str:
    return f"{MODEL_CARD_DIGESTS_DIR}/{model_id}.json"


def edge_bundle_dir(model_id: str) -> str:
    return f"{EDGE_DIR}/{model_id}"


#: the fp32 encoder export of one encoder identity (encoder id, opset, exporter): the encoder does not change when a
#: batch extends the model, so a new bundle copies it (``encoder.onnx`` + ``export.json`` with its SHA-256)
EDGE_ENCODER_EXPORTS_DIR = f"{EDGE_DIR}/_encoders"


def edge_encoder_export_dir(key: str) -> str:
    return f"{EDGE_ENCODER_EXPORTS_DIR}/{key}"


# ------------------------------------------------------------------------------------------------ typed readers
def _read_json_or(ws: Workspace, rel: str, default: Any) -> Any:
    return ws.read_json(rel) if ws.exists(rel) else default


def audit_summary(ws: Workspace) -> dict:
    """The last audit's summary (counts, catalogue snapshot, ...); ``{}`` before the first audit. Read from the
    audit snapshot the tables pointer names (so it always describes the tables readers see)."""
    pointer = _read_json_or(ws, table_group_pointer("audit"), {})
    rel = (pointer.get("files") or {}).get(AUDIT_SUMMARY_IN_SNAPSHOT)
    return _read_json_or(ws, rel, {}) if rel else _read_json_or(ws, AUDIT_SUMMARY, {})


def catalogue_snapshot(ws: Workspace) -> str:
    """Hash of the audited catalogue the work directory holds (``""`` before the first audit)."""
    return audit_summary(ws).get("catalogue_snapshot", "")


def evaluation(ws: Workspace) -> dict | None:
    return _read_json_or(ws, EVALUATION_JSON, None)


def current_encoder(ws: Workspace) -> dict | None:
    """Identity of the encoder whose embeddings the training assets read (written by the embedding step)."""
    return _read_json_or(ws, CURRENT_ENCODER, None)


def training_manifest(ws: Workspace) -> dict | None:
    return _read_json_or(ws, TRAINING_MANIFEST, None)


def superclasses_doc(ws: Workspace) -> dict:
    return _read_json_or(ws, SUPERCLASSES_JSON, {})


def superclass_map(ws: Workspace) -> tuple[dict[str, int], dict]:
    """``({sku_id: superclass}, superclasses.json)`` of the last superclass derivation (raises when missing)."""
    doc = ws.read_json(SUPERCLASSES_JSON)
    return {c: int(s) for c, s in zip(doc["classes"], doc["assignment"])}, doc
