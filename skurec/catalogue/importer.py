"""Import a labelled catalogue from a folder layout or a manifest into raw rows, one per input image.

Two layouts are accepted:

* a folder ``ROOT/<sku_id>/<image files>`` (local path or fsspec URI such as ``s3://bucket/catalogue``);
* a manifest (``.csv`` or ``.parquet``) with columns ``image_uri, sku_id`` and optional
  ``sku_name, group_id, batch_id, split``. ``image_uri`` may be relative to the manifest, absolute, or an fsspec
  URI. ``split`` (train/val/test) pins an image to a split.

Import never drops a row silently: rows that cannot be used keep their place with an ``import_error`` code that the
audit turns into a quarantine row, so ``accepted + quarantined == input`` always holds. Import never writes to the
input location.

**Read roots.** A catalogue is only read inside its roots: by default the manifest's own folder (a folder layout:
the folder itself; a manifest on object storage: its bucket, the declared one). ``root`` replaces that default and
``allow`` adds roots (``SKUREC_CATALOGUE_ROOT`` / ``SKUREC_CATALOGUE_ALLOW``). A row naming anything else (``/etc/passwd``,
``../x``, ``http://127.0.0.1/...``, another bucket) and a local symlink whose target lies outside every root (a file
or a whole SKU folder) are quarantined as ``path_outside_root`` with the reason; a symlinked SKU folder inside the
roots is read. Locations are redacted (pre-signed URL signatures, passwords) in every error message.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import fsspec
import pandas as pd

from skurec.store.workspace import filesystem_for, is_remote, redact_uri, retry_transient

REQUIRED_COLUMNS = ("image_uri", "sku_id")
OPTIONAL_COLUMNS = ("sku_name", "group_id", "batch_id", "split")
VALID_SPLITS = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")
_BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")

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


def _resolve(
    raw: str,
    manifest_dir: str,
    manifest_protocol: str | None,
    bounds: Sequence[str],
    absolute_bounds: Sequence[str] = (),
) -> tuple[str | None, str | None, str | None]:
    """Resolve a manifest's image_uri. Returns (uri, error_code, detail).

    Relative paths are joined to the manifest's folder; every resolved location, and on local disk the real path
    behind any symlink, must lie inside one of ``bounds`` (the read roots; absolute URIs may also use
    ``absolute_bounds``, the manifest's own bucket), so a manifest cannot make the build read other files or hosts.
    """
    if "://" in raw:
        uri = raw
        bounds = [*bounds, *absolute_bounds]
    elif raw.startswith("/"):
        if manifest_protocol:
            return None, "path_outside_root", f"absolute local path {raw!r} in a remote manifest"
        uri = posixpath.normpath(raw)
    else:
        uri = _join_uri(manifest_dir, manifest_protocol, raw)
    shown = ", ".join(repr(redact_uri(b)) for b in bounds)
    if not any(_inside(uri, b) for b in bounds):
        return None, "path_outside_root", f"{redact_uri(raw)!r} is outside the catalogue's read root(s) {shown}"
    if _symlink_escapes_all(uri, bounds):
        return (
            None,
            "path_outside_root",
            f"{raw!r} is a symlink to {os.path.realpath(_local_path(uri))!r}, outside the read root(s) {shown}",
        )
    return uri, None, None


class RealPaths:
    """``os.path.realpath`` for the many files of one import: each folder's real path is resolved once, and a file
    that is not itself a symlink resolves to its folder's real path plus its name (what ``realpath`` returns for it,
    without an ``lstat`` of every path component for every file)."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        real = self._known.get(path)
        if real is not None:
            return real
        head, name = os.path.split(path)
        if not head or name in ("", ".", "..") or os.path.islink(path):
            real = os.path.realpath(path)
        else:
            real = os.path.join(self(head), name)
        self._known[path] = real
        return real


def _symlink_escapes_all(uri: str, bounds: Sequence[str], realpath: Callable[[str], str] = os.path.realpath) -> bool:
    """True when a local ``uri`` resolves through symlinks to a file outside every local bound."""
    if _local_path(uri) is None:
        return False
    local = [b for b in bounds if _local_path(b) is not None]
    return bool(local) and all(_symlink_escapes(uri, b, realpath) for b in local)


