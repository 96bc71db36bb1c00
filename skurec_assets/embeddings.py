"""Embeddings: every accepted image embedded once with the frozen encoder and cached as Parquet, fanned out by shard.

``image_embeddings`` is ONE asset computed by a small graph, so any executor spreads the work:

1. ``plan_embedding_shards`` verifies the cache and splits the catalogue into ``n_shards`` hash shards of the image
   id (:func:`skurec.embeddings.cache.shard_of`); it emits one dynamic output per shard that has images without a
   cached vector, and none for the others (a batch of k new images runs only the shards those k images fall in);
2. ``embed_shard`` (mapped over those outputs, one step per shard) embeds that shard's missing images into the
   shard's own cache parts. With the multiprocess or Celery executor the shard steps run in parallel on different
   processes or machines; each uses its own GPU (:func:`skurec.embeddings.encode.worker_device`);
3. ``combine_embedding_shards`` checks that the union of the parts covers every image (embedded or reported as
   failed), writes the encoder identity and the failure report, and materialises the asset with the totals.

Downstream assets read the union of the parts (``EmbeddingCache.load``) and do not know about shards. The steps hand
each other only small JSON documents, stored in the work directory (never pickled, visible to every machine).

Train-time augmented views (``SKUREC_ENCODER_TRAIN_VIEWS`` = K >= 1): each active ``train`` image also gets views
``j = 0..K-1`` (:func:`skurec.encoders.views.train_view`, then the encoder's ordinary preprocessing), embedded in the
image's own shard step under :func:`~skurec.encoders.views.view_encoder_id` (one cache folder per view, missing rows
only, like the plain vectors). The current-encoder document records K, the seed and the view ids; K = 0 changes
nothing (same plan, documents, cache and data version as without the option).
"""

import os
import socket
import warnings
from typing import Optional

import dagster as dg

from skurec.embeddings.cache import EmbeddingCache
from skurec.embeddings.encode import worker_device
from skurec.encoders import EncoderCheckpointError, EncoderUnavailableError
from skurec.encoders.views import train_views_doc
from skurec.layout import CURRENT_ENCODER, EMBEDDING_FAILURES, EMBEDDINGS_VIEW
from skurec_assets.ingest import audited_catalogue
from skurec_assets.metadata import throttled_progress
from skurec_resources import EncoderResource, StorageResource
from skurec_resources.io_managers import STEP_IO_KEY, step_dir, workdir_json_io_manager

EMBED = "embed"
SHARDS_ENV = "SKUREC_EMBED_SHARDS"
DEFAULT_SHARDS = 2  # one machine: as many shards as a small machine runs at once; a GPU pool sets more

_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


def default_shards() -> int:
    raw = os.environ.get(SHARDS_ENV, "").strip()
    if not raw:
        return DEFAULT_SHARDS
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{SHARDS_ENV} must be a positive integer, not {raw!r}") from None
    if n < 1:
        raise ValueError(f"{SHARDS_ENV} must be a positive integer, not {raw!r}")
    return n


class EmbedShardsConfig(dg.Config):
    """How many hash shards the catalogue is embedded in: unset = ``$SKUREC_EMBED_SHARDS`` or 2. Changing it never
    re-embeds anything: the cache is read as the union of every part."""

    n_shards: Optional[int] = None

    def resolved(self) -> int:
        n = default_shards() if self.n_shards is None else self.n_shards
        if n < 1:
            raise dg.Failure(description=f"n_shards must be >= 1, got {n}", allow_retries=False)
        return n


# ------------------------------------------------------------------------------------------------ ops
def _update_shard(cache, enc, rows, encoder: EncoderResource, storage: StorageResource, shard, progress, view=None):
    """Embed the missing ``rows`` of one shard (plain rows, or train-time view ``view`` = ``(j, seed)``). The plan
    step verified the whole cache in this run, so the shard step does not verify it again."""
    return cache.update(
        enc,
        rows,
        batch_size=encoder.batch_size,
        num_workers=encoder.num_workers,
        progress=progress,
        storage_options=storage.storage_options(),
        shard=shard,
        verify=False,
        train_view=view,
    )


