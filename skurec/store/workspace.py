"""The work directory: Parquet tables, JSON/bytes artifacts and a DuckDB mirror, on local disk or any fsspec URI.

Parquet files are the source of truth. When the work directory is local, every table is also mirrored into one
DuckDB file (``<workdir>/skurec.duckdb``) so an analyst can query the catalogue with SQL; for a remote work
directory (``s3://bucket/prefix``) the DuckDB mirror lives in a local path given by ``duckdb_path``.

All writes are atomic: a reader never sees a half-written file. Locally a file is written beside its target and
renamed into place; object stores (S3) make a PUT visible only once it is complete. Tables that must change together
(``layout.TABLE_GROUPS``: the audit's images, quarantine, classes, probes and summary) are written as a new snapshot
folder and switched by replacing one pointer file (:meth:`Workspace.write_table_group`): a failure or a kill at any
point leaves the previous group whole. A full disk is reported as "no space left on device", naming the file.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.utils import glob_translate

from skurec import layout
from skurec.images import ImageRejected

log = logging.getLogger(__name__)


def is_remote(uri: str) -> bool:
    protocol = fsspec.utils.get_protocol(uri)
    return protocol not in ("file", "local")


# Object stores whose fsspec filesystems cache directory listings (s3fs, gcsfs, adlfs).
_LISTING_CACHE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def filesystem_for(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-without-protocol) for a local path or an fsspec URI. Credentials come from the environment
    (or ``storage_options``); they are never written anywhere by skurec.

    Object-store filesystems are created without a listing cache (``use_listings_cache=False``) unless the caller
    asks for one: s3fs instances are shared process-wide and a cached listing hides objects written by other
    processes (a new image would read as ``missing_file``, a new embedding part would be ignored).
    """
    options = dict(storage_options or {})
    if fsspec.utils.get_protocol(uri) in _LISTING_CACHE_PROTOCOLS:
        options.setdefault("use_listings_cache", False)
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


# Errors that retrying cannot fix: the object is not there, we may not read it, or its content is wrong.
NON_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,  # includes pyarrow.ArrowInvalid (a damaged Parquet file) and skurec's ImageRejected
    TypeError,
    KeyError,
    NotImplementedError,
)
RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY_S = 0.1

T = TypeVar("T")


