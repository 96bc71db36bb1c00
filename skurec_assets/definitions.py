"""The Dagster code location: every asset, check, job, sensor and schedule of skurec."""

from __future__ import annotations

import os

import dagster as dg

from skurec_assets import deploy, embeddings, evaluation, ingest, loop, training
from skurec_resources import default_resources

ASSET_MODULES = [ingest, embeddings, training, evaluation, loop, deploy]

all_assets = dg.load_assets_from_modules(ASSET_MODULES)
all_checks = dg.load_asset_checks_from_modules(ASSET_MODULES)

pipeline_job = dg.define_asset_job(
    "skurec_pipeline",
    # Everything except the per-batch partitions (those are materialised by the labelled_batch_sensor).
    selection=loop.REBUILD_SELECTION,
    description="Audit the catalogue, embed it, and build, evaluate and gate the models: the whole graph.",
)


def executor_from_env() -> dg.ExecutorDefinition:
    """``SKUREC_EXECUTOR``: ``in_process`` (default: on a small machine every step in one process avoids re-importing
    torch per step) or ``multiprocess`` (one process per step). On a cluster, the run launcher / executor configured
    in dagster.yaml (Celery, Kubernetes) takes over; see docs/scaling.md."""
    choice = os.environ.get("SKUREC_EXECUTOR", "in_process")
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    raise ValueError(f"SKUREC_EXECUTOR must be 'in_process' or 'multiprocess', not {choice!r}")


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    return dg.Definitions(
        executor=executor_from_env(),
        assets=all_assets,
        asset_checks=all_checks,
        jobs=[pipeline_job, loop.full_rebuild_job],
        sensors=[loop.labelled_batch_sensor, loop.automation_sensor],
        schedules=[loop.weekly_full_rebuild],
        resources=resources or default_resources(),
    )


defs = build_definitions()
