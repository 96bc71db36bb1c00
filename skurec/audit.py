"""Audit imported rows into the accepted image table, the quarantine table and the per-class table.

Rules (each one tested):

* Every row is read once, identified by the SHA-256 of its bytes, and decoded (cheaply) to prove it is an image.
* Same bytes under the same SKU: collapsed to one accepted image; the other rows are quarantined ``duplicate_image``.
* Same bytes under two or more SKUs: every such row is quarantined ``label_conflict`` (neither label is trusted).
* Classes with fewer than ``min_samples`` accepted images stay in the tables (``active=False``,
  ``status='below_min_samples'``) and are reported, but are not trained on.
* Split: a row's ``split`` column pins it; otherwise the image goes to ``val`` when a hash of its id falls below
  ``val_fraction`` — so an image keeps its split forever, whatever images arrive later. An active class with no
  hashed ``val`` image gives its lowest-hash image to ``val`` so every class is validated.
* ``len(images) + len(quarantine) == len(input rows)``, always.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skurec.catalogue import normalise_rows
from skurec.images import ImageRejected, inspect_image, sha256_bytes
from skurec.schemas import ClassesSchema, ImagesSchema, QuarantineSchema
from skurec.storage import RETRY_ATTEMPTS, filesystem_for, retry_transient

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class AuditConfig:
    min_samples: int = 50
    val_fraction: float = 0.1
    split_salt: str = "skurec-split-v1"
    max_image_bytes: int = 50 * 1024 * 1024
    read_threads: int = 8


@dataclass
class AuditResult:
    images: pd.DataFrame
    quarantine: pd.DataFrame
    classes: pd.DataFrame
    summary: dict = field(default_factory=dict)


def read_uri_bytes(uri: str, max_bytes: int | None = None, storage_options: dict | None = None) -> bytes:
    """Read a local path or fsspec URI, retrying transient errors with backoff (see
    :func:`skurec.storage.retry_transient`). A missing file, a permission problem or a file over ``max_bytes`` raise
    at once."""
    fs, path = filesystem_for(uri, storage_options)

    def read() -> bytes:
        if max_bytes is not None:
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise ImageRejected("file_too_large", f"{size} bytes exceeds the {max_bytes}-byte limit")
        data = fs.cat_file(path)
        if max_bytes is not None and len(data) > max_bytes:  # the file grew after the size check
            raise ImageRejected("file_too_large", f"{len(data)} bytes exceeds the {max_bytes}-byte limit")
        return data

    return retry_transient(read, f"read of {uri}", attempts=RETRY_ATTEMPTS)


def split_hash(image_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by the image id alone."""
    return int(hashlib.sha256(f"{salt}:{image_id}".encode()).hexdigest()[:15], 16) / float(16**15)


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


