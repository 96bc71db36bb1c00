"""A work directory with synthetic embeddings and a trained, deployed model, for the deployment and lineage tests."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd

from skurec.catalogue.audit import catalogue_snapshot_hash
from skurec.deployment.bundle import publish_model
from skurec.deployment.candidates import build_candidate
from skurec.deployment.card import build_model_card
from skurec.deployment.gate import decide_deployment
from skurec.deployment.training_table import image_ids_sha256
from skurec.embeddings.cache import EmbeddingCache
from skurec.embeddings.training_data import load_training_data
from skurec.models import (
    CaseStudyConfig,
    DenseConfig,
    FineConfig,
    SpecialistHierarchyConfig,
    l2_normalize,
    train_hierarchy,
)
from skurec.store.artifacts import write_files
from skurec.store.model_store import ModelStore
from skurec.store.workspace import Workspace

ENCODER = {
    "name": "synthetic",
    "encoder_id": "synthetic@00000000",
    "weights_sha256": "0" * 64,
    "pretrained": False,
    "dim": 16,
    "options": {},
}


# ------------------------------------------------------------------------------------------------ helpers
def _image_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_BASIS = np.linalg.qr(np.random.default_rng(123).normal(size=(16, 16)))[0]


def _centre(sku: str) -> np.ndarray:
    """Class centres: ``c<i>`` -> orthonormal basis vector i; any other SKU (added later by the fast path) -> a
    distinct unit mix of the first six, i.e. inside the span the trained heads were fitted on (a frozen projection
    cannot separate directions it never saw; real encoders spread classes over a shared space)."""
    if sku[1:].isdigit() and sku[0] == "c" and int(sku[1:]) < 16:
        return _BASIS[:, int(sku[1:])]
    signs = np.random.default_rng(int(hashlib.sha256(sku.encode()).hexdigest()[:8], 16)).choice([-1.0, 1.0], 6)
    v = _BASIS[:, :6] @ signs
    return v / np.linalg.norm(v)


def add_images(
    ws: Workspace,
    counts: dict[str, int],
    seed: int,
    batch_id: str | None = None,
    n_val: int = 2,
    centres: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Append synthetic, well separated class clusters to the images/classes tables and the embedding cache."""
    rng = np.random.default_rng(seed)
    centres = dict(centres or {})
    rows, ids, vecs = [], [], []
    for sku, n in counts.items():
        centres.setdefault(sku, _centre(sku))
        for i in range(n):
            iid = _image_id(f"{sku}/{seed}/{i}")
            ids.append(iid)
            vecs.append(centres[sku] + rng.normal(0, 0.12, ENCODER["dim"]))
            rows.append(
                {
                    "image_id": iid,
                    "sku_id": sku,
                    "sku_name": f"{sku} name",
                    "group_id": None,
                    "batch_id": batch_id,
                    "image_uri": f"memory://{iid}.png",
                    "source": batch_id or "catalogue",
                    "n_bytes": 100,
                    "width": 32,
                    "height": 32,
                    "split": "val" if i < n_val else "train",
                    "split_pinned": False,
                    "active": True,
                }
            )
    new = pd.DataFrame(rows)
    images = pd.concat([ws.read_table("images"), new], ignore_index=True) if ws.has_table("images") else new
    ws.write_table("images", images)
    g = images.groupby("sku_id")
    classes = pd.DataFrame(
        {
            "sku_id": list(g.groups),
            "sku_name": [f"{s} name" for s in g.groups],
            "group_id": None,
            "n_images": g.size().values,
            "n_train": g["split"].agg(lambda s: int((s == "train").sum())).values,
            "n_val": g["split"].agg(lambda s: int((s == "val").sum())).values,
            "n_test": 0,
            "status": "active",
        }
    )
    ws.write_table("classes", classes)
    EmbeddingCache(ws)._write_part(ENCODER["encoder_id"], ids, l2_normalize(np.asarray(vecs)))
    ws.write_json("embeddings/current_encoder.json", ENCODER)
    ws.write_json("reports/audit_summary.json", {"catalogue_snapshot": catalogue_snapshot_hash(images)})
    return centres


def make_workspace(tmp_path, n_classes: int = 6, per_class: int = 12) -> Workspace:
    ws = Workspace(str(tmp_path / "work"))
    add_images(ws, {f"c{i}": per_class for i in range(n_classes)}, seed=0)
    return ws


