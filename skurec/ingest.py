"""Rows of labelling batches that were ingested into the work directory (see the labelling-loop assets).

An ingested batch is stored as ``<workdir>/batches/<batch_id>/rows.parquet`` (raw import rows, columns
``skurec.catalogue.RAW_COLUMNS``); the audited catalogue is always the base catalogue plus every ingested batch.
"""

from __future__ import annotations

import pandas as pd

from skurec.catalogue import RAW_COLUMNS, normalise_rows
from skurec.storage import Workspace

BATCHES_DIR = "batches"


def batch_rows_rel(batch_id: str) -> str:
    return f"{BATCHES_DIR}/{batch_id}/rows.parquet"


def ingested_batch_ids(ws: Workspace) -> list[str]:
    return [p.split("/")[1] for p in ws.glob(f"{BATCHES_DIR}/*/rows.parquet")]


def ingested_batch_rows(ws: Workspace) -> pd.DataFrame:
    frames = [ws.read_parquet(batch_rows_rel(b)).to_pandas() for b in ingested_batch_ids(ws)]
    if not frames:
        return normalise_rows(pd.DataFrame(columns=RAW_COLUMNS))
    return normalise_rows(pd.concat(frames, ignore_index=True)[RAW_COLUMNS])
