"""The labelling loop end to end through Dagster: two batches dropped in sequence, the sensor, automation, gate.

Done-when of issue 4: batch 2 embeds only its own images; assets whose inputs did not change are not
re-materialised; a new SKU from batch 2 is recognised right after the run; a duplicate and a malformed batch are
reported without blocking; a worse candidate is refused by the gate and the old model stays deployed.
Runs on the tiny random ViT with strongly different colours/patterns per SKU (separable even by random features).
"""

from __future__ import annotations

import shutil
import time

import dagster as dg
import pytest

# Strongly different colours + a per-SKU pattern: separable even by a randomly initialised tiny ViT.
from support.loop import (
    BASE_SKUS,
    NEW_SKU,
    asset_metadata,
    initial_build,
    loop_resources,
    materialisation_count,
    sku_png,
    write_batch,
    write_catalogue,
    write_worse_model,
)
from support.s3server import s3  # noqa: F401  (fixture)


def test_two_batches_flow_through_sensor_automation_fast_path_and_gate(tmp_path):
    from skurec.layout import ERROR_GALLERY_PNG
    from skurec.serving.recognizer import Recognizer
    from skurec.store.model_store import ModelStore
    from skurec.store.workspace import Workspace
    from skurec_assets.definitions import build_definitions
    from skurec_assets.loop_pass import run_loop_in_process
    from skurec_assets.schedules import weekly_full_rebuild

    t0 = time.perf_counter()
    cat = write_catalogue(tmp_path / "cat", {s: 10 for s in BASE_SKUS})
    drop = tmp_path / "drop"
    work = tmp_path / "work"
    defs = build_definitions(loop_resources(work, cat, drop, min_samples=5))
    instance = dg.DagsterInstance.ephemeral()
    ws = Workspace(str(work))
    store = ModelStore(ws)

    assert initial_build(defs, instance).success
    first = store.deployed_id()
    assert first is not None and store.card(first)["source"] == "full_rebuild"
    assert ws.read_bytes(ERROR_GALLERY_PNG).startswith(b"\x89PNG")  # errors beside their nearest exemplars
    # The graph says candidate_model reads the evaluation: its card always carries the evaluation of that very model.
    evaluation = store.card(first)["evaluation"]
    assert any(k.startswith("eval/") and k.endswith("/hierarchical_soft/top1") for k in evaluation), evaluation
    upstream = dg.AssetSelection.assets("candidate_model").upstream().resolve(defs.resolve_asset_graph())
    assert dg.AssetKey("evaluation_report") in upstream
    # The weekly rebuild skips while nothing changed since the last full training.
    schedule_ctx = dg.build_schedule_context(instance=instance, resources={"storage": defs.resources["storage"]})
    assert isinstance(weekly_full_rebuild(schedule_ctx), dg.SkipReason)
    # The daemon's first tick on a fully built graph requests nothing.
    prime = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert prime.total_requested == 0

    # ---- batch 1: more images of two known SKUs -> fast path refreshes their prototypes
    write_batch(drop, "batch-1", {"sku-red": 3, "sku-green": 3}, seed0=50_000)
    p1 = run_loop_in_process(defs, instance, automation_cursor=prime.cursor)
    assert p1.success
    assert list(p1.batch_runs) == ["batch-1"]
    assert instance.get_dynamic_partitions("labelled_batches") == ["batch-1"]
    assert [keys for keys, _ in p1.automation_runs] == [
        ["audited_catalogue", "candidate_model", "deployed_model", "edge_bundle", "image_embeddings"]
    ]
    run1 = p1.automation_runs[0][1]
    assert asset_metadata(run1, "edge_bundle")["status"] == "exported"  # the cart's bundle follows the deployment
    assert asset_metadata(run1, "image_embeddings")["n_computed"] == 6
    after_1 = store.deployed_id()
    assert after_1 != first and store.card(after_1)["source"] == "fast_path"
    assert store.card(after_1)["fast_path"]["new_skus"] == []

    # ---- batch 2 (a new SKU) arrives with a duplicate of batch 1, a malformed and an incomplete batch
    write_batch(drop, "batch-2", {NEW_SKU: 8, "sku-blue": 2}, seed0=60_000)
    shutil.copytree(drop / "batch-1", drop / "batch-1-copy")
    write_batch(drop, "batch-bad", {"sku-cyan": 6}, seed0=70_000, columns=("image_uri",))
    write_batch(drop, "batch-incomplete", {"sku-cyan": 6}, seed0=80_000, manifest=False)
    p2 = run_loop_in_process(defs, instance, sensor_cursor=p1.sensor_cursor, automation_cursor=p1.automation_cursor)
    assert p2.success
    assert list(p2.batch_runs) == ["batch-2"]
    assert instance.get_dynamic_partitions("labelled_batches") == ["batch-1", "batch-2"]
    inbox = ws.read_table("batch_inbox").set_index("name")
    assert inbox.loc["batch-1-copy", "status"] == "duplicate" and inbox.loc["batch-1-copy", "duplicate_of"] == "batch-1"
    assert inbox.loc["batch-bad", "status"] == "rejected" and "sku_id" in inbox.loc["batch-bad", "reason"]
    assert inbox.loc["batch-incomplete", "status"] == "incomplete"
    run2 = p2.automation_runs[0][1]
    # batch 2 embeds exactly its own 10 images
    assert asset_metadata(run2, "image_embeddings")["n_computed"] == 10
    assert asset_metadata(run2, "image_embeddings")["n_already_cached"] == 46

    # Unchanged assets were not re-materialised: the training assets and batch 1's partition ran once.
    for key in ("class_prototypes", "superclasses", "coarse_model", "fine_model"):
        assert materialisation_count(instance, key) == 1, key
    assert materialisation_count(instance, "labelled_batch", "batch-1") == 1
    assert materialisation_count(instance, "labelled_batch", "batch-2") == 1

    deployed = store.deployed_id()
    card = store.card(deployed)
    assert card["source"] == "fast_path" and card["base_model_id"] == after_1
    assert card["fast_path"]["new_skus"] == [NEW_SKU]
    assert {b["batch_id"] for b in card["batches"]} == {"batch-1", "batch-2"}
    assert all(b["content_hash"] for b in card["batches"])

    # The new SKU is recognised right after the run (held-out images, never seen by the pipeline).
    rec = Recognizer.from_workdir(work)
    assert rec.model_id == deployed
    for sku, seed in [(NEW_SKU, 99_999), (NEW_SKU, 99_998), ("sku-red", 99_997), ("sku-blue", 99_996)]:
        assert rec.predict(sku_png(sku, seed)).sku_id == sku

    # The catalogue changed since the last full training: the scheduled rebuild now runs (re-clustering etc.).
    request = weekly_full_rebuild(schedule_ctx)
    assert isinstance(request, dg.RunRequest) and "catalogue changed" in request.tags["skurec/reason"]
    assert defs.resolve_schedule_def("weekly_full_rebuild").job_name == "full_rebuild"

    # Nothing new: the sensor registers nothing and automation requests nothing.
    p3 = run_loop_in_process(defs, instance, sensor_cursor=p2.sensor_cursor, automation_cursor=p2.automation_cursor)
    assert p3.batch_runs == {} and p3.automation_runs == []

    # ---- a worse candidate (e.g. a bad full rebuild) is refused; the deployed model and its files stay
    files_before = store.load_files(deployed)
    write_worse_model(ws)
    bad_run = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("candidate_model"), dg.AssetKey("deployed_model")],
        raise_on_error=False,
    )
    assert not bad_run.success  # the blocking gate check failed, so deployed_model did not run
    checks = {e.asset_check_key.name: e for e in bad_run.get_asset_check_evaluations()}
    assert checks["gate_accuracy_not_worse"].passed is False
    assert "below the deployed model" in checks["gate_accuracy_not_worse"].metadata["reason"].value
    assert "deployed_model" not in [e.asset_key.to_user_string() for e in bad_run.get_asset_materialization_events()]
    bad_id = asset_metadata(bad_run, "candidate_model")["model_id"]
    assert store.card(bad_id)["source"] == "full_rebuild"
    assert store.deployed_id() == deployed
    assert store.load_files(deployed) == files_before

    # Even when deployed_model is run on its own, it re-applies the gate and refuses, saying why.
    manual = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("deployed_model")]
    )
    meta = asset_metadata(manual, "deployed_model")
    assert meta["decision"] == "refused" and meta["candidate_model_id"] == bad_id
    assert any("accuracy" in r for r in meta["refusal_reasons"])
    assert store.deployed_id() == deployed
    assert time.perf_counter() - t0 < 120


