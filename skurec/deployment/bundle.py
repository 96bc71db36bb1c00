"""Model bundles: publish a classifier with its card and training table as an immutable, SHA-256-verified
:class:`~skurec.store.model_store.ModelStore` bundle, and load one back (what the Recognizer uses at inference)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from skurec.deployment.card import model_card_markdown
from skurec.deployment.training_table import TABLE_COLUMNS, table_from_parquet, table_to_parquet
from skurec.layout import BUNDLE_EXEMPLARS_DIR, BUNDLE_LINEAGE_DIR, BUNDLE_TRAINING_TABLE
from skurec.models import load_classifier
from skurec.store.model_store import ModelRecord, ModelStore, new_model_id, now_iso, sha256_hex
from skurec.store.workspace import Workspace


def model_files_only(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """A bundle's files without the lineage and exemplar side files (what ``load_classifier`` needs)."""
    side = (BUNDLE_LINEAGE_DIR + "/", BUNDLE_EXEMPLARS_DIR + "/")
    return {k: v for k, v in files.items() if not k.startswith(side)}


def publish_model(
    ws: Workspace, model: Any, card: dict, table: pd.DataFrame, model_id: str | None = None, prefix: str = "hier"
) -> ModelRecord:
    """Save ``model`` with its training table and card as a new immutable bundle (nothing is deployed here).

    The card is written last by the model store, so an exception anywhere before leaves no visible bundle.
    """
    model_id = model_id or new_model_id(prefix)
    table = table.assign(added_by=table["added_by"].fillna(model_id) if "added_by" in table else model_id)
    from skurec.deployment.explain import exemplar_files

    files = dict(model.to_files())
    files[BUNDLE_TRAINING_TABLE] = table_to_parquet(table)
    files.update(exemplar_files(ws, card, table))  # nearest training images per SKU, when the embeddings are cached
    if isinstance(card.get("training_set"), dict):  # the training table file's own SHA-256, named as such
        card = {
            **card,
            "training_set": {**card["training_set"], "file_sha256": sha256_hex(files[BUNDLE_TRAINING_TABLE])},
        }
    store = ModelStore(ws)
    # The markdown needs the file hashes the store adds; render it from the final card.
    final = {**card, "model_id": model_id, "files": {n: sha256_hex(b) for n, b in sorted(files.items())}}
    final.setdefault("created_at", now_iso())
    return store.save(model_id, files, final, model_card_markdown(final))


@dataclass
class PublishedModel:
    model_id: str
    model: Any
    card: dict
    table: pd.DataFrame
    exemplars: Any = None  # skurec.deployment.explain.Exemplars, when the bundle has them


def load_published(ws: Workspace, model_id: str, device: str | None = "cpu") -> PublishedModel:
    """A bundle's classifier, card and training table (every file verified against its SHA-256)."""
    store = ModelStore(ws)
    files = store.load_files(model_id)
    card = store.card(model_id)
    model = load_classifier(model_files_only(files), device=device)
    table = (
        table_from_parquet(files[BUNDLE_TRAINING_TABLE])
        if BUNDLE_TRAINING_TABLE in files
        else pd.DataFrame(columns=TABLE_COLUMNS)
    )
    from skurec.deployment.explain import Exemplars

    return PublishedModel(model_id, model, card, table, Exemplars.from_files(files))
