"""A deployed model on real image files (tiny random ViT): what the edge-bundle tests export and compare."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from skurec.embeddings.cache import EmbeddingCache
from skurec.encoders import load_encoder
from skurec.models import FlatPrototype
from skurec.store.workspace import Workspace
from support.deploy import deploy_model, train_small_hierarchy
from support.loop import sku_png

SKUS = ["sku-red", "sku-green", "sku-blue", "sku-yellow", "sku-white"]


def edge_workdir(root: Path, flat: bool = False, options: dict | None = None) -> tuple[Workspace, str]:
    """Images on disk (train + val rows in the images table), a model trained on their tiny-ViT embeddings, deployed."""
    ws = Workspace(str(root / "work"))
    enc = load_encoder("tiny_random_vit", device="cpu", **(options or {}))
    rows, images = [], []
    (root / "img").mkdir(parents=True, exist_ok=True)
    for j, sku in enumerate(SKUS):
        for i in range(10):
            p = root / "img" / f"{sku}-{i}.png"
            p.write_bytes(sku_png(sku, 10_000 * j + i))
            split = "val" if i < 3 else "train"
            rows.append({"image_id": f"{sku}-{i}", "sku_id": sku, "image_uri": str(p), "split": split, "active": True})
            images.append(Image.open(p).convert("RGB"))
    table = pd.DataFrame(rows)
    ws.write_table("images", table)
    X = enc.embed_images(images)
    EmbeddingCache(ws)._write_part(enc.encoder_id, table["image_id"].tolist(), X)  # exemplars come from the cache
    y = table["sku_id"].to_numpy()
    tr = (table["split"] == "train").to_numpy()
    if flat:
        model = FlatPrototype.fit(X[tr], y[tr], device="cpu")
        n_sc = 1
    else:
        model = train_small_hierarchy(X[tr], y[tr], X[~tr], y[~tr], "case_study")
        n_sc = model.n_superclasses
    train = table[tr]
    return ws, deploy_model(ws, model, enc, train["image_id"], train["sku_id"], n_sc)
