"""The Dagster code location: every asset, check, job, sensor and schedule of skurec."""

from __future__ import annotations

import dagster as dg

from skurec_assets import baselines, deploy, edge, embeddings, evaluation, ingest, training
from skurec_assets.executors import executor_from_env
from skurec_assets.jobs import full_rebuild_job
from skurec_assets.schedules import weekly_full_rebuild
from skurec_assets.sensors import automation_sensor, labelled_batch_sensor
from skurec_resources import default_resources

ASSET_MODULES = [ingest, embeddings, training, baselines, evaluation, deploy, edge]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        executor=executor_from_env(),
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[full_rebuild_job],
        sensors=[labelled_batch_sensor, automation_sensor],
        schedules=[weekly_full_rebuild],
        resources=resources or default_resources(),
    )


defs = build_definitions()
