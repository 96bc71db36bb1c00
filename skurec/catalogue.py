"""Import a labelled catalogue from a folder layout or a manifest into raw rows, one per input image.

Two layouts are accepted:

* a folder ``ROOT/<sku_id>/<image files>`` (local path or fsspec URI such as ``s3://bucket/catalogue``);
* a manifest (``.csv`` or ``.parquet``) with columns ``image_uri, sku_id`` and optional
  ``sku_name, group_id, batch_id, split``. ``image_uri`` may be relative to the manifest, absolute, or an fsspec
  URI. ``split`` (train/val/test) pins an image to a split.

Import never drops a row silently: rows that cannot be used keep their place with an ``import_error`` code that the
audit turns into a quarantine row, so ``accepted + quarantined == input`` always holds. Import never writes to the
input location.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import fsspec
import pandas as pd

from skurec.storage import filesystem_for, is_remote

REQUIRED_COLUMNS = ("image_uri", "sku_id")
OPTIONAL_COLUMNS = ("sku_name", "group_id", "batch_id", "split")
VALID_SPLITS = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")

RAW_COLUMNS = [
    "source",
    "row_number",
    "image_uri_raw",
    "image_uri",
    "sku_id",
    "sku_name",
    "group_id",
    "batch_id",
    "split",
    "import_error",
    "import_detail",
]


class CatalogueError(ValueError):
    """The catalogue location itself is unusable (does not exist, unknown format)."""


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    """Raw rows as an object-dtype frame in which missing values are ``None`` (not NaN)."""
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in RAW_COLUMNS})


def normalise_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce any frame of raw rows to object dtype with ``None`` for missing values."""
    df = df.reset_index(drop=True).astype(object)
    return df.where(df.notna(), None)


@dataclass(frozen=True)
class ImportReport:
    rows: pd.DataFrame  # RAW_COLUMNS
    unknown_columns: tuple[str, ...] = ()


def _clean_str(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
        return None
    s = str(value).strip()
    return s or None


def _has_surrogates(s: str | None) -> bool:
    return s is not None and any("\udc80" <= ch <= "\udcff" for ch in s)


def _join_uri(base_dir: str, protocol: str | None, rel: str) -> str:
    path = posixpath.normpath(posixpath.join(base_dir, rel))
    return f"{protocol}://{path}" if protocol else path


def _resolve(raw: str, manifest_dir: str, manifest_protocol: str | None, root: str | None) -> tuple[str | None, str | None, str | None]:
    """Resolve a manifest's image_uri. Returns (uri, error_code, detail)."""
    if "://" in raw:
        uri = raw
        if root is not None and not _inside(uri, root):
            return None, "path_outside_root", f"{raw!r} is outside the catalogue root {root!r}"
        return uri, None, None
    if raw.startswith("/"):
        if manifest_protocol:
            return None, "path_outside_root", f"absolute local path {raw!r} in a remote manifest"
        uri = posixpath.normpath(raw)
        if root is not None and not _inside(uri, root):
            return None, "path_outside_root", f"{raw!r} is outside the catalogue root {root!r}"
        return uri, None, None
    uri = _join_uri(manifest_dir, manifest_protocol, raw)
    bound = root if root is not None else (f"{manifest_protocol}://{manifest_dir}" if manifest_protocol else manifest_dir)
    if not _inside(uri, bound):
        return None, "path_outside_root", f"{raw!r} escapes the manifest folder {bound!r}"
    return uri, None, None


def _inside(uri: str, root: str) -> bool:
    def norm(u: str) -> str:
        proto = fsspec.utils.get_protocol(u)
        path = u.split("://", 1)[1] if "://" in u else u
        proto = "file" if proto in ("file", "local") else proto
        return f"{proto}::{posixpath.normpath(path)}"

    u, r = norm(uri), norm(root).rstrip("/")
    return u == r or u.startswith(r + "/")


def _read_manifest_frame(fs: fsspec.AbstractFileSystem, path: str) -> tuple[pd.DataFrame, list[int]]:
    """Read a manifest as strings. Returns the frame and the row positions that held non-UTF-8 bytes."""
    if path.lower().endswith((".parquet", ".pq")):
        with fs.open(path, "rb") as f:
            df = pd.read_parquet(f)
        return df.astype(object).where(df.notna(), None), []
    with fs.open(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8-sig", errors="surrogateescape")
    if not text.strip():
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS)), []
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    df.columns = [str(c).strip() for c in df.columns]
    bad_rows = [i for i, row in enumerate(df.itertuples(index=False)) if any(_has_surrogates(v) for v in row)]
    return df, bad_rows


