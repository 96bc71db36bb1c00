"""The labelling loop in Dagster: batches as dynamic partitions, the batch sensor, automation and the rebuild schedule.

Flow (everything is Dagster's own machinery; nothing polls or schedules by hand):

1. ``labelled_batch_sensor`` scans the drop location every 30 s. A complete, valid batch whose content hash is new is
   registered as a partition of ``labelled_batches`` (visible in the UI) and one run of ``labelled_batch[<name>]``
   is requested. Duplicates (same content hash under another name) and malformed batches are skipped and reported
   (sensor log, the ``batch_inbox`` table, the tick's skip reason); they never block other batches.
2. Declarative automation (``skurec_automation`` sensor) then requests only what is downstream of the new
   partition: ``audited_catalogue`` -> ``image_embeddings`` (which embeds just the new images) -> ``candidate_model``
   (the new-SKU fast path) -> ``deployed_model`` (behind the blocking gate checks). The training assets (superclasses,
   coarse and fine heads) carry no automation condition: a batch never retrains them.
3. The full rebuild (re-clustering superclasses, retraining both heads) is the ``full_rebuild`` job: launched from
   the UI on demand and by the ``weekly_full_rebuild`` schedule (cron ``$SKUREC_REBUILD_CRON``, default Monday 03:00
   UTC), which skips when the catalogue, encoder and training code did not change since the last trained model.
"""


import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import dagster as dg

from skurec.batches import DUPLICATE, INCOMPLETE, NEW, REJECTED, BatchError, find_batch, inspect_batch, triage_drop_location
from skurec.ingest import batch_record_rel, ingest_batch, ingested_hashes
from skurec_resources import LabellingLoopResource, StorageResource

INGEST = "ingest"
BATCH_PARTITIONS = dg.DynamicPartitionsDefinition(name="labelled_batches")
DEFAULT_REBUILD_CRON = "0 3 * * 1"  # Mondays 03:00 UTC
REBUILD_CRON = os.environ.get("SKUREC_REBUILD_CRON") or DEFAULT_REBUILD_CRON
SENSOR_INTERVAL_S = int(os.environ.get("SKUREC_SENSOR_INTERVAL_S", "30"))
INBOX_TABLE = "batch_inbox"



