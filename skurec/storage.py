"""The work directory: Parquet tables, JSON/bytes artifacts and a DuckDB mirror, on local disk or any fsspec URI.

Parquet files are the source of truth. When the work directory is local, every table is also mirrored into one
DuckDB file (``<workdir>/skurec.duckdb``) so an analyst can query the catalogue with SQL; for a remote work
directory (``s3://bucket/prefix``) the DuckDB mirror lives in a local path given by ``duckdb_path``.

All writes are atomic: a reader never sees a half-written file. Locally a file is written beside its target and
renamed into place; object stores (S3) make a PUT visible only once it is complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

TABLES_DIR = "tables"


def is_remote(uri: str) -> bool:
    protocol = fsspec.utils.get_protocol(uri)
    return protocol not in ("file", "local")


def filesystem_for(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path-without-protocol) for a local path or an fsspec URI. Credentials come from the environment
    (or ``storage_options``); they are never written anywhere by skurec."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


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
            duckdb_path = os.path.join(self.root, "skurec.duckdb")
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
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write ``data`` to ``rel``; returns the file's URI."""
        target = self.path(rel)
        parent = posixpath.dirname(target)
        if self.remote:
            with self.fs.open(target, "wb") as f:  # an object PUT is all-or-nothing
                f.write(data)
        else:
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(target)}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        return self.uri(rel)

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts).decode("utf-8"))

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly inside a folder of the work directory; [] when it does not exist."""
        p = self.path(*parts)
        if not self.fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in self.fs.ls(p, detail=False))

    def glob(self, pattern: str) -> list[str]:
        """Relative paths matching a glob inside the work directory, sorted."""
        hits = self.fs.glob(self.path(pattern))
        prefix = self.root.rstrip("/") + "/"
        return sorted(h[len(prefix):] if h.startswith(prefix) else h for h in hits)

    def delete(self, rel: str) -> None:
        p = self.path(rel)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    # ---------------------------------------------------------------- parquet
    def write_parquet(self, rel: str, table: pa.Table | pd.DataFrame) -> str:
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return self.write_bytes(rel, buf.getvalue())

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        with self.fs.open(self.path(rel), "rb") as f:
            return pq.read_table(f, columns=columns)

    # ---------------------------------------------------------------- tables (parquet + duckdb mirror)
    def table_rel(self, name: str) -> str:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"table names are letters, digits and underscores: {name!r}")
        return f"{TABLES_DIR}/{name}.parquet"

    def has_table(self, name: str) -> bool:
        return self.exists(self.table_rel(name))

    def write_table(self, name: str, df: pd.DataFrame) -> str:
        """Write a table as Parquet (atomic) and mirror it into DuckDB."""
        uri = self.write_parquet(self.table_rel(name), df)
        self._mirror(name, df)
        return uri

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
        with self.duckdb() as con:
            con.register("_skurec_df", df)
            con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _skurec_df')
            con.unregister("_skurec_df")

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
