"""Embeddings: every accepted image embedded once with the frozen encoder and cached as Parquet."""


import dagster as dg

from skurec.datasets import CURRENT_ENCODER
from skurec.embedding_cache import EmbeddingCache
from skurec.encoders import EncoderCheckpointError, EncoderUnavailableError
from skurec_assets.ingest import audited_catalogue
from skurec_assets.metadata import throttled_progress
from skurec_resources import EncoderResource, StorageResource

EMBED = "embed"


@dg.asset(
    group_name=EMBED,
    deps=[audited_catalogue],
    automation_condition=dg.AutomationCondition.eager(),
    code_version="embed-v1",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL),
    kinds={"pytorch", "parquet"},
    description=(
        "L2-normalised float32 embeddings of every accepted image from the frozen encoder, cached as Parquet keyed "
        "by (image_id, encoder_id): an image already embedded with the same encoder is never embedded again."
    ),
)
def image_embeddings(
    context: dg.AssetExecutionContext, storage: StorageResource, encoder: EncoderResource
) -> dg.MaterializeResult:
    ws = storage.workspace()
    try:
        enc = encoder.load()
    except (EncoderUnavailableError, EncoderCheckpointError) as exc:
        # A configuration problem, not a transient one: fail at once with the remedy instead of retrying.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    identity = enc.identity()
    if not identity.get("pretrained", False):
        context.log.warning(f"encoder {enc.name} has RANDOM weights: its features are for tests only")
    images = ws.read_table("images", columns=["image_id", "image_uri"])
    cache = EmbeddingCache(ws)
    progress = throttled_progress(context, f"embedded {{done}}/{{total}} new images with {enc.encoder_id}")

    stats = cache.update(
        enc,
        images,
        batch_size=encoder.batch_size,
        num_workers=encoder.num_workers,
        progress=progress,
        storage_options=storage.storage_options(),
    )
    context.log.info(
        f"{stats.n_computed} images embedded, {stats.n_cached} reused from the cache, {len(stats.failures)} failed"
    )
    for image_id, reason, detail in stats.failures[:20]:
        context.log.warning(f"could not embed {image_id}: {reason} ({detail})")
    ws.write_json(f"{cache.rel_dir(enc.encoder_id)}/encoder.json", identity)
    ws.write_json(CURRENT_ENCODER, identity)
    ws.write_json("reports/embedding_failures.json", [list(f) for f in stats.failures])
    ws.mirror_parquet_view("embeddings", f"{cache.rel_dir(enc.encoder_id)}/part-*.parquet")
    return dg.MaterializeResult(
        metadata={
            **stats.as_metadata(),
            "encoder": dg.MetadataValue.json(identity),
            "weights_sha256": identity.get("weights_sha256", ""),
            "pretrained": bool(identity.get("pretrained", False)),
            "device": str(enc.device),
            "cache_dir": dg.MetadataValue.path(ws.uri(cache.rel_dir(enc.encoder_id))),
        },
        data_version=dg.DataVersion(f"{enc.encoder_id}:{stats.n_requested}:{stats.n_requested - len(stats.failures)}"),
    )
