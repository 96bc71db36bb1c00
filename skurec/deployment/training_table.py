"""The training table of a model: the exact ``(image_id, sku_id, split, added_by)`` rows that built it, and its hashes.

``image_ids_sha256`` is the one definition of "which images trained this" used by the training manifest, the model
card and the publication checks; ``training_table_sha256`` fingerprints labels and splits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLE_COLUMNS = ["image_id", "sku_id", "split", "added_by"]


class LineageError(RuntimeError):
    """A model cannot be published or judged because its inputs are inconsistent (message says which and why)."""


# ------------------------------------------------------------------------------------------------ hashes / code
def image_ids_sha256(image_ids: Sequence[str]) -> str:
    """SHA-256 of a set of image ids (sorted, newline-joined): the ``train_image_ids_sha256`` of the manifest."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode()).hexdigest()


def training_table_sha256(table: pd.DataFrame) -> str:
    """Order-free SHA-256 of an (image_id, sku_id, split) table: identical labels and splits <=> identical hash."""
    rows = sorted(f"{r.image_id}\t{r.sku_id}\t{r.split}" for r in table[["image_id", "sku_id", "split"]].itertuples())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def training_table(data: Any) -> pd.DataFrame:
    """The ``(image_id, sku_id, split)`` rows of a :class:`~skurec.embeddings.training_data.TrainingData` (train, val, test)."""
    parts = [
        pd.DataFrame({"image_id": list(s.image_ids), "sku_id": [str(v) for v in s.y], "split": name})
        for name, s in (("train", data.train), ("val", data.val), ("test", data.test))
    ]
    return pd.concat(parts, ignore_index=True)[["image_id", "sku_id", "split"]]


def table_to_parquet(table: pd.DataFrame) -> bytes:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise LineageError(f"training table lacks columns {missing}")
    t = pa.Table.from_pandas(table[TABLE_COLUMNS].astype(str).reset_index(drop=True), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


def table_from_parquet(data: bytes) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(data)).to_pandas()


# ------------------------------------------------------------------------------------------------ CSV export
#: a cell starting with one of these is a formula to Excel / LibreOffice / Google Sheets (CSV injection)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with ``= + - @``, tab or carriage return gets a
    leading ``'`` (OWASP's rule for CSV injection; the apostrophe is how spreadsheets mark "text, not a formula").
    Other values are returned unchanged. Every CSV skurec writes goes through this (docs/security.md)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` as CSV (Python's ``csv`` module, header first) with every cell neutralised."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([neutralise_cell(str(c)) for c in table.columns])
        for row in table.itertuples(index=False, name=None):
            writer.writerow([neutralise_cell("" if v is None else str(v)) for v in row])