def _load(encoder: EncoderResource, shard: int | None = None):
    """The encoder, on this worker's device (shard ``s`` takes ``cuda:{s % n_gpus}`` on a multi-GPU machine); a
    configuration problem fails at once with the remedy instead of being retried."""
    try:
        device = encoder.device if shard is None else worker_device(encoder.device, shard)
        return encoder.load(device=device)  # every option of the resource (views, layers, input size)
    except (EncoderUnavailableError, EncoderCheckpointError) as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _worker() -> dict:
    return {"pid": os.getpid(), "hostname": socket.gethostname()}


def _train_view_config(encoder: EncoderResource) -> tuple[int, int]:
    try:
        return encoder.train_view_config()
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def _train_images(ws):
    """The images that get train-time views: active rows of the audited ``train`` split (never val / test)."""
    images = ws.read_table("images", columns=["image_id", "image_uri", "split", "active"])
    return images[images["active"].astype(bool) & (images["split"] == "train")][["image_id", "image_uri"]]


@dg.op(
    ins={"catalogue": dg.In(dg.Nothing)},
    out={
        "plan": dg.Out(io_manager_key=STEP_IO_KEY, description="per-shard image and missing counts"),
        "shard": dg.DynamicOut(int, io_manager_key=STEP_IO_KEY, description="one per shard with missing images"),
    },
    retry_policy=_RETRY,
    tags={"kind": "parquet"},
)
def plan_embedding_shards(
    context: dg.OpExecutionContext, config: EmbedShardsConfig, storage: StorageResource, encoder: EncoderResource
):
    """Split the accepted images into hash shards and emit the shards that have images without a cached vector."""
    ws = storage.workspace()
    enc = _load(encoder)
    k_views, view_seed = _train_view_config(encoder)
    n_shards = config.resolved()
    images = ws.read_table("images", columns=["image_id", "image_uri"])
    cache = EmbeddingCache(ws)
    shards = cache.plan_shards(enc.encoder_id, images, n_shards)
    views = train_views_doc(enc.encoder_id, k_views, view_seed) if k_views else None
    view_meta: dict = {}
    if views is not None:  # per shard: the train images' view rows, and those not cached yet
        train = _train_images(ws)
        for c in shards.values():
            c["n_view_rows"] = c["n_view_missing"] = 0
        for view_id in views["encoder_ids"]:
            for s, c in cache.plan_shards(view_id, train, n_shards).items():
                shards[s]["n_view_rows"] += c["n_images"]
                shards[s]["n_view_missing"] += c["n_missing"]
        n_view_missing = sum(c["n_view_missing"] for c in shards.values())
        view_meta = {"train_views": k_views, "train_view_seed": view_seed, "n_view_missing": n_view_missing}
        context.log.info(
            f"train-time views: {k_views} per train image (seed {view_seed}), {len(train)} train images; "
            f"{n_view_missing} view rows to embed"
        )
    todo = [s for s, c in shards.items() if c["n_missing"] or c.get("n_view_missing")]
    n_missing = sum(c["n_missing"] for c in shards.values())
    context.log.info(
        f"{len(images)} images in {n_shards} shards; {n_missing} to embed with {enc.encoder_id} in shards {todo}"
    )
    doc = {
        "encoder_id": enc.encoder_id,
        "identity": enc.identity(),
        "n_shards": n_shards,
        "shards": {str(s): c for s, c in shards.items()},
        "worker": {**_worker(), "device": str(enc.device)},
    }
    if views is not None:
        doc["train_views"] = views
    yield dg.Output(
        doc,
        "plan",
        metadata={
            "n_shards": n_shards,
            "n_images": len(images),
            "n_missing": n_missing,
            "shards_to_embed": dg.MetadataValue.json(todo),
            **view_meta,
        },
    )
    for s in todo:
        yield dg.DynamicOutput(s, output_name="shard", mapping_key=f"s{s:03d}")


