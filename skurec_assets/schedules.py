"""The weekly full rebuild: re-clusters superclasses and retrains both heads when the catalogue, the encoder or the
training code changed since the last full training (:func:`skurec.store.training_artifacts.rebuild_needed`)."""

import datetime
import os

import dagster as dg

from skurec.store.training_artifacts import rebuild_needed
from skurec_assets.jobs import full_rebuild_job
from skurec_resources import StorageResource

DEFAULT_REBUILD_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
REBUILD_CRON = os.environ.get("SKUREC_REBUILD_CRON") or DEFAULT_REBUILD_CRON


@dg.schedule(
    name="weekly_full_rebuild",
    cron_schedule=REBUILD_CRON,
    job=full_rebuild_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-clusters superclasses and retrains both heads on the cron $SKUREC_REBUILD_CRON (default weekly) "
    "when the catalogue, encoder or training code changed since the last full training.",
)
def weekly_full_rebuild(context: dg.ScheduleEvaluationContext, storage: StorageResource):
    needed, why = rebuild_needed(storage.workspace())
    if not needed:
        return dg.SkipReason(why)
    try:
        stamp = context.scheduled_execution_time.isoformat()
    except Exception:  # evaluated by hand (UI "test schedule", tests): no tick time
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return dg.RunRequest(run_key=f"rebuild:{stamp}", tags={"skurec/trigger": "schedule", "skurec/reason": why[:200]})
