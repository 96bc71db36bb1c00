"""The labelling loop, once, synchronously, in this process: what ``dagster dev``'s daemon does continuously (evaluate
the batch sensor, run its ingestion runs, then evaluate the automation conditions tick after tick). ``skurec demo
--add-batch`` and the tests use it against a real instance, so materialisation history and data versions are real.
Public Dagster API only.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from skurec.layout import LOOP_CURSORS
from skurec_assets.ingest import labelled_batch
from skurec_assets.sensors import labelled_batch_sensor


@dataclass
class LoopPass:
    """What one in-process pass of the loop did (the same steps the Dagster daemon performs in the background)."""

    sensor_result: object
    batch_runs: dict = field(default_factory=dict)  # partition key -> ExecuteInProcessResult
    automation_runs: list = field(default_factory=list)  # [(sorted asset keys, ExecuteInProcessResult)]
    sensor_cursor: str | None = None
    automation_cursor: object = None

    @property
    def success(self) -> bool:
        runs = list(self.batch_runs.values()) + [r for _, r in self.automation_runs]
        return all(r.success for r in runs)

    def materialized(self) -> list[str]:
        out = []
        for r in list(self.batch_runs.values()) + [r for _, r in self.automation_runs]:
            out += [e.asset_key.to_user_string() for e in r.get_asset_materialization_events()]
        return out


def run_loop_in_process(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sensor_cursor: str | None = None,
    automation_cursor: object = None,
    max_ticks: int = 5,
    raise_on_error: bool = False,
    run_config: dict | None = None,
    wrap_job=None,
) -> LoopPass:
    """Evaluate the batch sensor, register its partitions, run its ingestion runs, then evaluate the automation
    conditions tick after tick and run what they request, until nothing more is requested. Without an
    ``automation_cursor`` the daemon's first tick is played first (it sets the baseline and runs what is missing).

    This is what ``dagster dev``'s daemon does continuously; ``skurec demo --add-batch`` and the tests call it to do
    it once, synchronously, against a real instance (so materialisation history and data versions are real).
    ``run_config`` (e.g. the console logger's level) applies to every run (``wrap_job`` adapts the job first); each run is tagged with this process's
    pid and host (:func:`skurec_assets.recovery.process_tags`) so that a later start can fail it if we are killed.
    """
    from skurec_assets.recovery import process_tags

    extra = {"run_config": run_config, "tags": process_tags()}
    job = defs.resolve_implicit_global_asset_job_def()
    if wrap_job is not None:  # e.g. the command line's console logger
        job = wrap_job(job)
    out = LoopPass(sensor_result=None, sensor_cursor=sensor_cursor)
    if automation_cursor is None:
        # No automation history yet: the daemon's first tick (it takes the baseline, so the batch's updates are
        # seen as new afterwards, and requests whatever is missing).
        automation_cursor = _automation_ticks(defs, instance, job, None, max_ticks, raise_on_error, out, extra)
    ctx = dg.build_sensor_context(
        instance=instance, cursor=sensor_cursor, resources=dict(defs.resources or {}), definitions=defs
    )
    sensor_result = defs.resolve_sensor_def(labelled_batch_sensor.name)(ctx)
    out.sensor_result = sensor_result
    if isinstance(sensor_result, dg.SensorResult):
        out.sensor_cursor = sensor_result.cursor
        for req in sensor_result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        for rr in sensor_result.run_requests or []:
            out.batch_runs[rr.partition_key] = job.execute_in_process(
                instance=instance,
                partition_key=rr.partition_key,
                asset_selection=[labelled_batch.key],
                tags={**dict(rr.tags), **extra["tags"]},
                raise_on_error=raise_on_error,
                run_config=run_config,
            )
    out.automation_cursor = _automation_ticks(
        defs, instance, job, automation_cursor, max_ticks, raise_on_error, out, extra
    )
    return out


def _automation_ticks(defs, instance, job, cursor, max_ticks: int, raise_on_error: bool, out: LoopPass, extra: dict):
    """Evaluate the automation conditions and run what they request, tick after tick, until nothing is requested."""
    for _ in range(max_ticks):
        evaluation = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        cursor = evaluation.cursor
        keys = sorted(
            {r.key for r in evaluation.results if isinstance(r.key, dg.AssetKey) and r.true_subset.size},
            key=lambda k: k.to_user_string(),
        )
        if not keys:
            break
        result = job.execute_in_process(
            instance=instance,
            asset_selection=keys,
            raise_on_error=raise_on_error,
            tags={"skurec/trigger": "automation", **extra["tags"]},
            run_config=extra["run_config"],
        )
        out.automation_runs.append(([k.to_user_string() for k in keys], result))
    return cursor


def load_cursors(dagster_home: str) -> tuple[str | None, object]:
    """The batch-sensor and automation cursors a previous in-process pass left in ``dagster_home``."""
    path = Path(dagster_home) / LOOP_CURSORS
    if not path.exists():
        return None, None
    doc = json.loads(path.read_text())
    auto = dg.deserialize_value(doc["automation"]) if doc.get("automation") else None
    return doc.get("sensor"), auto


def save_cursors(dagster_home: str, sensor_cursor: str | None, automation_cursor: object) -> None:
    path = Path(dagster_home) / LOOP_CURSORS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "sensor": sensor_cursor,
                "automation": dg.serialize_value(automation_cursor) if automation_cursor is not None else None,
            }
        )
    )
    os.replace(tmp, path)