@dg.op(
    ins={"plan": dg.In(), "shard": dg.In(int)},
    out=dg.Out(io_manager_key=STEP_IO_KEY, description="what this shard's step embedded, and where it ran"),
    retry_policy=_RETRY,
    tags={"kind": "pytorch"},
)
def embed_shard(
    context: dg.OpExecutionContext, storage: StorageResource, encoder: EncoderResource, plan: dict, shard: int
) -> dg.Output:
    """Embed the images of one hash shard that have no cached vector, into the shard's own cache parts."""
    ws = storage.workspace()
    enc = _load(encoder, shard)
    if enc.encoder_id != plan["encoder_id"]:
        raise dg.Failure(
            description=f"this worker's encoder {enc.encoder_id} differs from the plan's {plan['encoder_id']}: "
            "every worker must have the same encoder configuration and weights",
            allow_retries=False,
        )
    n_shards = int(plan["n_shards"])
    images = ws.read_table("images", columns=["image_id", "image_uri"])
    progress = throttled_progress(context, f"shard {shard}: embedded {{done}}/{{total}} new images")
    stats = _update_shard(EmbeddingCache(ws), enc, images, encoder, storage, (shard, n_shards), progress)
    context.log.info(
        f"shard {shard}/{n_shards}: {stats.n_computed} embedded, {stats.n_cached} cached, {len(stats.failures)} failed"
    )
    for image_id, reason, detail in stats.failures[:20]:
        context.log.warning(f"could not embed {image_id}: {reason} ({detail})")
    worker = {**_worker(), "device": str(enc.device)}
    result = {
        "shard": shard,
        "n_requested": stats.n_requested,
        "n_cached": stats.n_cached,
        "n_computed": stats.n_computed,
        "seconds": round(stats.seconds, 3),
        "failures": [list(f) for f in stats.failures],
        "worker": worker,
    }
    view_meta: dict = {}
    if plan.get("train_views"):
        result["views"] = _embed_shard_views(context, storage, encoder, enc, plan, shard, stats.failures)
        view_meta = {f"n_view_{k}": result["views"][k] for k in ("requested", "cached", "computed")}
        view_meta["n_view_failed"] = sum(len(f) for f in result["views"]["failures"].values())
    return dg.Output(
        result,
        metadata={
            **{k: v for k, v in stats.as_metadata().items() if k != "encoder_id"},
            "shard": shard,
            "n_shards": n_shards,
            **worker,
            **view_meta,
        },
    )


def _embed_shard_views(
    context, storage: StorageResource, encoder: EncoderResource, enc, plan: dict, shard: int, failed
):
    """Embed the missing train-time views of this shard's train images (view j under its own cache encoder id).
    Images this step could not embed plainly are skipped (they would fail K more times)."""
    ws = storage.workspace()
    views = plan["train_views"]
    n_shards = int(plan["n_shards"])
    skip = {f[0] for f in failed}
    train = _train_images(ws)
    train = train[~train["image_id"].isin(skip)]
    cache = EmbeddingCache(ws)
    out = {"requested": 0, "cached": 0, "computed": 0, "seconds": 0.0, "failures": {}}
    for j, view_id in enumerate(views["encoder_ids"]):
        progress = throttled_progress(context, f"shard {shard}: train view {j}: embedded {{done}}/{{total}} new rows")
        vs = _update_shard(cache, enc, train, encoder, storage, (shard, n_shards), progress, (j, int(views["seed"])))
        if vs.encoder_id != view_id:  # the recipe version of this worker differs from the plan's
            raise dg.Failure(
                description=f"this worker names train view {j} {vs.encoder_id}, the plan {view_id}: every worker "
                "must run the same skurec version",
                allow_retries=False,
            )
        out["requested"] += vs.n_requested
        out["cached"] += vs.n_cached
        out["computed"] += vs.n_computed
        out["seconds"] += vs.seconds
        if vs.failures:
            out["failures"][view_id] = [list(f) for f in vs.failures]
            for image_id, reason, detail in vs.failures[:5]:
                context.log.warning(f"could not embed train view {j} of {image_id}: {reason} ({detail})")
    out["seconds"] = round(out["seconds"], 3)
    context.log.info(
        f"shard {shard}/{n_shards}: {out['computed']} train-view rows embedded ({len(views['encoder_ids'])} views), "
        f"{out['cached']} cached"
    )
    return out


