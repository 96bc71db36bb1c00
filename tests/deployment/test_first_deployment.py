"""A user's own catalogue deploys on the first run (issue 13): a manifest whose ``split`` column pins rows to
``train`` or ``test`` only (the usual shape of a published data set) gets a validation split carved from the train
rows, so the gate can judge the first candidate, the model is deployed and ``skurec predict`` answers.
Runs the real assets on the tiny RANDOM ViT with SKUs that differ strongly in colour and pattern."""

from __future__ import annotations

import csv
import json

import dagster as dg
from support.loop import PALETTE, initial_build, loop_resources, sku_png

from skurec.deployment import candidates, gate
from skurec.embeddings import training_data
from skurec.store.model_store import ModelStore
from skurec.store.workspace import Workspace
from skurec_assets.cli import main
from skurec_assets.definitions import build_definitions

SKUS = list(PALETTE)[:4]


def write_train_test_manifest(root, n_train: int = 24, n_test: int = 6):
    """images/<sku>-<i>.png plus manifest.csv with split = train | test (no validation list)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for j, sku in enumerate(SKUS):
        for i in range(n_train + n_test):
            rel = f"images/{sku}-{i:03d}.png"
            (root / rel).write_bytes(sku_png(sku, 5000 + 1000 * j + i))
            rows.append({"image_uri": rel, "sku_id": sku, "split": "train" if i < n_train else "test"})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image_uri", "sku_id", "split"])
        w.writeheader()
        w.writerows(rows)
    return root / "manifest.csv", rows


def test_train_test_manifest_deploys_and_predicts_on_the_first_run(tmp_path, capsys, monkeypatch):
    manifest, rows = write_train_test_manifest(tmp_path / "published")
    work = tmp_path / "work"
    defs = build_definitions(loop_resources(work, manifest, tmp_path / "drop"))
    instance = dg.DagsterInstance.ephemeral()
    loads = []
    real_load = training_data._load
    monkeypatch.setattr(training_data, "_load", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    gates = []
    real_gate = gate.evaluate_gate
    counted_gate = lambda *a, **k: gates.append(1) or real_gate(*a, **k)  # noqa: E731
    monkeypatch.setattr(gate, "evaluate_gate", counted_gate)
    monkeypatch.setattr(candidates, "evaluate_gate", counted_gate)

    assert initial_build(defs, instance).success
    assert len(loads) == 1, f"the full build joined the catalogue with the embedding cache {len(loads)} times"
    assert len(gates) == 1, f"the gate was evaluated {len(gates)} times for one candidate on one snapshot"
    ws = Workspace(str(work))
    images = ws.read_table("images")
    counts = images["split"].value_counts().to_dict()
    assert counts["test"] == 4 * 6  # pinned test rows never move
    assert counts.get("val", 0) > 0 and counts["val"] + counts["train"] == 4 * 24  # val carved from the train rows
    store = ModelStore(ws)
    deployed = store.deployed_id()
    assert deployed is not None, "the first candidate must be deployed"
    card = store.card(deployed)
    assert card["gate_at_publication"]["passed"] and card["gate_at_publication"]["n_val"] == counts["val"]

    capsys.readouterr()
    test_image = next(r["image_uri"] for r in rows if r["split"] == "test")
    assert main(["predict", str(manifest.parent / test_image), "--workdir", str(work), "--threshold", "0"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model_id"] == deployed and out["top_k"][0]["sku_id"] in SKUS
