"""Rows of labelling batches that were ingested into the work directory (see the labelling-loop assets).

An ingested batch is stored as ``<workdir>/batches/<batch_id>/``:

* ``images/<image_sha256><ext>``: a copy of every image, so the work directory is self-contained (the drop folder
  may be cleaned up afterwards and lineage stays answerable);
* ``rows.parquet``: raw import rows (columns ``skurec.catalogue.importer.RAW_COLUMNS``) pointing at those copies, with
  ``batch_id`` set to the batch name;
* ``batch.json``: the ingestion record (content hash, source URI, counts, SKUs, time), written LAST: a batch
  without it is not ingested (a crash half-way is redone by the next run, never half-counted).

The audited catalogue is always the base catalogue plus every ingested batch (:func:`ingested_batch_rows`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
from typing import TYPE_CHECKING

import pandas as pd

from skurec.catalogue.importer import RAW_COLUMNS, normalise_rows
from skurec.layout import BATCH_IMAGES, BATCHES_DIR
from skurec.layout import BATCH_RECORD as RECORD
from skurec.layout import BATCH_ROWS as ROWS
from skurec.store.workspace import Workspace

if TYPE_CHECKING:
    from skurec.catalogue.batches import BatchInspection


def batch_rows_rel(batch_id: str) -> str:
    return f"{BATCHES_DIR}/{batch_id}/{ROWS}"


def batch_record_rel(batch_id: str) -> str:
    return f"{BATCHES_DIR}/{batch_id}/{RECORD}"


def ingested_batch_ids(ws: Workspace) -> list[str]:
    """Names of the batches whose ingestion completed (rows and record both written)."""
    with_rows = {p.split("/")[1] for p in ws.glob(f"{BATCHES_DIR}/*/{ROWS}")}
    with_record = {p.split("/")[1] for p in ws.glob(f"{BATCHES_DIR}/*/{RECORD}")}
    return sorted(with_rows & with_record)


def ingested_batch_rows(ws: Workspace) -> pd.DataFrame:
    frames = [_rebased(ws, b, ws.read_parquet(batch_rows_rel(b)).to_pandas()) for b in ingested_batch_ids(ws)]
    if not frames:
        return normalise_rows(pd.DataFrame(columns=RAW_COLUMNS))
    return normalise_rows(pd.concat(frames, ignore_index=True)[RAW_COLUMNS])


def _rebased(ws: Workspace, batch_id: str, rows: pd.DataFrame) -> pd.DataFrame:
    """Rows whose images were copied into this work directory point at *this* work directory's copy, also when the
    work directory was copied or moved since (the rows record the location at ingestion time)."""
    marker = f"/{BATCHES_DIR}/{batch_id}/{BATCH_IMAGES}/"

    def here(uri):
        if isinstance(uri, str) and marker in uri:
            return ws.uri(f"{BATCHES_DIR}/{batch_id}/{BATCH_IMAGES}/{uri.rsplit(marker, 1)[1]}")
        return uri

    return rows.assign(image_uri=rows["image_uri"].map(here))


def ingested_batches(ws: Workspace) -> list[dict]:
    """The ingestion record of every ingested batch, sorted by name."""
    return [ws.read_json(batch_record_rel(b)) for b in ingested_batch_ids(ws)]


def ingested_hashes(ws: Workspace) -> dict[str, str]:
    """Content hash -> batch name of every ingested batch (the idempotence key of the labelling loop)."""
    return {r["content_hash"]: r["batch_id"] for r in ingested_batches(ws)}


def _ext(uri: str) -> str:
    ext = posixpath.splitext(uri)[1].lower()
    return ext if ext and len(ext) <= 6 and ext[1:].isalnum() else ""


def ingest_batch(ws: Workspace, inspection: BatchInspection) -> dict:
    """Copy a validated batch into the work directory and record it; returns the ingestion record.

    Idempotent: ingesting the same content under the same name again rewrites identical files. Raises
    ``ValueError`` for an invalid inspection and when another batch with the same content hash, or another content
    under the same name, is already ingested (a batch is never ingested twice).
    """
    if not inspection.ok or inspection.rows is None or inspection.content_hash is None:
        raise ValueError(f"batch {inspection.name!r} is not valid and cannot be ingested: {inspection.reason}")
    name = inspection.name
    known = ingested_hashes(ws)
    other = known.get(inspection.content_hash)
    if other is not None and other != name:
        raise ValueError(f"batch {name!r} has the same content as the already ingested batch {other!r}")
    if ws.exists(batch_record_rel(name)):
        existing = ws.read_json(batch_record_rel(name))
        if existing["content_hash"] != inspection.content_hash:
            raise ValueError(f"a different batch named {name!r} was already ingested; batch names are never reused")
    rows = inspection.rows.copy()
    copied: dict[str, str] = {}
    for uri, data in inspection.image_bytes.items():
        rel = f"{BATCHES_DIR}/{name}/{BATCH_IMAGES}/{hashlib.sha256(data).hexdigest()}{_ext(uri)}"
        if not ws.exists(rel):
            ws.write_bytes(rel, data)
        copied[uri] = ws.uri(rel)
    rows["image_uri"] = [copied.get(u, u) for u in rows["image_uri"]]
    ws.write_parquet(batch_rows_rel(name), normalise_rows(rows[RAW_COLUMNS]))
    record = {
        "batch_id": name,
        "content_hash": inspection.content_hash,
        "source_uri": inspection.uri,
        "manifest_uri": inspection.manifest_uri,
        "n_rows": int(len(rows)),
        "n_images": int(inspection.n_images),
        "skus": list(inspection.skus),
        "ingested_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    ws.write_json(batch_record_rel(name), record)
    return record
