"""The work directory, in one place: every path skurec reads or writes below ``<workdir>``, and typed readers.

Nothing else in the code base names a work-directory path (``tests/store/test_layout.py`` greps for literals). Paths are
relative to the work directory (``Workspace`` resolves them, locally or on object storage)::

    <workdir>/
      skurec.duckdb                       DuckDB mirror of the tables (SQL for analysts)
      skurec.json                         settings of `skurec demo` / `skurec ui` (catalogue, encoder, Dagster home)
      catalogue/                          the demo's rendered catalogue (a user's catalogue lives where they keep it)
      drop/                               default drop location of labelled batches
      dagster_home/                       the Dagster instance of `skurec demo` / `skurec ui`
      tables/<name>.parquet               audited catalogue (images, classes, quarantine), batch inbox, ...
      batches/<batch_id>/                 ingested labelled batches (rows.parquet, images/, batch.json last)
      embeddings/<encoder>/part-*.parquet embedding cache (one set of parts per hash shard); current_encoder.json
      dagster_step_io/<run_id>/           the embedding steps' JSON hand-offs while a run is in flight
      artifacts/                          training outputs of the full rebuild (hash-verified folders)
      reports/                            audit summary, evaluation JSON/Markdown, plots
      candidates/<model_id>.json          candidate records; candidates/latest.json
      models/<model_id>/                  immutable model bundles; models/deployed.json; models/history/
      review_queue/                       low-confidence predictions waiting for a label
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
LOOP_CURSORS = "skurec_loop_cursors.json"  # inside the Dagster home: cursors of the in-process loop harness

# ------------------------------------------------------------------------------------------------ tables
TABLES_DIR = "tables"
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

# ------------------------------------------------------------------------------------------------ deployment
CANDIDATES_DIR = "candidates"
LATEST_CANDIDATE = f"{CANDIDATES_DIR}/latest.json"
MODELS_DIR = "models"
DEPLOYED_POINTER = f"{MODELS_DIR}/deployed.json"
MODEL_HISTORY_DIR = f"{MODELS_DIR}/history"
#: inside a model bundle: the exact (image_id, sku_id, split, added_by) table that built the model
BUNDLE_LINEAGE_DIR = "lineage"
BUNDLE_TRAINING_TABLE = f"{BUNDLE_LINEAGE_DIR}/training_images.parquet"

# ------------------------------------------------------------------------------------------------ serving
REVIEW_QUEUE_DIR = "review_queue"


def table_path(name: str) -> str:
    return f"{TABLES_DIR}/{name}.parquet"


def batch_dir(batch_id: str) -> str:
    return f"{BATCHES_DIR}/{batch_id}"


def candidate_record(model_id: str) -> str:
    return f"{CANDIDATES_DIR}/{model_id}.json"


def model_dir(model_id: str) -> str:
    return f"{MODELS_DIR}/{model_id}"


# ------------------------------------------------------------------------------------------------ typed readers
def _read_json_or(ws: Workspace, rel: str, default: Any) -> Any:
    return ws.read_json(rel) if ws.exists(rel) else default


def audit_summary(ws: Workspace) -> dict:
    """The last audit's summary (counts, catalogue snapshot, ...); ``{}`` before the first audit."""
    return _read_json_or(ws, AUDIT_SUMMARY, {})


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


def latest_candidate(ws: Workspace) -> dict | None:
    return _read_json_or(ws, LATEST_CANDIDATE, None)