@dg.op(
    ins={"plan": dg.In(), "shards": dg.In(list)},
    out=dg.Out(dg.Nothing),
    tags={"kind": "parquet"},
)
def combine_embedding_shards(
    context: dg.OpExecutionContext, storage: StorageResource, plan: dict, shards: list
) -> dg.Output:
    """Verify that the union of the shards' parts covers every image, then publish the encoder identity."""
    ws = storage.workspace()
    cache = EmbeddingCache(ws)
    encoder_id = plan["encoder_id"]
    identity = plan["identity"]
    if not identity.get("pretrained", False):
        context.log.warning(f"encoder {encoder_id} has RANDOM weights: its features are for tests only")
    ran = {int(r["shard"]): r for r in shards}
    failures = [tuple(f) for r in sorted(ran.values(), key=lambda r: r["shard"]) for f in r["failures"]]
    failed_ids = {f[0] for f in failures}
    images = ws.read_table("images", columns=["image_id"])
    wanted = set(images["image_id"])
    uncovered = wanted - cache.cached_ids(encoder_id) - failed_ids
    if uncovered:
        raise dg.Failure(
            description=f"{len(uncovered)} image(s) are neither in the union of the shards' cache parts nor reported "
            f"as failed, e.g. {sorted(uncovered)[:3]}: a shard's parts were lost; re-materialise image_embeddings",
        )
    views = plan.get("train_views")
    view_totals = _check_views(cache, ws, views, ran, failed_ids) if views else None
    n_requested = sum(int(c["n_images"]) for c in plan["shards"].values())
    n_computed = sum(int(r["n_computed"]) for r in ran.values())
    seconds = sum(float(r["seconds"]) for r in ran.values())
    n_cached = sum(int(r["n_cached"]) for r in ran.values()) + sum(
        int(c["n_images"]) for s, c in plan["shards"].items() if int(s) not in ran
    )
    context.log.info(
        f"{n_computed} images embedded in {len(ran)} shard step(s), {n_cached} reused from the cache, "
        f"{len(failures)} failed"
    )
    ws.write_json(f"{cache.rel_dir(encoder_id)}/encoder.json", identity)
    if views:
        for j, view_id in enumerate(views["encoder_ids"]):
            view_doc = {"encoder_id": view_id, "train_view": j, "seed": views["seed"], "base": identity}
            ws.write_json(f"{cache.rel_dir(view_id)}/encoder.json", {**view_doc, "aug_version": views["aug_version"]})
        context.log.info(
            f"train-time views ({views['k']} per train image): {view_totals['n_view_computed']} view rows embedded, "
            f"{view_totals['n_view_rows'] - view_totals['n_view_computed'] - view_totals['n_view_failed']} reused, "
            f"{view_totals['n_view_failed']} missing (failed)"
        )
    ws.write_json(CURRENT_ENCODER, {**identity, "train_views": views} if views else identity)
    ws.write_json(EMBEDDING_FAILURES, [list(f) for f in failures])
    ws.mirror_parquet_view(EMBEDDINGS_VIEW, f"{cache.rel_dir(encoder_id)}/part-*.parquet")
    workers = {str(s): r["worker"] for s, r in sorted(ran.items())}
    # The steps' JSON hand-offs of this run are consumed: remove them (a failed run keeps them for re-execution).
    ws.delete(step_dir(context.run_id))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # Output(data_version=...): stable in practice since 1.3
        return _combined_output(
            n_requested,
            n_cached,
            n_computed,
            failures,
            seconds,
            plan,
            ran,
            workers,
            identity,
            ws.uri(cache.rel_dir(encoder_id)),
            view_totals,
        )