def _local_path(uri: str) -> str | None:
    """The local filesystem path of a plain path or ``file://`` URI; None for remote URIs."""
    if "://" not in uri:
        return uri
    if fsspec.utils.get_protocol(uri) in ("file", "local"):
        return uri.split("://", 1)[1]
    return None


def _symlink_escapes(uri: str, root: str, realpath: Callable[[str], str] = os.path.realpath) -> bool:
    """True when a local ``uri`` resolves (through symlinks) to a file outside the local ``root``."""
    path, root_path = _local_path(uri), _local_path(root)
    if path is None or root_path is None:
        return False
    real, real_root = realpath(path), realpath(root_path).rstrip("/")
    return not (real == real_root or real.startswith(real_root + "/"))


def _inside(uri: str, root: str) -> bool:
    """True when ``uri`` is ``root`` or below it (same protocol; local paths compared as absolute paths)."""

    def norm(u: str) -> str:
        proto = fsspec.utils.get_protocol(u)
        path = u.split("://", 1)[1] if "://" in u else u
        if proto in ("file", "local"):
            return f"file::{os.path.abspath(path)}"
        return f"{proto}::{posixpath.normpath(path)}"

    u, r = norm(uri), norm(root).rstrip("/")
    return u == r or u.startswith(r + "/")


@dataclass(frozen=True)
class _ManifestFrame:
    """A manifest read as strings: the rows, each row's line number (CSV) or index (Parquet), and per-row problems
    found while parsing (``{row position: (code, detail)}``) such as non-UTF-8 bytes or extra fields."""

    df: pd.DataFrame
    line_numbers: list[int]
    row_errors: dict[int, tuple[str, str]]


def _read_manifest_frame(fs: fsspec.AbstractFileSystem, path: str) -> _ManifestFrame:
    """Read a CSV or Parquet manifest as strings, never failing on one bad row.

    CSV is parsed with the ``csv`` module on text decoded with ``surrogateescape``: invalid UTF-8 bytes survive as
    lone surrogates, so the row that holds them can be quarantined (pandas' C parser would crash on them), and a row
    with more fields than the header is reported instead of aborting the whole import. Blank lines are skipped.
    """
    if path.lower().endswith((".parquet", ".pq")):
        df = pd.read_parquet(io.BytesIO(retry_transient(lambda: fs.cat_file(path), f"read of {path}")))
        df.columns = [str(c).strip() for c in df.columns]
        return _ManifestFrame(df.astype(object).where(df.notna(), None), list(range(len(df))), {})
    data = retry_transient(lambda: fs.cat_file(path), f"read of {path}")
    text = data.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []
    errors: dict[int, tuple[str, str]] = {}
    for fields in reader:
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        if header is None:
            header = [_repair(f).strip() for f in fields]
            continue
        pos = len(records)
        if len(fields) > len(header):
            errors[pos] = ("malformed_row", f"row has {len(fields)} fields but the header has {len(header)}")
        elif any(_has_surrogates(v) for v in fields):
            errors[pos] = ("non_utf8", "row holds bytes that are not valid UTF-8")
        fields = (fields + [""] * len(header))[: len(header)]
        records.append(fields)
        lines.append(reader.line_num)
    if header is None:
        return _ManifestFrame(pd.DataFrame(columns=list(REQUIRED_COLUMNS)), [], {})
    df = pd.DataFrame(records, columns=_unique_names(header), dtype=object)
    return _ManifestFrame(df, lines, errors)


