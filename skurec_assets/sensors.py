"""Sensors: the drop-location watcher that turns labelled batches into partitions, and the automation sensor.

1. ``labelled_batch_sensor`` scans the drop location every ``$SKUREC_SENSOR_INTERVAL_S`` (30 s). A complete, valid
   batch whose content hash is new is registered as a partition of ``labelled_batches`` (visible in the UI) and one
   run of ``labelled_batch[<name>]`` is requested. Duplicates (same content hash under another name) and malformed
   batches are skipped and reported (sensor log, the ``batch_inbox`` table, the tick's skip reason); they never
   block other batches.
2. Declarative automation (``skurec_automation``) then requests only what is downstream of the new partition:
   ``audited_catalogue`` -> ``image_embeddings`` (which embeds just the new images) -> ``candidate_model`` (the
   new-SKU fast path) -> ``deployed_model`` (behind the blocking gate checks). The training assets carry no
   automation condition: a batch never retrains them (that is the ``full_rebuild`` job, see ``schedules.py``).
"""

import json
import os

import dagster as dg

from skurec.catalogue.batches import DUPLICATE, INCOMPLETE, NEW, REJECTED, BatchError, triage_drop_location
from skurec.catalogue.ingest import ingested_hashes
from skurec_assets.ingest import BATCH_PARTITIONS, labelled_batch
from skurec_resources import LabellingLoopResource, StorageResource

SENSOR_INTERVAL_S = int(os.environ.get("SKUREC_SENSOR_INTERVAL_S", "30"))
INBOX_TABLE = "batch_inbox"


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