def _check_views(cache: EmbeddingCache, ws, views: dict, ran: dict, failed_ids: set) -> dict:
    """Every active train image has each view cached, or failed (plainly or as that view); the view totals."""
    train_ids = set(_train_images(ws)["image_id"])
    n_cached = 0
    for view_id in views["encoder_ids"]:
        view_failed = {f[0] for r in ran.values() for f in (r.get("views") or {}).get("failures", {}).get(view_id, [])}
        cached = train_ids & cache.cached_ids(view_id)
        n_cached += len(cached)
        uncovered = train_ids - cached - failed_ids - view_failed
        if uncovered:
            raise dg.Failure(
                description=f"{len(uncovered)} train image(s) have no cached train-time view {view_id} and were not "
                f"reported as failed, e.g. {sorted(uncovered)[:3]}: a shard's parts were lost; re-materialise "
                "image_embeddings",
            )
    n_computed = sum(int((r.get("views") or {}).get("computed", 0)) for r in ran.values())
    n_rows = len(train_ids) * int(views["k"])
    return {"n_view_rows": n_rows, "n_view_computed": n_computed, "n_view_failed": n_rows - n_cached}


def _combined_output(
    n_requested, n_cached, n_computed, failures, seconds, plan, ran, workers, identity, cache_uri, view_totals=None
):
    encoder_id = plan["encoder_id"]
    views = plan.get("train_views")
    version = f"{encoder_id}:{n_requested}:{n_requested - len(failures)}"
    view_meta: dict = {}
    if views:  # the training rows change with K / the seed: so does the data version (K = 0: as before)
        version += f":trainviews{views['k']}.seed{views['seed']}.aug{views['aug_version']}"
        version += f":{view_totals['n_view_rows'] - view_totals['n_view_failed']}"
        view_meta = {
            "train_views": int(views["k"]),
            "train_view_seed": int(views["seed"]),
            **view_totals,
            "train_view_encoder_ids": dg.MetadataValue.json(views["encoder_ids"]),
        }
    return dg.Output(
        None,
        metadata={
            "encoder_id": encoder_id,
            "n_requested": n_requested,
            "n_already_cached": n_cached,
            "n_computed": n_computed,
            "n_failed": len(failures),
            "seconds": round(seconds, 2),
            "images_per_second": round(n_computed / seconds, 2) if seconds > 0 and n_computed else 0.0,
            "n_shards": int(plan["n_shards"]),
            "shards_embedded": dg.MetadataValue.json(sorted(ran)),
            "shard_workers": dg.MetadataValue.json(workers),
            "encoder": dg.MetadataValue.json(identity),
            "weights_sha256": identity.get("weights_sha256", ""),
            "pretrained": bool(identity.get("pretrained", False)),
            "device": ", ".join(sorted({r["worker"]["device"] for r in ran.values()})) or plan["worker"]["device"],
            "cache_dir": dg.MetadataValue.path(cache_uri),
            **view_meta,
        },
        data_version=dg.DataVersion(version),
    )


def _embedding_graph(audited_catalogue):
    plan, shard = plan_embedding_shards(audited_catalogue)
    done = shard.map(lambda s: embed_shard(plan, s))
    return combine_embedding_shards(plan, done.collect())


_ASSET_ARGS = dict(
    name="image_embeddings",
    group_name=EMBED,
    ins={"audited_catalogue": dg.AssetIn(audited_catalogue.key, dagster_type=dg.Nothing)},
    automation_condition=dg.AutomationCondition.eager(),
    code_version="embed-v2",
    kinds={"pytorch", "parquet"},
    resource_defs={STEP_IO_KEY: workdir_json_io_manager},
    description=(
        "L2-normalised float32 embeddings of every accepted image from the frozen encoder, cached as Parquet keyed "
        "by (image_id, encoder_id): an image already embedded with the same encoder is never embedded again. "
        "Computed in hash shards of the image id ($SKUREC_EMBED_SHARDS), one step per shard with new images, so "
        "the multiprocess or a distributed executor embeds shards in parallel; readers see the union."
    ),
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # resource_defs on a graph asset (the step IO manager)
    image_embeddings = dg.graph_asset(**_ASSET_ARGS)(_embedding_graph)
