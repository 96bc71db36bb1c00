"""Lineage: every published model carries a card naming its exact data, batches, encoder, code, config, seeds and
evaluation, plus the (image_id, sku_id, split) table that trained it; `skurec lineage` prints it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from support.deploy import ENCODER, add_images, deploy_first, make_workspace

from skurec import layout
from skurec.catalogue.ingest import batch_record_rel, batch_rows_rel
from skurec.deployment.candidates import build_candidate
from skurec.deployment.card import code_version_info
from skurec.deployment.gate import decide_deployment
from skurec.deployment.training_table import image_ids_sha256, table_from_parquet, training_table_sha256
from skurec.layout import BUNDLE_TRAINING_TABLE as LINEAGE_TABLE
from skurec.store.model_store import ModelStore
from skurec_assets.cli import main


def _record_batch(ws, name: str, content_hash: str) -> None:
    """An ingestion record as labelled_batch writes it (rows themselves are already in the images table here)."""
    ws.write_parquet(batch_rows_rel(name), pd.DataFrame({"image_uri": ["x"], "sku_id": ["y"]}))
    ws.write_json(
        batch_record_rel(name),
        {
            "batch_id": name,
            "content_hash": content_hash,
            "source_uri": f"/drop/{name}",
            "manifest_uri": f"/drop/{name}/manifest.csv",
            "n_rows": 1,
            "n_images": 1,
            "skus": [],
            "ingested_at": "2026-01-01T00:00:00+00:00",
        },
    )


def test_full_rebuild_card_names_exact_data_encoder_code_and_training_table(tmp_path):
    ws = make_workspace(tmp_path)
    model_id = deploy_first(ws)
    store = ModelStore(ws)
    card = store.card(model_id)
    manifest = ws.read_json("artifacts/training_manifest.json")
    training_set = ws.read_parquet("artifacts/training_set.parquet").to_pandas()

    assert card["source"] == "full_rebuild"
    assert (
        card["catalogue_snapshot"]
        == manifest["catalogue_snapshot"]
        == ws.read_json("reports/audit_summary.json")["catalogue_snapshot"]
    )
    assert card["encoder"]["encoder_id"] == ENCODER["encoder_id"]
    assert card["encoder"]["weights_sha256"] == ENCODER["weights_sha256"]
    assert card["superclasses"]["version"] == manifest["superclass_version"]
    assert card["training_config"] == manifest["configs"] and card["seeds"] == manifest["seeds"]
    assert card["evaluation"]["gate/candidate_top1"] == 1.0 and "train/val_top1_soft" in card["evaluation"]
    code = card["code"]
    assert code == code_version_info() and code["package_version"] and code["git_commit"]  # a git checkout
    assert card["classes"]["n"] == 6 and card["classes"]["names"]["c0"] == "c0 name"
    assert card["batches"] == []  # base catalogue only
    rec = card["recognition"]  # calibrated on the validation split (an LDA-routed hierarchy: the energy score)
    assert rec["unknown_score"] == "energy" and np.isfinite(rec["threshold"]) and rec["n_val"] == 12

    # "Which images and which labels trained this?" -> the table in the bundle, verified by its SHA-256.
    files = store.load_files(model_id)
    table = table_from_parquet(files[LINEAGE_TABLE])
    key = ["image_id", "sku_id", "split"]
    assert (
        table[key]
        .sort_values(key)
        .reset_index(drop=True)
        .equals(training_set[key].sort_values(key).reset_index(drop=True))
    )
    assert set(table["added_by"]) == {model_id}
    assert card["training_set"]["table_fingerprint"] == training_table_sha256(table)
    # issue 22: the file's SHA-256 is named as such and is the bundle file's
    assert card["training_set"]["file_sha256"] == card["files"][layout.BUNDLE_TRAINING_TABLE]
    assert card["training_set"]["train_image_ids_sha256"] == manifest["train_image_ids_sha256"]
    assert card["files"][LINEAGE_TABLE] and card["artifact_digest"] == manifest["hierarchical_digest"]

    md = store.card_markdown(model_id)
    for fact in (model_id, card["catalogue_snapshot"], ENCODER["encoder_id"], code["git_commit"], "full_rebuild"):
        assert fact in md


def test_fast_path_card_extends_the_base_lineage_with_batches_and_new_skus(tmp_path):
    ws = make_workspace(tmp_path)
    base_id = deploy_first(ws)
    store = ModelStore(ws)
    base_table = table_from_parquet(store.load_files(base_id)[LINEAGE_TABLE])
    add_images(ws, {"new-sku": 10, "c1": 4}, seed=7, batch_id="batch-7")
    _record_batch(ws, "batch-7", "ab" * 32)

    cand = build_candidate(ws)
    assert cand.source == "fast_path" and cand.gate.passed, cand.gate.to_dict()
    assert decide_deployment(ws, cand.model_id).deployed
    card = store.card(cand.model_id)
    assert card["base_model_id"] == base_id
    assert card["fast_path"]["new_skus"] == ["new-sku"]
    assert card["fast_path"]["refreshed_skus"] == ["c1"]
    assert card["fast_path"]["n_images_added"] == 10  # 8 new-sku + 2 c1 train images (2 of each are val)
    assert card["superclasses"]["attached"] == {"new-sku": card["fast_path"]["superclass_of_new"]["new-sku"]}
    assert card["superclasses"]["version"] == store.card(base_id)["superclasses"]["version"]
    assert card["batches"] == [
        {
            "batch_id": "batch-7",
            "n_images": 10,
            "content_hash": "ab" * 32,
            "ingested_at": "2026-01-01T00:00:00+00:00",
            "source_uri": "/drop/batch-7",
        }
    ]
    assert card["catalogue_snapshot"] == ws.read_json("reports/audit_summary.json")["catalogue_snapshot"]
    assert card["catalogue_snapshot"] != store.card(base_id)["catalogue_snapshot"]

    table = table_from_parquet(store.load_files(cand.model_id)[LINEAGE_TABLE])
    old = table[table["added_by"] == base_id]
    new = table[table["added_by"] == cand.model_id]
    assert len(old) == len(base_table) and set(old["image_id"]) == set(base_table["image_id"])
    images = ws.read_table("images")
    batch_rows = images[images["batch_id"] == "batch-7"]
    assert set(new["image_id"]) == set(batch_rows["image_id"])
    assert dict(zip(new["image_id"], new["sku_id"])) == dict(zip(batch_rows["image_id"], batch_rows["sku_id"]))
    train_ids = table.loc[table["split"] == "train", "image_id"].tolist()
    assert card["training_set"]["train_image_ids_sha256"] == image_ids_sha256(train_ids)


def test_lineage_cli_prints_the_deployed_card_and_exports_the_training_set(tmp_path, capsys):
    ws = make_workspace(tmp_path)
    model_id = deploy_first(ws)
    assert main(["lineage", "--workdir", ws.root]) == 0
    out = capsys.readouterr().out
    assert f"# Model card: {model_id}" in out and "_deployed: yes_" in out and ENCODER["encoder_id"] in out

    csv_path = tmp_path / "trained_on.csv"
    assert main(["lineage", model_id, "--workdir", ws.root, "--json", "--training-set", str(csv_path)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["model_id"] == model_id and card["deployed"] is True
    exported = pd.read_csv(csv_path)
    assert len(exported) == card["training_set"]["n_rows"]
    assert training_table_sha256(exported) == card["training_set"]["table_fingerprint"]

    assert main(["lineage", "nope", "--workdir", ws.root]) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()  # readers never create a missing work directory (issue 22): an existing, empty one here
    assert main(["lineage", "--workdir", str(empty)]) == 2
    assert "no model is deployed" in capsys.readouterr().err
