"""Audit imported rows into the accepted image table, the quarantine table and the per-class table.

Rules (each one tested):

* Every row is read once, identified by the SHA-256 of its bytes, and decoded (cheaply) to prove it is an image.
* Same bytes under the same SKU: collapsed to one accepted image; the other rows are quarantined ``duplicate_image``.
* Same bytes under two or more SKUs: every such row is quarantined ``label_conflict`` (neither label is trusted).
* Tiers (``head``, ``tail``, ``untrained``), the validation split and the test split: the rules are in
  :mod:`skurec.catalogue.splits`.
* ``len(images) + len(quarantine) == len(input rows)``, always.
* Incremental: with ``previous=`` (the previous :class:`AuditResult` or its ``probes`` table) a location whose file
  stamp (size, mtime and ctime on local disk; size and ETag / modification time on object stores) is unchanged is
  not read again: its recorded probe (image id, size, width, height, or rejection) is reused. The tables are
  identical to those of a full audit; only the cost differs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skurec.catalogue.importer import normalise_rows
from skurec.catalogue.schemas import ClassesSchema, ImagesSchema, QuarantineSchema
from skurec.catalogue.splits import (
    HEAD,
    TAIL,
    TRAINED_TIERS,
    UNTRAINED,
    split_hash,
    tiers_and_splits,
    tiers_of_classes,
)
from skurec.images import MAX_PIXELS, MIN_SIDE, ImageRejected, inspect_image, sha256_bytes
from skurec.store.workspace import filesystem_for, read_uri_bytes

log = logging.getLogger(__name__)

# One row per probed location: the file stamp taken before the read, and what the read found. Persist it (e.g. as the
# ``audit_probes`` table) and pass it back as ``audit(..., previous=...)`` to make the next audit incremental.
PROBE_COLUMNS = ["image_uri", "stamp", "probe_version", "image_id", "n_bytes", "width", "height", "error", "detail"]
# Bumped whenever what a probe checks changes, so older recorded probes are not trusted.
PROBE_VERSION = f"probe-v1|max_pixels={MAX_PIXELS}|min_side={MIN_SIDE}"
# Rejections that say something about the environment or the configuration, not the bytes: always looked at again.
_NEVER_REUSED = frozenset({"missing_file", "unreadable_file", "read_error", "file_too_large"})
_REMOTE_VERSION_KEYS = (
    "ETag",
    "etag",
    "md5Hash",
    "generation",
    "version_id",
    "VersionId",
    "LastModified",
    "last_modified",
    "mtime",
    "updated",
    "created",
)


@dataclass(frozen=True)
class AuditConfig:
    """``min_samples``: labelled (non-test) images a class needs for the head tier; ``min_shots``: for the tail tier
    (the few-shot SKUs the hierarchy learns from a handful of images; 5 was chosen on ``benchmarks/long_tail.py``);
    ``val_fraction``: the hashed validation share; ``test_fraction``: the test share carved from the head classes of
    a catalogue that has no test rows (0: none carved; :mod:`skurec.catalogue.splits`).
    """

    min_samples: int = 50
    min_shots: int = 5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_salt: str = "skurec-split-v1"
    max_image_bytes: int = 50 * 1024 * 1024
    read_threads: int = 8

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 1.0:  # the hash interval above val_fraction, cut at 1
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")


@dataclass
class AuditResult:
    images: pd.DataFrame
    quarantine: pd.DataFrame
    classes: pd.DataFrame
    summary: dict = field(default_factory=dict)
    probes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBE_COLUMNS))
    io: dict = field(default_factory=dict)  # {"n_locations", "n_read", "n_reused"}: what this audit had to read


def records(frame: pd.DataFrame) -> list[dict]:
    """``frame.to_dict("records")`` (the same values: missing values of extension columns as None, numpy scalars in
    object columns as Python ones), built column by column: a fifth of the cost on 30,000 rows."""
    cols = list(frame.columns)
    return [dict(zip(cols, values)) for values in zip(*(_column_values(frame[c]) for c in cols))]


def _column_values(column: pd.Series) -> list:
    dtype = column.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "Mm":  # datetimes: pandas' own boxing (Timestamp, Timedelta)
        return list(column)
    values = column.tolist()
    if not isinstance(dtype, np.dtype):  # an extension dtype (Int64, string, ...): pd.NA is None in to_dict
        return [None if v is pd.NA else v for v in values]
    if dtype.kind == "O":
        return [v.item() if isinstance(v, (np.number, np.bool_)) else v for v in values]
    return values


def _probe(uri: str, cfg: AuditConfig, storage_options: dict | None) -> dict:
    try:
        data = read_uri_bytes(uri, cfg.max_image_bytes, storage_options)
    except FileNotFoundError as exc:
        return {"error": "missing_file", "detail": f"no file at {uri} ({exc})"}
    except ImageRejected as exc:
        return {"error": exc.reason, "detail": exc.detail}
    except (IsADirectoryError, PermissionError) as exc:
        return {"error": "unreadable_file", "detail": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:
        return {"error": "read_error", "detail": f"{type(exc).__name__}: {exc}"}
    image_id = sha256_bytes(data)
    try:
        info = inspect_image(data)
    except ImageRejected as exc:
        return {"error": exc.reason, "detail": exc.detail, "image_id": image_id}
    return {"image_id": image_id, "n_bytes": len(data), "width": info.width, "height": info.height}


def _local_stamp(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # ctime changes on every write and cannot be set back (unlike mtime with touch -r / cp -p); the inode changes when
    # the file is replaced by a rename.
    return f"local:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _remote_stamp(entry: Mapping[str, Any]) -> str | None:
    size = entry.get("size")
    versions = [f"{k}={entry[k]}" for k in _REMOTE_VERSION_KEYS if entry.get(k) is not None]
    if size is None or not versions:  # a size alone cannot tell a rewrite of the same length: read again
        return None
    return f"remote:{size}:" + ";".join(versions)


def file_stamps(uris: list[str], storage_options: dict | None = None, threads: int = 8) -> dict[str, str | None]:
    """A cheap fingerprint of each location's current file (``None`` when none can be had: it is then read).

    Local files: one ``stat`` each. Remote files: one listing per folder (not one request per object); an object
    store entry needs a size plus a version marker (ETag, modification time, ...).
    """
    out: dict[str, str | None] = {}
    remote: dict[tuple[int, str], list[tuple[str, str]]] = {}
    filesystems: dict[int, Any] = {}
    for uri in uris:
        if "://" not in uri:  # plain local path: no filesystem object needed
            out[uri] = _local_stamp(uri)
            continue
        try:
            fs, path = filesystem_for(uri, storage_options)
        except Exception:
            out[uri] = None
            continue
        if "file" in (fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)):
            out[uri] = _local_stamp(path)
        else:
            filesystems[id(fs)] = fs
            remote.setdefault((id(fs), posixpath.dirname(path.rstrip("/"))), []).append((uri, path.rstrip("/")))

    def list_folder(key: tuple[int, str]) -> dict[str, str | None]:
        fs, folder = filesystems[key[0]], key[1]
        try:
            try:
                entries = fs.ls(folder, detail=True, refresh=True)  # never a stale listing cache
            except TypeError:
                entries = fs.ls(folder, detail=True)
        except Exception:
            entries = []
        by_name = {str(e.get("name", "")).rstrip("/"): e for e in entries if isinstance(e, Mapping)}
        found = {}
        for uri, path in remote[key]:
            entry = by_name.get(path) or by_name.get(path.lstrip("/")) or by_name.get("/" + path.lstrip("/"))
            found[uri] = _remote_stamp(entry) if entry is not None and entry.get("type", "file") == "file" else None
        return found

    if remote:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for found in pool.map(list_folder, list(remote)):
                out.update(found)
    return out


def _previous_probes(previous: Any) -> pd.DataFrame | None:
    """The probes table out of whatever the caller passed as ``previous``."""
    if previous is None:
        return None
    if isinstance(previous, pd.DataFrame):
        table = previous
    elif isinstance(previous, AuditResult):
        table = previous.probes
    elif isinstance(previous, Mapping):
        table = previous.get("probes")
        if table is None:
            log.warning("previous audit given without its 'probes' table (file stamps): every location is read again")
            return None
    else:
        raise TypeError(
            f"previous= must be an AuditResult, its probes DataFrame or a mapping with 'probes', got {type(previous).__name__}"
        )
    missing = [c for c in PROBE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"previous probes table lacks column(s) {missing}; expected {PROBE_COLUMNS}")
    return table


def _reusable(rec: Mapping[str, Any], stamp: str | None, cfg: AuditConfig) -> bool:
    if stamp is None or rec.get("stamp") != stamp or rec.get("probe_version") != PROBE_VERSION:
        return False
    error = rec.get("error")
    if error is not None and not pd.isna(error):
        return error not in _NEVER_REUSED
    n_bytes = rec.get("n_bytes")
    return n_bytes is not None and not pd.isna(n_bytes) and int(n_bytes) <= cfg.max_image_bytes


def _probe_from_record(rec: Mapping[str, Any]) -> dict:
    def val(k: str) -> Any:
        v = rec.get(k)
        return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v

    if val("error") is not None:
        out = {"error": val("error"), "detail": val("detail")}
        if val("image_id") is not None:
            out["image_id"] = val("image_id")
        return out
    return {
        "image_id": val("image_id"),
        "n_bytes": int(val("n_bytes")),
        "width": int(val("width")),
        "height": int(val("height")),
    }


def _probes_frame(results: dict[str, dict], stamps: dict[str, str | None]) -> pd.DataFrame:
    rows = []
    for uri in sorted(results):
        p = results[uri]
        rows.append(
            {
                "image_uri": uri,
                "stamp": stamps.get(uri),
                "probe_version": PROBE_VERSION,
                "image_id": p.get("image_id"),
                "n_bytes": p.get("n_bytes"),
                "width": p.get("width"),
                "height": p.get("height"),
                "error": p.get("error"),
                "detail": p.get("detail"),
            }
        )
    frame = pd.DataFrame(rows, columns=PROBE_COLUMNS)
    for c in ("n_bytes", "width", "height"):
        frame[c] = frame[c].astype("Int64")
    for c in ("image_uri", "stamp", "probe_version", "image_id", "error", "detail"):
        frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame


def audit(
    raw: pd.DataFrame,
    config: AuditConfig = AuditConfig(),
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    previous: AuditResult | pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
    keep_splits: pd.DataFrame | None = None,
) -> AuditResult:
    """Audit raw import rows (``skurec.catalogue.importer.RAW_COLUMNS``).

    ``previous``: the previous audit's :class:`AuditResult`, its ``probes`` table, or a mapping holding it under
    ``"probes"`` (other keys, such as the previous ``images``/``quarantine`` tables, are not needed). Locations whose
    file stamp is unchanged since are not read again; the result is identical to a full audit. Persist
    ``result.probes`` to pass it next time.

    ``keep_splits``: the previous audit's ``images`` table; an image that was already audited keeps the split it had
    (unless the manifest pins it now), so the "every active class has a validation image" override never moves an
    image when a batch arrives.
    """
    raw = normalise_rows(raw)
    n = len(raw)
    cells = records(raw)  # plain dicts: per-cell DataFrame access costs ~35 us, too much per row
    probes, results, stamps, io_stats = _probe_rows(cells, config, storage_options, previous, progress)
    kept, quarantine = _triage_rows(cells, probes)
    images = _image_rows(cells, probes, kept, config)
    images, tier, no_train, test_split = tiers_and_splits(images, config, keep_splits)

    classes = _class_table(images, config, tier)
    quarantine_df = pd.DataFrame(quarantine, columns=list(QuarantineSchema.columns.keys()))
    images = ImagesSchema.validate(images.reset_index(drop=True))
    quarantine_df = QuarantineSchema.validate(quarantine_df)
    classes = ClassesSchema.validate(classes)
    if len(images) + len(quarantine_df) != n:
        raise AssertionError(f"audit lost rows: {len(images)} + {len(quarantine_df)} != {n}")
    return AuditResult(
        images=images,
        quarantine=quarantine_df,
        classes=classes,
        summary=_summary(n, images, quarantine_df, classes, config, no_train, test_split),
        probes=_probes_frame(results, stamps),
        io=io_stats,
    )


def _probe_rows(
    cells: list[dict],
    config: AuditConfig,
    storage_options: dict | None,
    previous: Any,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[dict], dict[str, dict], dict[str, str | None], dict[str, int]]:
    """Probe every location once (in threads), reusing the previous audit's probe where the file stamp is unchanged.
    Returns the probe of each row (``{}`` for rows with an import error), the probe of each location, the stamps and
    the I/O counts."""
    n = len(cells)
    probes: list[dict] = [{} for _ in range(n)]
    todo = [i for i in range(n) if cells[i]["import_error"] is None]
    uris = list(dict.fromkeys(cells[i]["image_uri"] for i in todo))  # each location probed once
    prev_table = _previous_probes(previous)
    # Stamps are taken BEFORE any read: a file rewritten during the audit has a newer stamp than the one recorded.
    stamps = file_stamps(uris, storage_options, config.read_threads)
    results: dict[str, dict] = {}
    if prev_table is not None and len(prev_table):
        recorded = {r["image_uri"]: r for r in records(prev_table)}
        for uri in uris:
            prev_rec = recorded.get(uri)
            if prev_rec is not None and _reusable(prev_rec, stamps.get(uri), config):
                results[uri] = _probe_from_record(prev_rec)
    n_reused = len(results)
    to_read = [u for u in uris if u not in results]
    with ThreadPoolExecutor(max_workers=max(1, config.read_threads)) as pool:
        futures = {u: pool.submit(_probe, u, config, storage_options) for u in to_read}
        for k, (u, fut) in enumerate(futures.items(), 1):
            results[u] = fut.result()
            if progress and (k % 200 == 0 or k == len(futures)):
                progress(k, len(futures))
    for i in todo:
        probes[i] = results[cells[i]["image_uri"]]
    io_stats = {"n_locations": len(uris), "n_read": len(to_read), "n_reused": n_reused}
    if previous is not None:
        log.info("audit: %d locations, %d read, %d reused from the previous audit", len(uris), len(to_read), n_reused)
    return probes, results, stamps, io_stats


def _triage_rows(cells: list[dict], probes: list[dict]) -> tuple[list[int], list[dict]]:
    """The rows kept (one per image) and the quarantine rows: import errors, unreadable images, the same bytes under
    two SKUs or two pinned splits, and duplicates of a kept image within a SKU."""
    quarantine: list[dict] = []

    def reject(i: int, reason: str, detail: str | None, image_id: str | None = None) -> None:
        r = cells[i]
        quarantine.append(
            {
                "source": r["source"],
                "row_number": int(r["row_number"]),
                "image_uri": r["image_uri"] if r["image_uri"] is not None else r["image_uri_raw"],
                "sku_id": r["sku_id"],
                "image_id": image_id,
                "reason": reason,
                "detail": detail,
            }
        )

    candidates: list[int] = []
    for i in range(len(cells)):
        err = cells[i]["import_error"]
        if err is not None:
            reject(i, err, cells[i]["import_detail"])
        elif "error" in probes[i]:
            reject(i, probes[i]["error"], probes[i]["detail"], probes[i].get("image_id"))
        else:
            candidates.append(i)

    # Same bytes: collapse within a SKU, quarantine across SKUs.
    by_image: dict[str, list[int]] = {}
    for i in candidates:
        by_image.setdefault(probes[i]["image_id"], []).append(i)
    kept: list[int] = []
    for image_id, rows in by_image.items():
        skus = sorted({cells[i]["sku_id"] for i in rows})
        if len(skus) > 1:
            for i in rows:
                reject(i, "label_conflict", f"the same image bytes are labelled as {skus}", image_id)
            continue
        pinned = sorted({cells[i]["split"] for i in rows if cells[i]["split"]})
        if len(pinned) > 1:
            for i in rows:
                reject(i, "split_conflict", f"the same image bytes are pinned to splits {pinned}", image_id)
            continue
        first = rows[0]
        kept.append(first)
        for i in rows[1:]:
            reject(i, "duplicate_image", f"same bytes as {cells[first]['image_uri']} (kept)", image_id)
    return kept, quarantine


def _image_rows(cells: list[dict], probes: list[dict], kept: list[int], config: AuditConfig) -> pd.DataFrame:
    """The accepted images with their first split (pinned, or the image-id hash), the hash itself (``_h``) and whether
    the manifest said ``train`` (``_not_test``).

    A manifest that lists val rows defines its validation split; otherwise pinned-train rows are "not test" and the
    validation split is carved out of them by the image-id hash, as for unpinned rows."""
    sources_with_val = {c["source"] for c in cells if c["split"] == "val"}
    records = []
    for i in sorted(kept):
        r, p = cells[i], probes[i]
        h = split_hash(p["image_id"], config.split_salt)
        asked = r["split"] if r["split"] else None
        pinned = asked if asked in ("val", "test") or (asked == "train" and r["source"] in sources_with_val) else None
        records.append(
            {
                "image_id": p["image_id"],
                "sku_id": r["sku_id"],
                "sku_name": r["sku_name"],
                "group_id": r["group_id"],
                "batch_id": r["batch_id"],
                "image_uri": r["image_uri"],
                "source": r["source"],
                "n_bytes": p["n_bytes"],
                "width": p["width"],
                "height": p["height"],
                "split": pinned or ("val" if h < config.val_fraction else "train"),
                "split_pinned": pinned is not None,
                "_h": h,
                "_not_test": asked == "train",  # the manifest said "train": never carved into test
            }
        )
    return pd.DataFrame(records, columns=list(ImagesSchema.columns.keys())[:-1] + ["_h", "_not_test"])


def _first_non_null(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def _class_table(images: pd.DataFrame, config: AuditConfig, tier: Mapping[str, str]) -> pd.DataFrame:
    cols = list(ClassesSchema.columns.keys())
    if images.empty:
        return pd.DataFrame(columns=cols)
    g = images.groupby("sku_id")
    per_split = pd.crosstab(images["sku_id"], images["split"]).reindex(columns=["train", "val", "test"], fill_value=0)
    classes = pd.DataFrame(
        {
            "sku_name": g["sku_name"].agg(_first_non_null),
            "group_id": g["group_id"].agg(_first_non_null),
            "n_images": g.size(),
            "n_train": per_split["train"].astype(int),
            "n_val": per_split["val"].astype(int),
            "n_test": per_split["test"].astype(int),
        }
    ).reset_index()
    classes["tier"] = classes["sku_id"].map(tier).fillna(UNTRAINED)
    classes["status"] = np.where(classes["tier"].isin(TRAINED_TIERS), "active", "below_min_samples")
    return classes[cols]


def _summary(
    n_input: int,
    images: pd.DataFrame,
    quarantine: pd.DataFrame,
    classes: pd.DataFrame,
    cfg: AuditConfig,
    no_train: list[str] | None = None,
    test_split: str = "none",
) -> dict:
    active = images[images["active"]]
    with_val = set(active.loc[active["split"] == "val", "sku_id"])
    tier = tiers_of_classes(classes)
    head = sorted(s for s, t in tier.items() if t == HEAD)
    tail = sorted(s for s, t in tier.items() if t == TAIL)
    # Head classes without validation are a gap the gate warns about; tail classes are validated on what they have.
    without_val = sorted(set(head) - with_val)
    tail_val = active[active["sku_id"].isin(set(tail)) & (active["split"] == "val")]
    test = active[active["split"] == "test"]
    return {
        "n_input_rows": n_input,
        "n_accepted": int(len(images)),
        "n_quarantined": int(len(quarantine)),
        "quarantine_reasons": {k: int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()},
        "n_classes": int(len(classes)),
        "n_active_classes": int((classes["status"] == "active").sum()) if len(classes) else 0,
        "n_filtered_classes": int((classes["status"] != "active").sum()) if len(classes) else 0,
        "filtered_classes": sorted(classes.loc[classes["status"] != "active", "sku_id"].tolist())
        if len(classes)
        else [],
        "n_active_images": int(len(active)),
        "split_counts": {k: int(v) for k, v in active["split"].value_counts().sort_index().items()},
        # Active classes with no validation image (e.g. a single train image): the deployment gate cannot judge them.
        "n_active_classes_without_val": len(without_val),
        "active_classes_without_val": without_val,
        "min_samples": cfg.min_samples,
        "min_shots": cfg.min_shots,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        # where the test split comes from: the manifest ("given"), carved by the hash from the head ("carved"), none
        "test_split": test_split,
        "test_carve": {
            "fraction": cfg.test_fraction if test_split == "carved" else 0.0,
            "n_images": int(len(test)) if test_split == "carved" else 0,
            "n_classes": int(test["sku_id"].nunique()) if test_split == "carved" else 0,
            "from": "head-tier classes, stable hash of the image id (tail and untrained classes keep their images)",
        },
        "tiers": {
            "head": {"n_classes": len(head), "n_images": int(active["sku_id"].isin(set(head)).sum())},
            "tail": {"n_classes": len(tail), "n_images": int(active["sku_id"].isin(set(tail)).sum())},
            "untrained": {"n_classes": int(len(classes)) - len(head) - len(tail)},
        },
        "tail_classes": tail,
        # The tail is validated on what its hash split gives it: this many tail classes / images.
        "tail_validation": {"n_classes_with_val": int(tail_val["sku_id"].nunique()), "n_val_images": len(tail_val)},
        "classes_without_train": list(no_train or []),
    }


def catalogue_snapshot_hash(images: pd.DataFrame) -> str:
    """Hash of the accepted rows that define a training set: (image_id, sku_id, split, active), order-free."""
    rows = sorted(
        f"{r.image_id}\t{r.sku_id}\t{r.split}\t{int(r.active)}"
        for r in images[["image_id", "sku_id", "split", "active"]].itertuples()
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()