# ------------------------------------------------------------------------------------------------ batches (core)
def test_content_hash_identifies_a_batch_whatever_its_name(tmp_path):
    from skurec.catalogue.batches import discover_batches, inspect_batch

    drop = tmp_path / "drop"
    write_batch(drop, "a", {"sku-red": 2, "sku-blue": 1}, seed0=1)
    shutil.copytree(drop / "a", drop / "a-copy")
    write_batch(drop, "b", {"sku-red": 2, "sku-blue": 1}, seed0=2)  # same layout, other pixels
    found = {b.name: b for b in discover_batches(str(drop))}
    assert sorted(found) == ["a", "a-copy", "b"]
    ha, hcopy, hb = (inspect_batch(found[n]).content_hash for n in ("a", "a-copy", "b"))
    assert ha == hcopy and ha != hb
    # One changed byte in one image changes the hash.
    img = drop / "a-copy" / "images" / "sku-red-000.png"
    img.write_bytes(sku_png("sku-red", 999))
    assert inspect_batch(found["a-copy"]).content_hash != ha
    insp = inspect_batch(found["a"])
    assert insp.ok and insp.n_images == 3 and insp.skus == ["sku-blue", "sku-red"]
    assert set(insp.rows["batch_id"]) == {"a"}


def test_malformed_batches_are_rejected_with_a_reason(tmp_path):
    from skurec.catalogue.batches import DropBatch, discover_batches, inspect_batch

    drop = tmp_path / "drop"
    write_batch(drop, "no-sku-column", {"sku-red": 2}, seed0=1, columns=("image_uri",))
    missing = write_batch(drop, "missing-image", {"sku-red": 2}, seed0=2)
    (missing / "images" / "sku-red-001.png").unlink()
    escape = write_batch(drop, "escapes", {"sku-red": 1}, seed0=3)
    (escape / "manifest.csv").write_text("image_uri,sku_id\n../missing-image/images/sku-red-000.png,sku-red\n")
    empty = drop / "empty"
    empty.mkdir()
    (empty / "manifest.csv").write_text("image_uri,sku_id\n")
    two = write_batch(drop, "two-manifests", {"sku-red": 1}, seed0=4)
    (two / "manifest.parquet").write_bytes(b"")
    write_batch(drop, "bad name!", {"sku-red": 1}, seed0=5)
    write_batch(drop, "_staging", {"sku-red": 1}, seed0=6)  # ignored: staging folder
    (drop / "stray.txt").write_text("not a batch")  # ignored: not a folder
    reasons = {b.name: inspect_batch(b).reason for b in discover_batches(str(drop))}
    assert "_staging" not in reasons and "stray.txt" not in reasons
    assert "lacks required column(s) ['sku_id']" in reasons["no-sku-column"]
    assert "missing" in reasons["missing-image"] and "sku-red-001.png" in reasons["missing-image"]
    assert "path_outside_root" in reasons["escapes"]
    assert reasons["empty"] == "the manifest has no rows"
    assert "2 manifests" in reasons["two-manifests"]
    assert "invalid batch folder name" in reasons["bad name!"]
    assert "incomplete" in inspect_batch(DropBatch("x", str(drop / "x"), None)).reason


