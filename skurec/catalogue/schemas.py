"""Pandera schemas for every table skurec writes; enforced before each write."""

from __future__ import annotations

import pandera.pandas as pa

from skurec.catalogue.importer import VALID_SPLITS

_sha = r"^[0-9a-f]{64}$"

ImagesSchema = pa.DataFrameSchema(
    {
        "image_id": pa.Column(str, pa.Check.str_matches(_sha), unique=True),
        "sku_id": pa.Column(str, pa.Check.str_length(min_value=1)),
        "sku_name": pa.Column(str, nullable=True),
        "group_id": pa.Column(str, nullable=True),
        "batch_id": pa.Column(str, nullable=True),
        "image_uri": pa.Column(str),
        "source": pa.Column(str),
        "n_bytes": pa.Column(int, pa.Check.gt(0)),
        "width": pa.Column(int, pa.Check.gt(0)),
        "height": pa.Column(int, pa.Check.gt(0)),
        "split": pa.Column(str, pa.Check.isin(list(VALID_SPLITS))),
        "split_pinned": pa.Column(bool),
        "active": pa.Column(bool),
    },
    strict=True,
    coerce=True,
    name="images",
)

QuarantineSchema = pa.DataFrameSchema(
    {
        "source": pa.Column(str),
        "row_number": pa.Column(int),
        "image_uri": pa.Column(str, nullable=True),
        "sku_id": pa.Column(str, nullable=True),
        "image_id": pa.Column(str, nullable=True),
        "reason": pa.Column(str, pa.Check.str_length(min_value=1)),
        "detail": pa.Column(str, nullable=True),
    },
    strict=True,
    coerce=True,
    name="quarantine",
)

ClassesSchema = pa.DataFrameSchema(
    {
        "sku_id": pa.Column(str, unique=True),
        "sku_name": pa.Column(str, nullable=True),
        "group_id": pa.Column(str, nullable=True),
        "n_images": pa.Column(int, pa.Check.ge(0)),
        "n_train": pa.Column(int, pa.Check.ge(0)),
        "n_val": pa.Column(int, pa.Check.ge(0)),
        "n_test": pa.Column(int, pa.Check.ge(0)),
        "status": pa.Column(str, pa.Check.isin(["active", "below_min_samples"])),
        # head: >= min_samples labelled images; tail: >= min_shots (both trained, status active); untrained: fewer
        "tier": pa.Column(str, pa.Check.isin(["head", "tail", "untrained"])),
    },
    strict=True,
    coerce=True,
    name="classes",
)
