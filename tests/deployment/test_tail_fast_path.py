"""The labelling loop fills the tail: a new SKU arriving in a labelled batch with its first ``min_shots`` images is
recognisable after that batch's run through the fast path (no retrain), in the tail tier; a SKU below ``min_shots``
stays reported, not trained; once the SKU has ``min_samples`` images the next full rebuild puts it in the head tier.
Runs the real Dagster graph on the tiny random ViT (coloured, patterned SKUs: separable by random features)."""

from __future__ import annotations

import json

import dagster as dg
from support.loop import BASE_SKUS, FAST_RUN_CONFIG, NEW_SKU, initial_build, sku_png, write_batch, write_catalogue

MIN_SAMPLES, MIN_SHOTS = 10, 5


def _resources(work, cat, drop) -> dict:
    from skurec_resources import CatalogueResource, EncoderResource, LabellingLoopResource, StorageResource

    return {
        "storage": StorageResource(workdir=str(work)),
        "catalogue": CatalogueResource(location=str(cat), min_samples=MIN_SAMPLES, min_shots=MIN_SHOTS),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=32, device="cpu", num_workers=1),
        "loop": LabellingLoopResource(drop_location=str(drop)),
    }


def test_a_new_sku_with_min_shots_images_is_recognised_by_the_fast_path_then_joins_the_head(tmp_path, capsys):
    from skurec.layout import audit_summary
    from skurec.serving.recognizer import Recognizer
    from skurec.store.model_store import ModelStore
    from skurec.store.workspace import Workspace
    from skurec_assets.cli import main as cli_main
    from skurec_assets.definitions import build_definitions
    from skurec_assets.loop_pass import run_loop_in_process

    cat = write_catalogue(tmp_path / "cat", {s: 12 for s in BASE_SKUS})
    drop, work = tmp_path / "drop", tmp_path / "work"
    defs = build_definitions(_resources(work, cat, drop))
    instance = dg.DagsterInstance.ephemeral()
    ws = Workspace(str(work))
    store = ModelStore(ws)
    assert initial_build(defs, instance).success
    first = store.deployed_id()
    assert store.card(first)["classes"]["n_head"] == 4 and store.card(first)["classes"]["n_tail"] == 0
    prime = dg.evaluate_automation_conditions(defs=defs, instance=instance)

    # ---- a batch with the first MIN_SHOTS images of a new SKU, and too few images of another one
    write_batch(drop, "batch-1", {NEW_SKU: MIN_SHOTS, "sku-cyan": MIN_SHOTS - 2}, seed0=60_000)
    p1 = run_loop_in_process(defs, instance, automation_cursor=prime.cursor)
    assert p1.success and list(p1.batch_runs) == ["batch-1"]
    tiers = ws.read_table("classes").set_index("sku_id")["tier"].to_dict()
    assert tiers == {**{s: "head" for s in BASE_SKUS}, NEW_SKU: "tail", "sku-cyan": "untrained"}
    summary = audit_summary(ws)
    assert summary["tiers"]["tail"]["n_classes"] == 1 and summary["min_shots"] == MIN_SHOTS

    deployed = store.deployed_id()
    card = store.card(deployed)
    assert deployed != first and card["source"] == "fast_path"  # no retrain
    assert card["fast_path"]["new_skus"] == [NEW_SKU] and card["fast_path"]["tier_of_new"] == {NEW_SKU: "tail"}
    assert [s["sku_id"] for s in card["fast_path"]["inactive_new_skus"]] == ["sku-cyan"]
    assert card["classes"]["tiers"][NEW_SKU] == "tail" and (card["classes"]["n_head"], card["classes"]["n_tail"]) == (
        4,
        1,
    )
    assert "sku-cyan" not in card["classes"]["list"]
    gate = card["gate_at_publication"]
    assert gate["passed"] and gate["basis"] == "head"
    # recognised right after the run, on held-out images never seen by the pipeline; the answer names its tier
    rec = Recognizer.from_workdir(work)
    for sku, seed in [(NEW_SKU, 99_999), (NEW_SKU, 99_998), ("sku-red", 99_997)]:
        assert rec.predict(sku_png(sku, seed)).sku_id == sku
    assert rec.card["classes"]["tiers"][rec.predict(sku_png(NEW_SKU, 99_997)).sku_id] == "tail"
    # `skurec predict` says which tier each answer came from
    photos = {sku: tmp_path / f"{sku}.png" for sku in (NEW_SKU, "sku-red")}
    for i, (sku, path) in enumerate(photos.items()):
        path.write_bytes(sku_png(sku, 98_000 + i))
    capsys.readouterr()
    assert cli_main(["predict", "--workdir", str(work), *map(str, photos.values())]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["sku_id"], a["tier"]) for a in answers] == [(NEW_SKU, "tail"), ("sku-red", "head")]

    # ---- more images of it arrive; the next full rebuild trains it in the head tier
    write_batch(drop, "batch-2", {NEW_SKU: MIN_SAMPLES - MIN_SHOTS + 1}, seed0=61_000)
    p2 = run_loop_in_process(defs, instance, sensor_cursor=p1.sensor_cursor, automation_cursor=p1.automation_cursor)
    assert p2.success
    assert ws.read_table("classes").set_index("sku_id").loc[NEW_SKU, "tier"] == "head"
    rebuild = defs.resolve_job_def("full_rebuild").execute_in_process(instance=instance, run_config=FAST_RUN_CONFIG)
    assert rebuild.success
    card = store.card(store.deployed_id())
    assert card["source"] == "full_rebuild" and card["classes"]["tiers"][NEW_SKU] == "head"
    assert (card["classes"]["n_head"], card["classes"]["n_tail"]) == (5, 0)