def test_triage_registers_once_reports_the_rest_and_ingest_is_idempotent(tmp_path):
    from skurec.catalogue.batches import (
        DUPLICATE,
        INCOMPLETE,
        INGESTED,
        NEW,
        REGISTERED,
        REJECTED,
        find_batch,
        inspect_batch,
        triage_drop_location,
    )
    from skurec.catalogue.ingest import ingest_batch, ingested_batch_rows, ingested_hashes
    from skurec.store.workspace import Workspace

    drop = tmp_path / "drop"
    ws = Workspace(str(tmp_path / "work"))
    write_batch(drop, "b1", {"sku-red": 2}, seed0=1)
    t1 = triage_drop_location(str(drop), {}, ingested_hashes(ws))
    assert [(d.name, d.status) for d in t1.new] == [("b1", NEW)]
    assert t1.state["b1"]["status"] == REGISTERED
    # Until ingested, the same content under another name is a duplicate of the registered batch.
    shutil.copytree(drop / "b1", drop / "b1-again")
    write_batch(drop, "partial", {"sku-red": 1}, seed0=2, manifest=False)
    t2 = triage_drop_location(str(drop), t1.state, ingested_hashes(ws))
    status = {d.name: d for d in t2.decisions}
    assert status["b1"].status == REGISTERED and status["b1-again"].status == DUPLICATE
    assert status["b1-again"].duplicate_of == "b1" and status["partial"].status == INCOMPLETE
    assert [d.name for d in t2.changed] == ["b1-again", "partial"]  # b1 unchanged: not read again

    record = ingest_batch(ws, inspect_batch(find_batch(str(drop), "b1")))
    assert ingest_batch(ws, inspect_batch(find_batch(str(drop), "b1")))["content_hash"] == record["content_hash"]
    assert len(ingested_batch_rows(ws)) == 2  # ingesting the same batch again adds nothing
    with pytest.raises(ValueError, match="same content"):
        ingest_batch(ws, inspect_batch(find_batch(str(drop), "b1-again")))
    # Images are copied into the work directory: the drop folder may be cleaned up.
    rows = ingested_batch_rows(ws)
    assert all(str(u).startswith(ws.root) for u in rows["image_uri"]) and set(rows["batch_id"]) == {"b1"}

    # With a lost cursor, the ingested batch is still recognised by its content hash.
    t3 = triage_drop_location(str(drop), {}, ingested_hashes(ws))
    status = {d.name: d.status for d in t3.decisions}
    assert status["b1"] == INGESTED and status["b1-again"] == DUPLICATE and t3.new == []
    # A registered batch whose files change afterwards is reported, never re-ingested.
    (drop / "b1" / "images" / "extra.png").write_bytes(sku_png("sku-red", 77))
    t4 = triage_drop_location(str(drop), t3.state, ingested_hashes(ws))
    changed = {d.name: d for d in t4.changed}
    assert changed["b1"].status == REJECTED and "immutable" in changed["b1"].reason and t4.new == []
    # The partial batch completes: it becomes new.
    write_batch(drop, "partial", {"sku-red": 1}, seed0=2)
    t5 = triage_drop_location(str(drop), t4.state, ingested_hashes(ws))
    assert [d.name for d in t5.new] == ["partial"]


def test_batches_in_an_s3_drop_location(tmp_path, s3):
    from skurec.catalogue.batches import INCOMPLETE, NEW, discover_batches, inspect_batch, triage_drop_location

    local = tmp_path / "drop"
    write_batch(local, "s3-batch", {"sku-red": 2, "sku-green": 1}, seed0=3)
    write_batch(local, "s3-partial", {"sku-red": 1}, seed0=4, manifest=False)
    bucket = s3.new_bucket()
    s3.upload_tree(local, bucket, "drop")
    uri = f"s3://{bucket}/drop"
    found = {b.name: b for b in discover_batches(uri, s3.storage_options)}
    assert found["s3-batch"].manifest_uri == f"s3://{bucket}/drop/s3-batch/manifest.csv"
    remote = inspect_batch(found["s3-batch"], s3.storage_options)
    local_hash = inspect_batch(discover_batches(str(local))[0]).content_hash
    assert remote.ok and remote.content_hash == local_hash  # same content, same hash, wherever it lives
    triage = triage_drop_location(uri, {}, {}, s3.storage_options)
    assert {d.name: d.status for d in triage.decisions} == {"s3-batch": NEW, "s3-partial": INCOMPLETE}