def retry_transient(
    fn: Callable[[], T], what: str, attempts: int = RETRY_ATTEMPTS, first_delay: float = RETRY_FIRST_DELAY_S
) -> T:
    """Call ``fn()``; on a transient error (network hiccup, throttling, 5xx) retry with exponential backoff.

    ``what`` names the operation in the warning that each retry logs. Errors in :data:`NON_TRANSIENT_ERRORS`
    (missing file, permission, corrupt content) are raised at once; the last transient error is re-raised after
    ``attempts`` tries. This sits on top of the retries s3fs/botocore already make, for failures they give up on.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except NON_TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            if attempt == attempts:
                raise
            log.warning(
                "%s failed (%s: %s), retry %d/%d in %.1fs", what, type(exc).__name__, exc, attempt, attempts - 1, delay
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


TEMP_PREFIX = ".tmp-"


class Workspace:
    """A work directory (local path or fsspec URI) holding every artifact skurec produces."""

    def __init__(self, root: str, duckdb_path: str | None = None, storage_options: dict | None = None):
        self.root_uri = str(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = filesystem_for(self.root_uri, self.storage_options)
        self.remote = is_remote(self.root_uri)
        if not self.remote:
            self.root = os.path.abspath(self.root)
            self.root_uri = self.root
            os.makedirs(self.root, exist_ok=True)
        if duckdb_path is None:
            if self.remote:
                raise ValueError(
                    "a remote work directory needs a local duckdb_path for the SQL mirror "
                    "(e.g. duckdb_path='/var/lib/skurec/skurec.duckdb')"
                )
            duckdb_path = os.path.join(self.root, layout.DUCKDB_FILE)
        self.duckdb_path = duckdb_path

    # ---------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        """Filesystem path (no protocol) of a file inside the work directory."""
        rel = posixpath.join(*parts) if parts else ""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"work-directory paths must be relative and stay inside it: {rel!r}")
        return posixpath.join(self.root, rel) if rel else self.root

    def uri(self, *parts: str) -> str:
        """Full URI (with protocol for remote stores) of a file inside the work directory."""
        p = self.path(*parts)
        return self.fs.unstrip_protocol(p) if self.remote else p

    def local_path(self, *parts: str) -> str:
        """Local path of a file; only for local work directories (reports a person opens, DuckDB views)."""
        if self.remote:
            raise ValueError("local_path() is only available for a local work directory")
        return self.path(*parts)

    # ---------------------------------------------------------------- bytes / json
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a storage operation; on a remote store, retry transient failures."""
        if not self.remote:
            return fn()
        return retry_transient(fn, f"{what} on {self.root_uri}")

    def _fresh(self, path: str) -> None:
        """Drop s3fs' cached listing for ``path`` so that files written by other processes are seen."""
        if self.remote:
            self.fs.invalidate_cache(path)

    def exists(self, *parts: str) -> bool:
        p = self.path(*parts)

        def check() -> bool:
            self._fresh(p)
            return bool(self.fs.exists(p))

        return self._call(f"exists({p})", check)

    def read_bytes(self, *parts: str) -> bytes:
        p = self.path(*parts)

        # cat_file: one GET on an object store (open() + read() costs a HEAD and a GET: two chances to fail).
        return self._call(f"read({p})", lambda: self.fs.cat_file(p))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write ``data`` to ``rel``; returns the file's URI.

        Local: write ``.tmp-<uuid>-<name>`` beside the target, fsync, rename over the target (readers see the old or
        the new file, never a partial one; temp names never match the globs readers use). Remote: one PUT, which an
        object store makes visible only once complete.
        """
        target = self.path(rel)
        parent = posixpath.dirname(target)
        if self.remote:
            self._call(f"write({target})", lambda: self.fs.pipe_file(target, data))
            self._fresh(target)
        else:
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{posixpath.basename(target)}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException as exc:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise no_space_error(target, len(data)) from exc
                raise
            _fsync_dir(parent)
        return self.uri(rel)

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts).decode("utf-8"))

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly inside a folder of the work directory, temp files excluded; [] when the
        folder does not exist."""
        p = self.path(*parts)

        def ls() -> list[str]:
            self._fresh(p)
            if not self.fs.exists(p):
                return []
            names = (posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))
            return sorted(n for n in names if not n.startswith(TEMP_PREFIX))

        return self._call(f"listdir({p})", ls)

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob inside the work directory, sorted (always a fresh listing); temporary
        files of writes in progress (``.tmp-*``) are never returned.

        On an object store the folder before the first wildcard is listed flat (``find`` without ``maxdepth``)
        and matched here: fsspec's own ``glob`` walks folder by folder and silently drops a folder whose listing
        failed, so a throttled request would make files vanish (a cache would look empty, batches would be lost).
        """
        full = self.path(pattern)
        prefix = self.root.rstrip("/") + "/"

        def run() -> list[str]:
            if not self.remote:
                return self.fs.glob(full)
            base = _glob_base(full)
            self._fresh(base)
            regex = re.compile(glob_translate(full))
            return [h for h in self.fs.find(base) if regex.match(h)]

        hits = [h for h in self._call(f"glob({full})", run) if not _is_temp(h)]
        return sorted(h[len(prefix) :] if h.startswith(prefix) else h for h in hits)

    def delete(self, rel: str) -> None:
        """Delete a file or folder; nothing happens when it is already gone."""
        p = self.path(rel)

        def rm() -> None:
            try:
                self.fs.rm(p, recursive=True)
            except FileNotFoundError:
                pass
            self._fresh(p)

        self._call(f"delete({p})", rm)

    def move(self, rel_src: str, rel_dst: str) -> str:
        """Move a file inside the work directory (a rename locally; copy + delete on object stores)."""
        src, dst = self.path(rel_src), self.path(rel_dst)
        if self.remote:
            self._call(f"move({src})", lambda: self.fs.mv(src, dst))
            self._fresh(src)
            self._fresh(dst)
        else:
            os.makedirs(posixpath.dirname(dst), exist_ok=True)
            os.replace(src, dst)
        return self.uri(rel_dst)

    def remove_stale_temp_files(self, rel_dir: str, older_than_s: float = 3600.0) -> int:
        """Delete ``.tmp-*`` files that a killed writer left in a local folder (only ones older than
        ``older_than_s``, so a live writer's temp file is never touched). Returns how many were removed."""
        if self.remote:
            return 0  # object stores have no temp files: a PUT is all-or-nothing
        folder = self.path(rel_dir)
        if not os.path.isdir(folder):
            return 0
        now, removed = time.time(), 0
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if name.startswith(TEMP_PREFIX) and os.path.isfile(full):
                try:
                    if now - os.stat(full).st_mtime > older_than_s:
                        os.unlink(full)
                        removed += 1
                except FileNotFoundError:
                    pass
        if removed:
            log.info("removed %d stale temporary file(s) in %s", removed, folder)
        return removed

    # ---------------------------------------------------------------- parquet
    def write_parquet(self, rel: str, table: pa.Table | pd.DataFrame) -> str:
        """Write a Parquet file atomically, with page checksums so that damaged bytes are detected on read."""
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", write_page_checksum=True)
        return self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """Read a Parquet file: its bytes in one read (retried on a remote store), then parsed from memory.

        A damaged file (truncated, bad checksum, not Parquet) raises a ``pyarrow`` error from :func:`parse_parquet`.
        """
        return parse_parquet(self.read_bytes(rel), columns)

    # ---------------------------------------------------------------- tables (parquet + duckdb mirror)
    def table_rel(self, name: str) -> str:
        """Where table ``name`` is now: inside its group's current snapshot, else ``tables/<name>.parquet``."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"table names are letters, digits and underscores: {name!r}")
        group = layout.table_group_of(name)
        if group is not None:
            rel = (self._group_pointer(group).get("tables") or {}).get(name)
            if rel:
                return rel
        return layout.table_path(name)

    def _group_pointer(self, group: str) -> dict:
        rel = layout.table_group_pointer(group)
        return self.read_json(rel) if self.exists(rel) else {}

    def has_table(self, name: str) -> bool:
        return self.exists(self.table_rel(name))

    def write_table(self, name: str, df: pd.DataFrame) -> str:
        """Write a table as Parquet (atomic) and mirror it into DuckDB (a grouped table: a new snapshot of its group
        in which only this table changed)."""
        group = layout.table_group_of(name)
        if group is not None and self.exists(layout.table_group_pointer(group)):
            self.write_table_group(group, {name: df})
            return self.uri(self.table_rel(name))
        uri = self.write_parquet(self.table_rel(name), df)
        self._mirror(name, df)
        return uri

    def write_table_group(
        self, group: str, tables: dict[str, pd.DataFrame], files: dict[str, bytes] | None = None
    ) -> str:
        """Replace tables of ``group`` (and files kept with them) all at once: write a new snapshot folder, then
        switch the group's pointer file. Tables of the group not given keep their current snapshot file. Until the
        pointer moves readers see the previous group whole; a failure (a full disk) or a kill leaves it in place.
        Returns the snapshot id. The DuckDB mirror is refreshed after the switch, in one transaction."""
        names = layout.TABLE_GROUPS[group]
        unknown = sorted(set(tables) - set(names))
        if unknown:
            raise ValueError(f"tables {unknown} are not in table group {group!r} {names}")
        current = self._group_pointer(group)
        snapshot = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:12]
        base = f"{layout.table_group_dir(group)}/{snapshot}"
        table_paths = {n: r for n, r in (current.get("tables") or {}).items() if n in names}
        if not current:  # the first snapshot adopts tables written alone before groups existed
            table_paths.update({n: layout.table_path(n) for n in names if self.exists(layout.table_path(n))})
        file_paths = dict(current.get("files") or {})
        for name, df in tables.items():
            table_paths[name] = f"{base}/{name}.parquet"
            self.write_parquet(table_paths[name], df)
        for name, data in (files or {}).items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"snapshot file names are plain names: {name!r}")
            file_paths[name] = f"{base}/{name}"
            self.write_bytes(file_paths[name], data)
        pointer = {"group": group, "snapshot": snapshot, "tables": table_paths, "files": file_paths}
        self.write_json(layout.table_group_pointer(group), pointer)  # the switch
        self._drop_unreferenced_snapshots(group, keep=[pointer, current])
        self._mirror_many({n: df for n, df in tables.items()})
        return snapshot

    def _drop_unreferenced_snapshots(self, group: str, keep: list[dict]) -> None:
        """Delete snapshot folders that neither the new nor the previous pointer references (a reader that read the
        previous pointer a moment ago still finds its files), and tables written alone that the group adopted."""
        prefix = layout.table_group_dir(group) + "/"
        used = {
            rel[len(prefix) :].split("/")[0]
            for p in keep
            for rel in [*(p.get("tables") or {}).values(), *(p.get("files") or {}).values()]
            if rel.startswith(prefix)
        }
        for name in self.listdir(layout.table_group_dir(group)):
            if name not in used:
                self.delete(f"{layout.table_group_dir(group)}/{name}")
        referenced = {rel for p in keep for rel in (p.get("tables") or {}).values()}
        for n in layout.TABLE_GROUPS[group]:
            if layout.table_path(n) not in referenced and self.exists(layout.table_path(n)):
                self.delete(layout.table_path(n))  # a table written alone before groups existed, now replaced

    def read_table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        if not self.has_table(name):
            raise FileNotFoundError(
                f"table {name!r} does not exist in {self.root_uri}; materialise the asset that writes it first"
            )
        return self.read_parquet(self.table_rel(name), columns=columns).to_pandas()

    @contextmanager
    def duckdb(self, read_only: bool = False) -> Iterator[Any]:
        """A short-lived DuckDB connection to the mirror; retries while another process holds the write lock."""
        import duckdb

        os.makedirs(os.path.dirname(os.path.abspath(self.duckdb_path)), exist_ok=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                con = duckdb.connect(self.duckdb_path, read_only=read_only)
                break
            except duckdb.IOException as exc:  # lock held by another process
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            yield con
        finally:
            con.close()

    def _mirror(self, name: str, df: pd.DataFrame) -> None:
        self._mirror_many({name: df})

    def _mirror_many(self, tables: dict[str, pd.DataFrame]) -> None:
        """Replace tables in the DuckDB mirror in one transaction (all or none)."""
        if not tables:
            return
        with self.duckdb() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for name, df in tables.items():
                    con.register("_skurec_df", df)
                    con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _skurec_df')
                    con.unregister("_skurec_df")
                con.execute("COMMIT")
            except BaseException as exc:
                con.execute("ROLLBACK")
                if "No space left" in str(exc) or "disk is full" in str(exc).lower():
                    raise no_space_error(self.duckdb_path, 0) from exc
                raise

    def mirror_parquet_view(self, name: str, glob_rel: str) -> None:
        """Expose Parquet files (e.g. the embedding cache) in DuckDB as a view; local work directories only."""
        if self.remote:
            return
        pattern = self.path(glob_rel).replace("'", "''")
        with self.duckdb() as con:
            if self.glob(glob_rel):
                con.execute(
                    f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{pattern}', union_by_name=true)"
                )
            else:
                con.execute(f'DROP VIEW IF EXISTS "{name}"')


def no_space_error(path: str, n_bytes: int) -> OSError:
    """``OSError(ENOSPC)`` whose message says so, names the file and how much room is left."""
    try:
        free = f"{shutil.disk_usage(os.path.dirname(path) or '.').free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    what = f" ({n_bytes} bytes)" if n_bytes else ""
    return OSError(errno.ENOSPC, f"no space left on device writing {path}{what}, {free}; free space and re-run", path)


def parse_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """Parse Parquet bytes, verifying page checksums where the writer stored them."""
    return pq.read_table(pa.BufferReader(data), columns=columns, page_checksum_verification=True)


def _is_temp(path: str) -> bool:
    """True for a write-in-progress temp file (or anything inside a ``.tmp-*`` folder)."""
    return any(part.startswith(TEMP_PREFIX) for part in path.split("/"))


def _glob_base(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard (the listing that must be fresh)."""
    cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
    return posixpath.dirname(pattern[:cut]) or pattern


def _fsync_dir(path: str) -> None:
    """Make a rename durable (best effort: not every filesystem lets a folder be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_SECRET_QUERY_KEYS = ("signature", "credential", "token", "sig", "secret", "password", "key")


def _secret_query_key(key: str) -> bool:
    return any(s in key.lower() for s in _SECRET_QUERY_KEYS)


def redact_uri(uri: str) -> str:
    """A location safe to log or store: drops ``user:password@`` and secret-looking query parameters
    (pre-signed URL signatures, tokens). Plain paths are returned unchanged."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = [(k, "REDACTED" if _secret_query_key(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


# A URI inside free text: a scheme of two letters or more (not a drive letter), then one slash or more (``Path()``
# turns ``https://`` into ``https:/``), up to a blank or a quote; trailing punctuation is the sentence's, not the URI's.
_URI_IN_TEXT = re.compile(r"(?<![\w.+-])([a-zA-Z][a-zA-Z0-9+.-]+):(/+)([^\s'\"<>`]+?)([.,;:)\]}]*)(?=[\s'\"<>`]|$)")


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with :func:`redact_uri` applied to every URI in it that carries a
    secret (``user:password@``, a secret-looking query parameter); everything else is left as it is."""
    from urllib.parse import parse_qsl, urlsplit

    def redact(match: re.Match) -> str:
        scheme, slashes, rest, tail = match.groups()
        try:
            parts = urlsplit(f"{scheme}://{rest}")
            secret = "@" in parts.netloc or any(_secret_query_key(k) for k, _ in parse_qsl(parts.query, True))
        except ValueError:  # not a URI after all (e.g. an unbalanced "[" in the host)
            return match.group(0)
        if not secret:
            return match.group(0)
        return f"{scheme}:{slashes}{redact_uri(f'{scheme}://{rest}')[len(scheme) + 3 :]}{tail}"

    return _URI_IN_TEXT.sub(redact, text)


def read_uri_bytes(uri: str, max_bytes: int | None = None, storage_options: dict | None = None) -> bytes:
    """Read a local path or fsspec URI, retrying transient errors with backoff (see
    :func:`skurec.store.workspace.retry_transient`). A missing file, a permission problem or a file over ``max_bytes`` raise
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