def _repair(s: str) -> str:
    """Replace undecodable bytes (kept as surrogates) by U+FFFD so the text can be stored and printed."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if _has_surrogates(s) else s


def _unique_names(header: list[str]) -> list[str]:
    """Header names made unique (a repeated column keeps its first name; later copies get a ``.N`` suffix)."""
    seen: dict[str, int] = {}
    out = []
    for name in header:
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}.{k}")
    return out


def default_read_root(location: str) -> str:
    """The read root of a catalogue when none is declared: a folder layout's folder, or a manifest's own folder."""
    if not _is_manifest(location):
        return location.rstrip("/")
    if "://" in location and is_remote(location):
        parts = urlsplit(location)
        return f"{parts.scheme}://{parts.netloc}{posixpath.dirname(parts.path)}"
    return posixpath.dirname(os.path.abspath(_local_path(location) or location))


def read_roots(location: str, root: str | None = None, allow: Sequence[str] = ()) -> list[str]:
    """Every root the catalogue at ``location`` may be read from: ``root`` (else :func:`default_read_root`) plus
    the explicit allow-list."""
    return [(root or default_read_root(location)).rstrip("/") or "/", *(a.rstrip("/") or "/" for a in allow if a)]


def _declared_bucket(location: str) -> str | None:
    """``s3://bucket`` of a manifest on object storage: absolute URIs into the manifest's own bucket are allowed."""
    if "://" in location and fsspec.utils.get_protocol(location) in _BUCKET_PROTOCOLS:
        return f"{fsspec.utils.get_protocol(location)}://{urlsplit(location).netloc}"
    return None


def _is_manifest(location: str) -> bool:
    path = urlsplit(location).path if "://" in location else location
    return path.lower().endswith(MANIFEST_SUFFIXES)


