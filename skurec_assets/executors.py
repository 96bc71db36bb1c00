"""The executor of every job, chosen by the environment (``SKUREC_EXECUTOR``): no code change to scale out.

| ``SKUREC_EXECUTOR`` | steps run | needs |
|---|---|---|
| ``in_process`` (default) | all in the run's process (a small machine: torch is imported once) | nothing |
| ``multiprocess`` | each in its own process on the run's machine (the embedding shards in parallel) | nothing |
| ``celery`` | each as a Celery task on whichever worker takes it (a GPU pool embeds, CPU nodes train) | ``pip install -e ".[scale]"``, a broker, workers (docs/scaling.md) |

Celery: the broker and result backend URLs come from ``SKUREC_CELERY_BROKER`` and ``SKUREC_CELERY_BACKEND``
(default ``rpc://``), read when a run starts, so credentials in them stay out of run config and the UI. The
workers are started with dagster-celery's own CLI: ``dagster-celery worker start -A dagster_celery.app -y
deploy/celery.yaml`` (the same two variables). dagster-dask is not offered: its executor plans every step before
the run starts and cannot run the embedding graph's dynamic shard steps.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "SKUREC_EXECUTOR"
CELERY_BROKER_ENV = "SKUREC_CELERY_BROKER"
CELERY_BACKEND_ENV = "SKUREC_CELERY_BACKEND"
CHOICES = ("in_process", "multiprocess", "celery")


def celery_executor_from_env() -> dg.ExecutorDefinition:
    """dagster-celery's executor with the broker/backend taken from the environment at run time."""
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:  # the optional extra is not installed
        raise ImportError(
            f'{EXECUTOR_ENV}=celery needs dagster-celery: pip install -e ".[scale]" (see docs/scaling.md)'
        ) from exc
    if not os.environ.get(CELERY_BROKER_ENV):
        raise ValueError(f"{EXECUTOR_ENV}=celery needs {CELERY_BROKER_ENV} (e.g. redis://broker:6379/0)")
    config: dict = {"broker": {"env": CELERY_BROKER_ENV}}
    if os.environ.get(CELERY_BACKEND_ENV):
        config["backend"] = {"env": CELERY_BACKEND_ENV}
    return celery_executor.configured(config, name="celery")


def executor_from_env() -> dg.ExecutorDefinition:
    """``SKUREC_EXECUTOR``: ``in_process`` (default: on a small machine every step in one process avoids re-importing
    torch per step), ``multiprocess`` (one process per step; ``max_concurrent`` in the run config's ``execution``)
    or ``celery`` (every step a Celery task, see :func:`celery_executor_from_env` and docs/scaling.md)."""
    choice = os.environ.get(EXECUTOR_ENV, "in_process").strip() or "in_process"
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "celery":
        return celery_executor_from_env()
    raise ValueError(f"{EXECUTOR_ENV} must be one of {', '.join(map(repr, CHOICES))}, not {choice!r}")
