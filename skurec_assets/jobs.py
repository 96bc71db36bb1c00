"""The one job: the full rebuild (everything but the per-batch partitions, which the batch sensor materialises)."""

import dagster as dg

from skurec_assets.ingest import labelled_batch

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