def import_manifest(manifest_uri: str, root: str | None = None, storage_options: dict | None = None) -> ImportReport:
    """Rows of a CSV/Parquet manifest. Missing required columns quarantine every row (the run still succeeds)."""
    fs, path = filesystem_for(manifest_uri, storage_options)
    if not fs.exists(path):
        raise CatalogueError(f"manifest {manifest_uri!r} does not exist")
    protocol = fsspec.utils.get_protocol(manifest_uri) if is_remote(manifest_uri) else None
    manifest_dir = posixpath.dirname(path)
    df, bad_rows = _read_manifest_frame(fs, path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    unknown = tuple(c for c in df.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    bad = set(bad_rows)
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        raw_uri = _clean_str(rec.get("image_uri"))
        row = {
            "source": manifest_uri,
            "row_number": i + 2 if not path.lower().endswith((".parquet", ".pq")) else i,  # CSV line number
            "image_uri_raw": raw_uri if not _has_surrogates(raw_uri) else raw_uri.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            "image_uri": None,
            "sku_id": _clean_str(rec.get("sku_id")),
            "sku_name": _clean_str(rec.get("sku_name")),
            "group_id": _clean_str(rec.get("group_id")),
            "batch_id": _clean_str(rec.get("batch_id")),
            "split": (_clean_str(rec.get("split")) or "").lower() or None,
            "import_error": None,
            "import_detail": None,
        }
        if missing:
            row["import_error"], row["import_detail"] = "missing_column", f"manifest lacks required column(s) {missing}"
        elif i in bad:
            row["import_error"], row["import_detail"] = "non_utf8", "row holds bytes that are not valid UTF-8"
            for k in ("sku_id", "sku_name", "group_id", "batch_id"):
                if _has_surrogates(row[k]):
                    row[k] = row[k].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        elif raw_uri is None:
            row["import_error"], row["import_detail"] = "missing_image_uri", "image_uri is empty"
        elif row["sku_id"] is None:
            row["import_error"], row["import_detail"] = "missing_sku_id", "sku_id is empty"
        elif row["split"] is not None and row["split"] not in VALID_SPLITS:
            row["import_error"], row["import_detail"] = "invalid_split", f"split {row['split']!r} not in {VALID_SPLITS}"
        else:
            uri, err, detail = _resolve(raw_uri, manifest_dir, protocol, root)
            row["image_uri"], row["import_error"], row["import_detail"] = uri, err, detail
        rows.append(row)
    return ImportReport(rows=rows_frame(rows), unknown_columns=unknown)


def import_folder(root_uri: str, storage_options: dict | None = None) -> ImportReport:
    """Rows of a ``ROOT/<sku_id>/<files>`` layout (files may sit in sub-folders of the SKU folder).

    Hidden files (``.name``) are not catalogue content and are not listed; files directly in ROOT have no SKU and
    are imported with ``import_error='no_sku_folder'`` so that they are reported, not ignored.
    """
    fs, root = filesystem_for(root_uri, storage_options)
    if not fs.exists(root) or not fs.isdir(root):
        raise CatalogueError(f"catalogue folder {root_uri!r} does not exist or is not a folder")
    protocol = fsspec.utils.get_protocol(root_uri) if is_remote(root_uri) else None
    root = root.rstrip("/")
    rows = []
    for i, path in enumerate(sorted(fs.find(root))):
        rel = path[len(root) + 1:] if path.startswith(root + "/") else posixpath.basename(path)
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts):
            continue
        uri = f"{protocol}://{path}" if protocol else path
        sku = parts[0] if len(parts) > 1 else None
        rows.append(
            {
                "source": root_uri,
                "row_number": i,
                "image_uri_raw": rel,
                "image_uri": uri,
                "sku_id": sku,
                "sku_name": None,
                "group_id": None,
                "batch_id": None,
                "split": None,
                "import_error": None if sku else "no_sku_folder",
                "import_detail": None if sku else "file is not inside a <sku_id>/ folder",
            }
        )
    return ImportReport(rows=rows_frame(rows))


def import_catalogue(location: str, root: str | None = None, storage_options: dict | None = None) -> ImportReport:
    """Import a folder or a manifest, chosen by what ``location`` is."""
    if location.lower().endswith(MANIFEST_SUFFIXES):
        return import_manifest(location, root=root, storage_options=storage_options)
    return import_folder(location, storage_options=storage_options)