@dg.asset(
    partitions_def=BATCH_PARTITIONS,
    group_name=INGEST,
    code_version="batch-v1",
    kinds={"parquet"},
    description=(
        "One labelled batch from the drop location (a partition per batch folder), validated and copied into the work "
        "directory (batches/<name>/): images, raw rows and an ingestion record keyed by the batch's content hash. "
        "audited_catalogue unions every ingested batch with the base catalogue."
    ),
)
def labelled_batch(
    context: dg.AssetExecutionContext, storage: StorageResource, loop: LabellingLoopResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    name = context.partition_key
    if ws.exists(batch_record_rel(name)):
        record = ws.read_json(batch_record_rel(name))
        context.log.info(f"batch {name} is already ingested (content {record['content_hash'][:12]}); nothing to do")
        return _batch_result("ingested", record, note="already ingested earlier")
    try:
        batch = find_batch(loop.drop_location, name, storage.storage_options())
    except BatchError as exc:
        raise dg.Failure(description=f"{exc}; was the folder moved after it was registered?") from exc
    insp = inspect_batch(batch, storage.storage_options())
    if not insp.ok:
        # Recorded, not raised: a failed partition would hold back every later batch (automation waits for it).
        context.log.error(f"batch {name} rejected: {insp.reason}")
        return dg.MaterializeResult(
            metadata={"status": "rejected", "reason": insp.reason or "", "batch_uri": dg.MetadataValue.path(batch.uri)},
            data_version=dg.DataVersion(f"rejected:{name}"),
        )
    other = ingested_hashes(ws).get(insp.content_hash or "")
    if other is not None and other != name:
        context.log.warning(f"batch {name} has the same content as {other}: skipped")
        return dg.MaterializeResult(
            metadata={"status": "duplicate", "duplicate_of": other, "content_hash": insp.content_hash or ""},
            data_version=dg.DataVersion(f"duplicate:{insp.content_hash}"),
        )
    known = set()
    if ws.has_table("classes"):
        known = set(ws.read_table("classes", columns=["sku_id"])["sku_id"])
    record = ingest_batch(ws, insp)
    new_skus = sorted(set(insp.skus) - known)
    context.log.info(f"ingested batch {name}: {insp.n_images} images, {len(insp.skus)} SKUs ({len(new_skus)} new)")
    return _batch_result("ingested", record, new_skus=new_skus)


def _batch_result(status: str, record: dict, new_skus: Sequence[str] = (), note: str = "") -> dg.MaterializeResult:
    return dg.MaterializeResult(
        metadata={
            "status": status,
            "content_hash": record["content_hash"],
            "n_images": record["n_images"],
            "n_rows": record["n_rows"],
            "skus": dg.MetadataValue.json(record["skus"][:500]),
            "new_skus": dg.MetadataValue.json(list(new_skus)),
            "source_uri": dg.MetadataValue.path(record["source_uri"]),
            "ingested_at": record["ingested_at"],
            "note": note,
        },
        data_version=dg.DataVersion(record["content_hash"]),
    )


@dg.sensor(
    name="labelled_batch_sensor",
    target=[labelled_batch],
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Watches the drop location for complete labelled batches (manifest present). A new batch becomes a partition "
        "of labelled_batches and one ingestion run is requested; duplicates (same content hash) and malformed "
        "batches are skipped and reported in the log, the tick and the batch_inbox table."
    ),
)
def labelled_batch_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource, loop: LabellingLoopResource
) -> dg.SensorResult | dg.SkipReason:
    ws = storage.workspace()
    state = json.loads(context.cursor) if context.cursor else {}
    try:
        triage = triage_drop_location(loop.drop_location, state, ingested_hashes(ws), storage.storage_options())
    except BatchError as exc:
        return dg.SkipReason(str(exc))
    for d in triage.changed:
        if d.status == REJECTED:
            context.log.error(f"batch {d.name} rejected: {d.reason}")
        elif d.status == DUPLICATE:
            context.log.warning(f"batch {d.name} skipped: {d.reason}")
        elif d.status == INCOMPLETE:
            context.log.info(f"batch {d.name} is incomplete (no manifest yet); will look again")
        elif d.status == NEW:
            context.log.info(f"new batch {d.name}: {d.n_images} images, SKUs {d.skus[:10]}")
    if triage.changed or triage.state != state:
        ws.write_table(INBOX_TABLE, triage.inbox_frame())
    new = [d for d in triage.new]
    cursor = json.dumps(triage.state, sort_keys=True)
    if not new:
        reported = [f"{d.name}: {d.status} ({d.reason})" for d in triage.changed if d.status in (REJECTED, DUPLICATE)]
        skip = "no new batch" + (f"; skipped {'; '.join(reported)}" if reported else "")
        return dg.SensorResult(skip_reason=dg.SkipReason(skip[:1000]), cursor=cursor)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=d.name,
                run_key=f"{d.name}:{d.content_hash}",
                tags={"skurec/batch": d.name, "skurec/content_hash": d.content_hash or ""},
            )
            for d in new
        ],
        dynamic_partitions_requests=[BATCH_PARTITIONS.build_add_request([d.name for d in new])],
        cursor=cursor,
    )


# ------------------------------------------------------------------------------------------------ automation
# The catalogue, embeddings, candidate and deployment assets are AutomationCondition.eager(): materialised when an
# upstream asset (partition) was updated, once nothing upstream is missing or in progress. Eager chains within one
# tick, so a new batch flows catalogue -> embeddings -> candidate -> deployment in one run. Training assets have no
# condition: only the full rebuild retrains.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "skurec_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    description="Evaluates the assets' automation conditions: new batches flow to the catalogue, embeddings, candidate and deployment.",
)