def import_manifest(
    manifest_uri: str, root: str | None = None, storage_options: dict | None = None, allow: Sequence[str] = ()
) -> ImportReport:
    """Rows of a CSV/Parquet manifest. Missing required columns quarantine every row (the run still succeeds)."""
    shown = redact_uri(manifest_uri)
    fs, path = filesystem_for(manifest_uri, storage_options)
    try:
        exists = retry_transient(lambda: fs.exists(path), f"exists({shown})")
    except Exception as exc:  # unreachable host, refused credentials: the message may quote the signed URL
        raise CatalogueError(f"manifest {shown!r} cannot be reached ({type(exc).__name__})") from None
    if not exists:
        raise CatalogueError(f"manifest {shown!r} does not exist")
    protocol = fsspec.utils.get_protocol(manifest_uri) if is_remote(manifest_uri) else None
    manifest_dir = posixpath.dirname(path)
    bounds = read_roots(manifest_uri, root, allow)
    bucket = None if root else _declared_bucket(manifest_uri)
    try:
        frame = _read_manifest_frame(fs, path)
    except (OSError, ValueError, csv.Error) as exc:  # damaged Parquet, unreadable object, ...
        raise CatalogueError(
            f"manifest {shown!r} cannot be read ({type(exc).__name__}); it must be a UTF-8 CSV or a "
            f"Parquet file with columns {list(REQUIRED_COLUMNS)}"
        ) from None
    df = frame.df
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    unknown = tuple(c for c in df.columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    rows = []
    for i, rec in enumerate(df.to_dict("records")):
        raw_uri = _clean_str(rec.get("image_uri"))
        row = {
            "source": shown,
            "row_number": frame.line_numbers[i],  # CSV line number (header = 1) or Parquet row index
            "image_uri_raw": _repair(raw_uri) if raw_uri is not None else None,
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
        elif i in frame.row_errors:
            row["import_error"], row["import_detail"] = frame.row_errors[i]
            for k in ("sku_id", "sku_name", "group_id", "batch_id", "split"):
                if row[k] is not None:
                    row[k] = _repair(row[k])
        elif raw_uri is None:
            row["import_error"], row["import_detail"] = "missing_image_uri", "image_uri is empty"
        elif row["sku_id"] is None:
            row["import_error"], row["import_detail"] = "missing_sku_id", "sku_id is empty"
        elif row["split"] is not None and row["split"] not in VALID_SPLITS:
            row["import_error"], row["import_detail"] = "invalid_split", f"split {row['split']!r} not in {VALID_SPLITS}"
        else:
            uri, err, detail = _resolve(raw_uri, manifest_dir, protocol, bounds, [bucket] if bucket else [])
            row["image_uri"], row["import_error"], row["import_detail"] = uri, err, detail
        rows.append(row)
    return ImportReport(rows=rows_frame(rows), unknown_columns=unknown)


def import_folder(
    root_uri: str, storage_options: dict | None = None, root: str | None = None, allow: Sequence[str] = ()
) -> ImportReport:
    """Rows of a ``ROOT/<sku_id>/<files>`` layout (files may sit in sub-folders of the SKU folder).

    Hidden files (``.name``) are not catalogue content and are not listed; files directly in ROOT have no SKU and
    are imported with ``import_error='no_sku_folder'`` so that they are reported, not ignored. Files are read only
    inside the read roots (:func:`read_roots`: the folder itself unless ``root`` / ``allow`` say otherwise); a file
    or a symlinked folder resolving outside them is imported with ``import_error='path_outside_root'`` (a symlinked
    folder inside them is read like any other).
    """
    shown = redact_uri(root_uri)
    bounds = read_roots(root_uri, root, allow)
    fs, root = filesystem_for(root_uri, storage_options)
    if not retry_transient(lambda: fs.exists(root) and fs.isdir(root), f"exists({shown})"):
        raise CatalogueError(f"catalogue folder {shown!r} does not exist or is not a folder")
    protocol = fsspec.utils.get_protocol(root_uri) if is_remote(root_uri) else None
    root = root.rstrip("/")
    rows = []
    outside: dict[str, str] = {}  # path -> why (symlinked folders leading outside the roots)
    if protocol:
        # find() without maxdepth: one flat listing that raises on errors (a folder-by-folder walk would silently
        # skip a SKU folder whose listing failed, and its images would vanish from the catalogue).
        listing = retry_transient(lambda: fs.find(root), f"listing of {shown}")
    else:
        try:
            listing, outside = _walk_local(root, bounds)
        except (PermissionError, NotADirectoryError) as exc:
            raise CatalogueError(f"cannot list catalogue folder {shown!r}: {exc}; fix its permissions") from exc
    shown_bounds = ", ".join(repr(redact_uri(b)) for b in bounds)
    realpath = RealPaths()
    for i, path in enumerate(sorted([*listing, *outside])):
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else posixpath.basename(path)
        parts = rel.split("/")
        if any(p.startswith(".") for p in parts):
            continue
        uri = f"{protocol}://{path}" if protocol else path
        sku = parts[0] if len(parts) > 1 or path in outside else None
        error, detail = (None, None) if sku else ("no_sku_folder", "file is not inside a <sku_id>/ folder")
        if path in outside:
            error, detail = "path_outside_root", outside[path]
        elif not any(_inside(uri, b) for b in bounds) or _symlink_escapes_all(uri, bounds, realpath):
            error, detail = "path_outside_root", f"{rel!r} resolves outside the read root(s) {shown_bounds}"
        rows.append(
            {
                "source": shown,
                "row_number": i,
                "image_uri_raw": rel,
                "image_uri": uri,
                "sku_id": sku,
                "sku_name": None,
                "group_id": None,
                "batch_id": None,
                "split": None,
                "import_error": error,
                "import_detail": detail,
            }
        )
    return ImportReport(rows=rows_frame(rows))


def _walk_local(root: str, bounds: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Files below a local ``root``, following symlinked folders whose target lies inside ``bounds`` (each real
    folder once); a symlinked folder leading outside is returned in the second value with the reason, not walked."""
    files: list[str] = []
    outside: dict[str, str] = {}
    seen: set[str] = set()

    def fail(exc: OSError) -> None:
        raise exc

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=fail):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for d in dirs:
            full = os.path.join(folder, d)
            if os.path.islink(full) and _symlink_escapes_all(full, bounds):
                outside[full] = (
                    f"symlinked folder {os.path.relpath(full, root)!r} -> {os.path.realpath(full)!r} is outside the "
                    "read root(s); add its target to SKUREC_CATALOGUE_ALLOW to read it"
                )
            else:
                keep.append(d)
        dirs[:] = keep
        files += [os.path.join(folder, n) for n in names]
    return files, outside


def import_catalogue(
    location: str, root: str | None = None, storage_options: dict | None = None, allow: Sequence[str] = ()
) -> ImportReport:
    """Import a folder or a manifest, chosen by what ``location`` is, reading only inside its read roots."""
    if _is_manifest(location):
        return import_manifest(location, root=root, storage_options=storage_options, allow=allow)
    return import_folder(location, storage_options=storage_options, root=root, allow=allow)
