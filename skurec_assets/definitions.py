"""The Dagster code location: every asset, check, job, sensor and schedule of skurec."""

from __future__ import annotations

import dagster as dg

from skurec_assets import embeddings, ingest, training
from skurec_resources import default_resources

ASSET_MODULES = [ingest, embeddings, training]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)

pipeline_job = dg.define_asset_job(
    "skurec_pipeline",
    selection=dg.AssetSelection.all(),
    description="Audit the catalogue, embed it, and build, evaluate and gate the models: the whole graph.",
)


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[pipeline_job],
        resources=resources or default_resources(),
    )


defs = build_definitions()
