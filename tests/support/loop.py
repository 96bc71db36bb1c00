"""The labelling loop's test catalogue: coloured SKU images, labelled batches in a drop folder, loop resources and the first build."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from support.s3server import s3  # noqa: F401  (fixture)

# Strongly different colours + a per-SKU pattern: separable even by a randomly initialised tiny ViT.
PALETTE = {
    "sku-red": ((225, 35, 35), "plain"),
    "sku-green": ((40, 190, 60), "hstripes"),
    "sku-blue": ((35, 55, 225), "vstripes"),
    "sku-yellow": ((235, 215, 40), "checker"),
    "sku-magenta": ((205, 40, 205), "diagonal"),
    "sku-cyan": ((40, 210, 215), "plain"),
    "sku-white": ((240, 240, 240), "plain"),
}

FAST_RUN_CONFIG = {
    "ops": {
        # Superclasses of at most 2 SKUs (the default caps would put the 4 SKUs in one superclass).
        "superclasses": {"config": {"max_sizes": [2]}},
        "flat_baselines": {"config": {"max_epochs": 10}},
    }
}


def sku_png(sku: str, seed: int, size: int = 40) -> bytes:
    """A PNG of ``sku``: its colour and pattern with random jitter and noise (distinct bytes for every seed)."""
    rgb, pattern = PALETTE[sku]
    rng = np.random.default_rng(seed)
    base = np.array(rgb, dtype=np.float32) + rng.normal(0, 8, 3)
    arr = np.tile(base, (size, size, 1))
    yy, xx = np.mgrid[0:size, 0:size]
    period = 8
    mask = {
        "plain": np.zeros((size, size), bool),
        "hstripes": (yy // period) % 2 == 0,
        "vstripes": (xx // period) % 2 == 0,
        "checker": ((yy // period) + (xx // period)) % 2 == 0,
        "diagonal": ((yy + xx) // period) % 2 == 0,
    }[pattern]
    arr[mask] *= 0.55
    arr += rng.normal(0, 6, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype("uint8"), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_catalogue(root: Path, counts: dict[str, int], seed0: int = 0) -> Path:
    """ROOT/<sku>/<i>.png."""
    for j, (sku, n) in enumerate(counts.items()):
        d = root / sku
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"{i:03d}.png").write_bytes(sku_png(sku, seed0 + 1000 * j + i))
    return root


def write_batch(
    drop: Path,
    name: str,
    counts: dict[str, int],
    seed0: int,
    manifest: bool = True,
    columns: tuple[str, ...] = ("image_uri", "sku_id"),
) -> Path:
    """``drop/name/images/*.png`` then ``manifest.csv`` (written last, like a real upload)."""
    folder = drop / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for j, (sku, n) in enumerate(counts.items()):
        for i in range(n):
            rel = f"images/{sku}-{i:03d}.png"
            (folder / rel).write_bytes(sku_png(sku, seed0 + 1000 * j + i))
            rows.append({"image_uri": rel, "sku_id": sku})
    if manifest:
        with open(folder / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns))
            w.writeheader()
            w.writerows([{c: r[c] for c in columns} for r in rows])
    return folder


def loop_resources(work: Path, catalogue: Path, drop: Path, min_samples: int = 5, **loop_kwargs) -> dict:
    from skurec_resources import CatalogueResource, EncoderResource, LabellingLoopResource, StorageResource

    return {
        "storage": StorageResource(workdir=str(work)),
        "catalogue": CatalogueResource(location=str(catalogue), min_samples=min_samples),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=32, device="cpu", num_workers=1),
        "loop": LabellingLoopResource(drop_location=str(drop), **loop_kwargs),
    }


def materialisation_count(instance, key: str, partition: str | None = None) -> int:
    import dagster as dg

    records = instance.fetch_materializations(dg.AssetKey(key), limit=1000).records
    if partition is not None:
        records = [r for r in records if r.partition_key == partition]
    return len(records)


def asset_metadata(result, key: str) -> dict:
    mats = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    assert mats, f"{key} was not materialised in this run"
    return {k: v.value for k, v in mats[-1].materialization.metadata.items()}


BASE_SKUS = ["sku-red", "sku-green", "sku-blue", "sku-yellow"]
NEW_SKU = "sku-white"


def initial_build(defs: dg.Definitions, instance: dg.DagsterInstance):
    """The first full build (everything the deployed model needs), as `skurec demo` / the full_rebuild job do."""
    graph = defs.resolve_asset_graph()
    keys = (dg.AssetSelection.assets("deployed_model").upstream() - dg.AssetSelection.assets("labelled_batch")).resolve(
        graph
    )
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=sorted(keys, key=str), run_config=FAST_RUN_CONFIG
    )


def write_worse_model(ws) -> None:
    """Simulate a training run that produced a worse model: the production hierarchy trained on the same train
    images with shuffled labels (validation rows as recorded), written to artifacts/hierarchical exactly like the
    training assets (ARTIFACTS.md)."""
    from skurec.embeddings.cache import EmbeddingCache
    from skurec.embeddings.training_data import current_encoder
    from skurec.models import SpecialistHierarchyConfig, train_hierarchy
    from skurec.store.artifacts import write_files

    manifest = ws.read_json("artifacts/training_manifest.json")
    table = ws.read_parquet(manifest["training_set"]).to_pandas()
    cache, encoder_id = EmbeddingCache(ws), current_encoder(ws)["encoder_id"]
    train, val = table[table["split"] == "train"], table[table["split"] == "val"]
    _, X = cache.load(encoder_id, train["image_id"].tolist())
    _, X_val = cache.load(encoder_id, val["image_id"].tolist())
    y = train["sku_id"].to_numpy().astype(str)
    y_bad = y[np.random.default_rng(0).permutation(len(y))]
    fast = SpecialistHierarchyConfig(max_sizes=(4,), global_weights=(0.0,))  # the LDA as global scorer: no softmax
    bad = train_hierarchy(
        X, y_bad, X_val, val["sku_id"].to_numpy().astype(str), "production", device="cpu", config=fast
    ).model
    manifest["hierarchical_digest"] = write_files(ws, "artifacts/hierarchical", bad.to_files())
    ws.write_json("artifacts/training_manifest.json", manifest)
