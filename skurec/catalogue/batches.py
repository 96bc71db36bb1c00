"""Labelled batches arriving in a drop location: discovery, content hashing, validation and triage.

A *drop location* is a local folder or an fsspec prefix (``s3://bucket/drop``). Every batch is one sub-folder::

    <drop>/<batch_name>/manifest.csv      (or manifest.parquet; same format as a catalogue manifest)
    <drop>/<batch_name>/<images...>        (paths in the manifest are relative to the batch folder)

Conventions (documented for whoever uploads batches):

* A batch is **complete** once its manifest exists: upload the images first and the manifest last. A folder without
  a manifest is reported as ``incomplete`` and looked at again on the next scan.
* Folders whose name starts with ``.`` or ``_`` are ignored (staging areas, ``_tmp`` uploads).
* The batch name is the Dagster partition key, so it must match :data:`BATCH_NAME` (letters, digits, ``._-``).

The **content hash** of a batch is a SHA-256 over its manifest bytes and the bytes of every image it lists, in
manifest order: the same batch copied under another name has the same hash and is recognised as a duplicate, so a
batch is never ingested twice. A **malformed** batch (unreadable manifest, missing columns, rows that cannot be
used, images missing) is rejected with a human-readable reason; it never stops the other batches.

Nothing here imports Dagster: the sensor in ``skurec_assets/sensors.py`` calls :func:`triage_drop_location`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import pandas as pd

from skurec.catalogue.importer import CatalogueError, import_manifest
from skurec.store.workspace import filesystem_for, is_remote, read_uri_bytes, redact_text

log = logging.getLogger(__name__)

MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HASH_PREFIX = b"skurec-batch/1\n"
MAX_LISTED_PROBLEMS = 5

# Triage statuses (the ``status`` column of the batch inbox table).
NEW = "new"  # complete, valid, never seen: register it (a dynamic partition) and ingest it
REGISTERED = "registered"  # registered earlier, waiting for / being ingested
INGESTED = "ingested"  # its content is in the work directory
DUPLICATE = "duplicate"  # same content hash as another batch: skipped
REJECTED = "rejected"  # malformed: skipped with a reason
INCOMPLETE = "incomplete"  # no manifest yet: looked at again on the next scan


class BatchError(ValueError):
    """A drop location or batch folder that cannot be used at all (does not exist, not a folder). Its message never
    carries credentials: URIs in it are redacted at the source, so the UI, the sensor and the logs show it safely."""

    def __init__(self, message: str):
        super().__init__(redact_text(message))


@dataclass(frozen=True)
class DropBatch:
    """One sub-folder of the drop location. ``manifest_uri`` is None while the batch is incomplete."""

    name: str
    uri: str
    manifest_uri: str | None
    manifest_problem: str | None = None  # e.g. two manifests

    @property
    def complete(self) -> bool:
        return self.manifest_uri is not None or self.manifest_problem is not None


@dataclass
class BatchInspection:
    """Result of :func:`inspect_batch`: validity, reason, content hash and the raw import rows of the batch."""

    name: str
    uri: str
    manifest_uri: str | None
    ok: bool
    reason: str | None = None
    content_hash: str | None = None
    rows: pd.DataFrame | None = None  # skurec.catalogue.importer.RAW_COLUMNS, batch_id = name
    image_bytes: dict[str, bytes] = field(default_factory=dict, repr=False)  # image_uri -> bytes
    skus: list[str] = field(default_factory=list)
    n_images: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uri": self.uri,
            "ok": self.ok,
            "reason": self.reason,
            "content_hash": self.content_hash,
            "n_images": self.n_images,
            "skus": list(self.skus),
        }


@dataclass
class BatchDecision:
    """What a scan decided for one drop folder (one row of the inbox table)."""

    name: str
    uri: str
    status: str
    fingerprint: str | None = None
    content_hash: str | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    n_images: int = 0
    skus: list[str] = field(default_factory=list)
    updated_at: str = ""

    def to_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> BatchDecision:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _uri(fs: fsspec.AbstractFileSystem, path: str, remote: bool) -> str:
    return fs.unstrip_protocol(path) if remote else path


# --------------------------------------------------------------------------------------------------- discovery
def discover_batches(drop_location: str, storage_options: dict | None = None) -> list[DropBatch]:
    """Every batch folder directly under ``drop_location`` (sorted by name), complete or not.

    A missing drop location is created when local (so the sensor can watch it from day one) and is an empty list
    when remote. A path that exists but is a file raises :class:`BatchError`.
    """
    fs, root = filesystem_for(drop_location, storage_options)
    remote = is_remote(drop_location)
    root = root.rstrip("/")
    if not fs.exists(root):
        if not remote:
            fs.makedirs(root, exist_ok=True)
        return []
    if not fs.isdir(root):
        raise BatchError(f"drop location {drop_location!r} is a file, not a folder")
    out: list[DropBatch] = []
    for entry in fs.ls(root, detail=True):
        path = entry["name"].rstrip("/")
        name = posixpath.basename(path)
        if entry.get("type") != "directory" or name.startswith((".", "_")):
            continue
        manifests = [m for m in MANIFEST_NAMES if fs.exists(posixpath.join(path, m))]
        problem = None
        manifest_uri = None
        if len(manifests) > 1:
            problem = f"the batch folder holds {len(manifests)} manifests {manifests}; keep exactly one"
        elif manifests:
            manifest_uri = _uri(fs, posixpath.join(path, manifests[0]), remote)
        out.append(
            DropBatch(name=name, uri=_uri(fs, path, remote), manifest_uri=manifest_uri, manifest_problem=problem)
        )
    return sorted(out, key=lambda b: b.name)


def find_batch(drop_location: str, name: str, storage_options: dict | None = None) -> DropBatch:
    """The batch folder ``name`` of the drop location; :class:`BatchError` when it is not there."""
    for batch in discover_batches(drop_location, storage_options):
        if batch.name == name:
            return batch
    raise BatchError(f"no batch folder {name!r} in the drop location {drop_location!r}")


def folder_fingerprint(uri: str, storage_options: dict | None = None) -> str:
    """Cheap change detector for a folder: SHA-256 over the relative path and size of every file (no reads)."""
    fs, root = filesystem_for(uri, storage_options)
    root = root.rstrip("/")
    h = hashlib.sha256()
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else path
        h.update(f"{rel}\0{info.get('size')}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- inspection
def _problem_list(items: list[str], total: int) -> str:
    shown = "; ".join(items[:MAX_LISTED_PROBLEMS])
    return shown + (f"; ... ({total - MAX_LISTED_PROBLEMS} more)" if total > MAX_LISTED_PROBLEMS else "")


def inspect_batch(
    batch: DropBatch, storage_options: dict | None = None, max_image_bytes: int = 50 * 1024 * 1024
) -> BatchInspection:
    """Validate a complete batch and compute its content hash.

    Rejected (``ok=False`` with ``reason``): invalid folder name, several manifests, an unreadable manifest, a
    manifest without the required columns or without rows, rows with an import error (empty sku_id, a path leaving
    the batch folder, invalid split...), images that are missing or unreadable. Rows whose bytes are not a usable
    image are *not* a batch error: the audit quarantines them one by one, like catalogue images.
    """
    base = BatchInspection(name=batch.name, uri=batch.uri, manifest_uri=batch.manifest_uri, ok=False)
    if not BATCH_NAME.match(batch.name):
        base.reason = (
            f"invalid batch folder name {batch.name!r}: use letters, digits, '.', '_' or '-' (at most 100 characters, "
            "starting with a letter or digit)"
        )
        return base
    if batch.manifest_problem:
        base.reason = batch.manifest_problem
        return base
    if batch.manifest_uri is None:
        base.reason = f"no manifest ({' or '.join(MANIFEST_NAMES)}) yet: the batch is incomplete"
        return base
    try:
        report = import_manifest(batch.manifest_uri, root=batch.uri, storage_options=storage_options)
        manifest_bytes = read_uri_bytes(batch.manifest_uri, storage_options=storage_options)
    except (CatalogueError, OSError, ValueError) as exc:
        base.reason = f"manifest cannot be read: {type(exc).__name__}: {exc}"
        return base
    rows = report.rows
    if rows.empty:
        base.reason = "the manifest has no rows"
        return base
    errors = rows[rows["import_error"].notna()]
    if len(errors):
        first = errors.iloc[0]
        if first["import_error"] == "missing_column":
            base.reason = f"manifest is malformed: {first['import_detail']}"
        else:
            items = [f"row {r.row_number}: {r.import_error} ({r.import_detail})" for r in errors.itertuples()]
            base.reason = f"{len(errors)} manifest row(s) cannot be used: " + _problem_list(items, len(items))
        return base
    h = hashlib.sha256(HASH_PREFIX)
    h.update(manifest_bytes)
    images: dict[str, bytes] = {}
    missing: list[str] = []
    for r in rows.itertuples():
        uri = r.image_uri
        if uri not in images:
            try:
                images[uri] = read_uri_bytes(uri, max_image_bytes, storage_options)
            except FileNotFoundError:
                missing.append(str(r.image_uri_raw))
                continue
            except Exception as exc:  # unreadable file: the batch cannot be hashed reliably
                missing.append(f"{r.image_uri_raw} ({type(exc).__name__}: {exc})")
                continue
        h.update(b"\0" + str(r.image_uri_raw).encode() + b"\0" + hashlib.sha256(images[uri]).digest())
    if missing:
        base.reason = f"{len(missing)} image(s) listed in the manifest are missing or unreadable: " + _problem_list(
            missing, len(missing)
        )
        return base
    rows = rows.copy()
    rows["batch_id"] = batch.name  # provenance: every row remembers the batch that brought it
    base.ok = True
    base.rows = rows
    base.image_bytes = images
    base.content_hash = h.hexdigest()
    base.skus = sorted(set(rows["sku_id"]))
    base.n_images = len(images)
    return base


# --------------------------------------------------------------------------------------------------- triage
@dataclass
class TriageResult:
    """Decisions of one scan. ``changed`` = decisions made in this scan (what to log and act on); ``state`` = the
    new per-folder memory (the sensor cursor); ``new`` = batches to register and ingest now."""

    decisions: list[BatchDecision]
    changed: list[BatchDecision]
    state: dict[str, dict]

    @property
    def new(self) -> list[BatchDecision]:
        return [d for d in self.changed if d.status == NEW]

    def inbox_frame(self) -> pd.DataFrame:
        cols = list(BatchDecision.__dataclass_fields__)
        rows = []
        for d in self.decisions:
            row = d.to_state()
            row["skus"] = ",".join(d.skus)
            row["status"] = REGISTERED if d.status == NEW else d.status
            rows.append(row)
        return pd.DataFrame(rows, columns=cols).astype({"n_images": "int64"})


def _claimed_hashes(previous: Mapping[str, BatchDecision], ingested: Mapping[str, str]) -> dict[str, str]:
    """Content hashes already claimed: ingested batches plus batches registered by an earlier scan, not ingested yet."""
    claimed: dict[str, str] = dict(ingested)
    for d in previous.values():
        if d.status in (NEW, REGISTERED) and d.content_hash and d.content_hash not in claimed:
            claimed[d.content_hash] = d.name
    return claimed


def _unchanged(prev: BatchDecision, ingested_names: Mapping[str, str]) -> BatchDecision:
    """A folder whose listing did not change keeps its decision (a registered batch that got ingested says so)."""
    if prev.status in (NEW, REGISTERED) and ingested_names.get(prev.name) == prev.content_hash:
        return BatchDecision(**{**prev.to_state(), "status": INGESTED, "updated_at": _now()})
    return prev


def _changed_after_registration(batch: DropBatch, prev: BatchDecision, fp: str) -> tuple[BatchDecision, BatchDecision]:
    """A registered or ingested batch whose folder changed: ``(decision kept, change reported)``. The registered
    content keeps its claim; only the change is reported (ingested batches are immutable)."""
    report = BatchDecision(
        batch.name,
        batch.uri,
        REJECTED,
        fp,
        prev.content_hash,
        reason=(
            f"batch {batch.name!r} changed after it was registered/ingested; ingested batches are immutable: "
            "drop the corrected content as a new batch under a new name"
        ),
        updated_at=_now(),
    )
    return BatchDecision(**{**report.to_state(), "status": prev.status, "reason": report.reason}), report


def _judge_content(
    batch: DropBatch,
    fp: str,
    insp: BatchInspection,
    ingested_names: Mapping[str, str],
    claimed: dict[str, str],
) -> BatchDecision:
    """A new or changed folder, read: malformed, a reused name, a duplicate of claimed content, or new (claimed)."""
    d = BatchDecision(
        batch.name,
        batch.uri,
        REJECTED,
        fp,
        insp.content_hash,
        n_images=insp.n_images,
        skus=insp.skus,
        updated_at=_now(),
    )
    if not insp.ok:
        d.reason = insp.reason
    elif batch.name in ingested_names and ingested_names[batch.name] != insp.content_hash:
        d.reason = (
            f"a different batch named {batch.name!r} was already ingested; batch names are never reused: "
            "rename the folder"
        )
    elif insp.content_hash in claimed:
        other = claimed[insp.content_hash]
        if other == batch.name:
            d.status = INGESTED
        else:
            d.status = DUPLICATE
            d.duplicate_of = other
            d.reason = f"same content (hash {insp.content_hash[:12]}...) as batch {other!r}: skipped"
    else:
        d.status = NEW
        claimed[insp.content_hash] = batch.name
    return d


def triage_drop_location(
    drop_location: str,
    state: Mapping[str, Mapping[str, Any]] | None,
    ingested: Mapping[str, str],
    storage_options: dict | None = None,
    inspect: Callable[[DropBatch], BatchInspection] | None = None,
) -> TriageResult:
    """Decide, for every folder of the drop location, whether it is new, a duplicate, malformed or incomplete.

    ``state``: the previous scan's memory (name -> decision dict; the sensor keeps it in its cursor) so a folder is
    only read again when its listing (file names and sizes) changed. ``ingested``: content hash -> batch name of
    every batch already in the work directory (:func:`skurec.catalogue.ingest.ingested_hashes`), the source of truth for
    idempotence: even with a lost cursor a batch is never ingested twice.
    """
    inspect = inspect or (lambda b: inspect_batch(b, storage_options))
    previous = {name: BatchDecision.from_state(d) for name, d in (state or {}).items()}
    ingested_names = {name: h for h, name in ingested.items()}
    claimed = _claimed_hashes(previous, ingested)
    decisions: list[BatchDecision] = []
    changed: list[BatchDecision] = []
    for batch in discover_batches(drop_location, storage_options):
        prev = previous.get(batch.name)
        if not batch.complete:
            d = BatchDecision(
                batch.name,
                batch.uri,
                INCOMPLETE,
                reason="no manifest yet (upload the images, then the manifest)",
                updated_at=_now(),
            )
            seen = prev is not None and prev.status == INCOMPLETE
            decisions.append(prev if seen else d)
            changed.extend([] if seen else [d])
            continue
        fp = folder_fingerprint(batch.uri, storage_options)
        if prev is not None and prev.fingerprint == fp and prev.status != INCOMPLETE:
            decisions.append(_unchanged(prev, ingested_names))
            continue
        if prev is not None and prev.status in (NEW, REGISTERED, INGESTED):
            kept, report = _changed_after_registration(batch, prev, fp)
            decisions.append(kept)
            changed.append(report)
            continue
        d = _judge_content(batch, fp, inspect(batch), ingested_names, claimed)
        decisions.append(d)
        changed.append(d)
    new_state = {d.name: {**d.to_state(), "status": REGISTERED if d.status == NEW else d.status} for d in decisions}
    return TriageResult(decisions=decisions, changed=changed, state=new_state)