#: the production recipe, small and fast: the shrinkage LDA as global scorer (no softmax to train), one size cap
FAST_PRODUCTION = SpecialistHierarchyConfig(max_sizes=(2,), global_weights=(0.0,))


#: the case study recipe, small and fast (what the serving and edge tests deploy: soft dense-head scores below 1)
FAST_CASE_STUDY = CaseStudyConfig(coarse=DenseConfig(max_epochs=10), fine=FineConfig(steps=20))


def train_small_hierarchy(X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, recipe: str):  # type: ignore[no-untyped-def]
    """The ``recipe`` hierarchy (small and fast: :data:`FAST_PRODUCTION` / :data:`FAST_CASE_STUDY`) on ``(X, y)``,
    chosen on ``(X_val, y_val)``, routing every superclass (the only width offered, so the score graph the
    Recognizer answers from ranks every SKU): the model."""
    config = dataclasses.replace(FAST_PRODUCTION, m_grid=(len(set(y.tolist())),))
    return train_hierarchy(X, y, X_val, y_val, recipe, device="cpu", config=config, case_study=FAST_CASE_STUDY).model


def write_trained_model(ws: Workspace, shuffle: bool = False, seed: int = 0):
    """Train the production hierarchy like the training assets and write its artifacts (ARTIFACTS.md): hierarchical
    model, training set, superclasses and the training manifest. ``shuffle`` trains on permuted labels (a worse
    model)."""
    data = load_training_data(ws)
    y = data.train.y.copy()
    if shuffle:
        y = y[np.random.default_rng(seed).permutation(len(y))]
    trained = train_hierarchy(
        data.train.X, y, data.val.X, data.val.y, "production", device="cpu", config=FAST_PRODUCTION
    )
    model = trained.model
    sc_map = model.superclass_of_class()
    digest = write_files(ws, "artifacts/hierarchical", model.to_files())
    rows = {"image_id": [], "sku_id": [], "split": []}
    for name, split in (("train", data.train), ("val", data.val)):
        rows["image_id"] += split.image_ids
        rows["sku_id"] += [str(v) for v in split.y]
        rows["split"] += [name] * len(split)
    ws.write_parquet("artifacts/training_set.parquet", pd.DataFrame(rows))
    version = hashlib.sha256(repr(sorted(sc_map.items())).encode()).hexdigest()
    ws.write_json(
        "artifacts/superclasses.json",
        {
            "classes": list(sc_map),
            "assignment": list(sc_map.values()),
            "n_superclasses": model.n_superclasses,
            "version": version,
            "method": trained.superclasses.method,
        },
    )
    ws.write_json(
        "artifacts/training_manifest.json",
        {
            "catalogue_snapshot": ws.read_json("reports/audit_summary.json")["catalogue_snapshot"],
            "encoder": ENCODER,
            "superclass_version": version,
            "train_image_ids_sha256": image_ids_sha256(data.train.image_ids),
            "training_set": "artifacts/training_set.parquet",
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": 0,
            "classes": data.classes,
            "configs": {"hierarchy": {"recipe": "production", "max_sizes": [2], "global_weights": [0.0]}},
            "seeds": {"fine": 0, "superclasses": 0},
            "code_version": "train-test",
            "metrics": {"val_top1_soft": 1.0},
            "hierarchical_digest": digest,
        },
    )
    return model


def deploy_first(ws: Workspace) -> str:
    write_trained_model(ws)
    cand = build_candidate(ws)
    assert cand.source == "full_rebuild" and cand.gate.passed, cand.gate.to_dict()
    decision = decide_deployment(ws, cand.model_id)
    assert decision.deployed
    return cand.model_id


# ------------------------------------------------------------------------------------------------ tests


def deploy_model(ws: Workspace, model, enc, ids, labels, n_superclasses: int) -> str:  # type: ignore[no-untyped-def]
    """Publish ``model`` (trained on the train images ``ids``) with a full-rebuild card and deploy it."""
    table = pd.DataFrame({"image_id": list(ids), "sku_id": list(labels), "split": "train", "added_by": None})
    card = build_model_card(
        source="full_rebuild",
        model=model,
        table=table,
        catalogue_snapshot="s" * 64,
        encoder=enc.identity(),
        superclasses={"version": "v1", "n_superclasses": n_superclasses},
        training_config={},
        seeds={},
        evaluation={},
        batches=[],
        sku_names={s: s.replace("sku-", "").title() for s in labels},
    )
    rec = publish_model(ws, model, card, table)
    ModelStore(ws).deploy(rec.model_id, reason="test")
    return rec.model_id