# ------------------------------------------------------------------------------------------------ full rebuild
REBUILD_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.assets(labelled_batch)

full_rebuild_job = dg.define_asset_job(
    "full_rebuild",
    selection=REBUILD_SELECTION,
    description=(
        "Full rebuild: re-audit the catalogue (with every ingested batch), embed what is new, re-derive superclasses, "
        "retrain the coarse and fine heads and baselines, evaluate, then publish the candidate behind the deployment "
        "gate. Launch it from the UI any time; the weekly_full_rebuild schedule runs it on $SKUREC_REBUILD_CRON."
    ),
    tags={"skurec/trigger": "full_rebuild"},
)


def rebuild_needed(ws) -> tuple[bool, str]:
    """Whether a scheduled rebuild has anything to do: catalogue, encoder or training code changed since the last
    trained model (or there is none)."""
    manifest_rel = "artifacts/training_manifest.json"
    if not ws.exists(manifest_rel):
        return True, "no trained model yet"
    manifest = ws.read_json(manifest_rel)
    summary = ws.read_json("reports/audit_summary.json") if ws.exists("reports/audit_summary.json") else {}
    if summary.get("catalogue_snapshot") != manifest.get("catalogue_snapshot"):
        return True, "the catalogue changed since the last full training (new batches were added by the fast path)"
    if ws.exists("embeddings/current_encoder.json"):
        enc = ws.read_json("embeddings/current_encoder.json").get("encoder_id")
        if enc != (manifest.get("encoder") or {}).get("encoder_id"):
            return True, f"the encoder changed to {enc}"
    try:
        from skurec_assets.training import CODE_VERSION

        if manifest.get("code_version") != CODE_VERSION:
            return True, f"training code version changed ({manifest.get('code_version')} -> {CODE_VERSION})"
    except ImportError:
        pass
    return False, "catalogue, encoder and training code unchanged since the last full training"


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


# ------------------------------------------------------------------------------------------------ in-process loop
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
) -> LoopPass:
    """Evaluate the batch sensor, register its partitions, run its ingestion runs, then evaluate the automation
    conditions tick after tick and run what they request, until nothing more is requested. Without an
    ``automation_cursor`` the daemon's first tick is played first (it sets the baseline and runs what is missing).

    This is what ``dagster dev``'s daemon does continuously; ``skurec demo --add-batch`` and the tests call it to do
    it once, synchronously, against a real instance (so materialisation history and data versions are real).
    """
    job = defs.resolve_implicit_global_asset_job_def()
    out = LoopPass(sensor_result=None, sensor_cursor=sensor_cursor)
    if automation_cursor is None:
        # No automation history yet: the daemon's first tick (it takes the baseline, so the batch's updates are
        # seen as new afterwards, and requests whatever is missing).
        automation_cursor = _automation_ticks(defs, instance, job, None, max_ticks, raise_on_error, out)
    ctx = dg.build_sensor_context(instance=instance, cursor=sensor_cursor, resources=dict(defs.resources or {}),
                                  definitions=defs)
    sensor_result = defs.resolve_sensor_def(labelled_batch_sensor.name)(ctx)
    out.sensor_result = sensor_result
    if isinstance(sensor_result, dg.SensorResult):
        out.sensor_cursor = sensor_result.cursor
        for req in sensor_result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        for rr in sensor_result.run_requests or []:
            out.batch_runs[rr.partition_key] = job.execute_in_process(
                instance=instance, partition_key=rr.partition_key, asset_selection=[labelled_batch.key],
                tags=dict(rr.tags), raise_on_error=raise_on_error,
            )
    out.automation_cursor = _automation_ticks(defs, instance, job, automation_cursor, max_ticks, raise_on_error, out)
    return out


def _automation_ticks(defs, instance, job, cursor, max_ticks: int, raise_on_error: bool, out: LoopPass):
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
        result = job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=raise_on_error,
                                        tags={"skurec/trigger": "automation"})
        out.automation_runs.append(([k.to_user_string() for k in keys], result))
    return cursor