def audit(
    raw: pd.DataFrame,
    config: AuditConfig = AuditConfig(),
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Audit raw import rows (``skurec.catalogue.RAW_COLUMNS``)."""
    raw = normalise_rows(raw)
    n = len(raw)
    probes: list[dict] = [{} for _ in range(n)]
    todo = [i for i in range(n) if raw.at[i, "import_error"] is None]
    with ThreadPoolExecutor(max_workers=max(1, config.read_threads)) as pool:
        futures = {i: pool.submit(_probe, raw.at[i, "image_uri"], config, storage_options) for i in todo}
        for k, (i, fut) in enumerate(futures.items(), 1):
            probes[i] = fut.result()
            if progress and (k % 200 == 0 or k == len(futures)):
                progress(k, len(futures))

    quarantine: list[dict] = []

    def reject(i: int, reason: str, detail: str | None, image_id: str | None = None) -> None:
        r = raw.iloc[i]
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
    for i in range(n):
        err = raw.at[i, "import_error"]
        if err is not None:
            reject(i, err, raw.at[i, "import_detail"])
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
        skus = sorted({raw.at[i, "sku_id"] for i in rows})
        if len(skus) > 1:
            for i in rows:
                reject(i, "label_conflict", f"the same image bytes are labelled as {skus}", image_id)
            continue
        pinned = sorted({raw.at[i, "split"] for i in rows if raw.at[i, "split"]})
        if len(pinned) > 1:
            for i in rows:
                reject(i, "split_conflict", f"the same image bytes are pinned to splits {pinned}", image_id)
            continue
        first = rows[0]
        kept.append(first)
        for i in rows[1:]:
            reject(i, "duplicate_image", f"same bytes as {raw.at[first, 'image_uri']} (kept)", image_id)

    records = []
    for i in sorted(kept):
        r, p = raw.iloc[i], probes[i]
        pinned = r["split"] if r["split"] else None
        h = split_hash(p["image_id"], config.split_salt)
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
            }
        )
    images = pd.DataFrame(records, columns=list(ImagesSchema.columns.keys())[:-1] + ["_h"])

    counts = images.groupby("sku_id").size() if len(images) else pd.Series(dtype=int)
    active = set(counts[counts >= config.min_samples].index)
    images["active"] = images["sku_id"].isin(active)

    # Every active class gets at least one validation image (its lowest-hash unpinned image).
    for sku, grp in images[images["active"]].groupby("sku_id"):
        if not (grp["split"] == "val").any():
            free = grp[~grp["split_pinned"]]
            if len(free):
                images.loc[free["_h"].idxmin(), "split"] = "val"
    images = images.drop(columns="_h")

    classes = _class_table(images, config)
    quarantine_df = pd.DataFrame(quarantine, columns=list(QuarantineSchema.columns.keys()))
    images = ImagesSchema.validate(images.reset_index(drop=True))
    quarantine_df = QuarantineSchema.validate(quarantine_df)
    classes = ClassesSchema.validate(classes)
    if len(images) + len(quarantine_df) != n:
        raise AssertionError(f"audit lost rows: {len(images)} + {len(quarantine_df)} != {n}")
    return AuditResult(images=images, quarantine=quarantine_df, classes=classes, summary=_summary(n, images, quarantine_df, classes, config))


def _first_non_null(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def _class_table(images: pd.DataFrame, config: AuditConfig) -> pd.DataFrame:
    cols = list(ClassesSchema.columns.keys())
    if images.empty:
        return pd.DataFrame(columns=cols)
    g = images.groupby("sku_id")
    classes = pd.DataFrame(
        {
            "sku_name": g["sku_name"].agg(_first_non_null),
            "group_id": g["group_id"].agg(_first_non_null),
            "n_images": g.size(),
            "n_train": g["split"].agg(lambda s: int((s == "train").sum())),
            "n_val": g["split"].agg(lambda s: int((s == "val").sum())),
            "n_test": g["split"].agg(lambda s: int((s == "test").sum())),
        }
    ).reset_index()
    classes["status"] = np.where(classes["n_images"] >= config.min_samples, "active", "below_min_samples")
    return classes[cols]


def _summary(n_input: int, images: pd.DataFrame, quarantine: pd.DataFrame, classes: pd.DataFrame, cfg: AuditConfig) -> dict:
    active = images[images["active"]]
    return {
        "n_input_rows": n_input,
        "n_accepted": int(len(images)),
        "n_quarantined": int(len(quarantine)),
        "quarantine_reasons": {k: int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()},
        "n_classes": int(len(classes)),
        "n_active_classes": int((classes["status"] == "active").sum()) if len(classes) else 0,
        "n_filtered_classes": int((classes["status"] != "active").sum()) if len(classes) else 0,
        "filtered_classes": sorted(classes.loc[classes["status"] != "active", "sku_id"].tolist()) if len(classes) else [],
        "n_active_images": int(len(active)),
        "split_counts": {k: int(v) for k, v in active["split"].value_counts().sort_index().items()},
        "min_samples": cfg.min_samples,
        "val_fraction": cfg.val_fraction,
    }


def catalogue_snapshot_hash(images: pd.DataFrame) -> str:
    """Hash of the accepted rows that define a training set: (image_id, sku_id, split, active), order-free."""
    rows = sorted(
        f"{r.image_id}\t{r.sku_id}\t{r.split}\t{int(r.active)}" for r in images[["image_id", "sku_id", "split", "active"]].itertuples()
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()
