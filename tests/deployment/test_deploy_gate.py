"""The deployment gate and publication: promotion only when every criterion passes, refusals and interrupted
training never touch the deployed model. Synthetic embeddings (no encoder) keep these tests fast."""

from __future__ import annotations

import dataclasses

import dagster as dg
import pytest
from support.deploy import (
    ENCODER,
    _centre,
    add_images,
    deploy_first,
    make_workspace,
    write_trained_model,
)

from skurec.deployment import gate
from skurec.deployment.candidates import build_candidate
from skurec.deployment.gate import GateConfig, decide_deployment, evaluate_gate
from skurec.deployment.training_table import LineageError
from skurec.embeddings.cache import EmbeddingCache
from skurec.embeddings.training_data import load_training_data
from skurec.store.artifacts import write_files
from skurec.store.model_store import ModelStore, TamperedModelError
from skurec.store.workspace import Workspace


def test_worse_candidate_is_refused_and_the_previous_model_stays(tmp_path):
    ws = make_workspace(tmp_path)
    store = ModelStore(ws)
    first = deploy_first(ws)
    files_before = store.load_files(first)

    write_trained_model(ws, shuffle=True)
    bad = build_candidate(ws)
    assert bad.source == "full_rebuild" and bad.model_id != first
    assert not bad.gate.accuracy_ok and bad.gate.candidate_top1 < bad.gate.deployed_top1 - 0.01
    decision = decide_deployment(ws, bad.model_id)
    assert not decision.deployed and decision.model_id == first
    assert any("below the deployed model" in r for r in decision.report.reasons)
    assert store.deployed_id() == first
    assert store.load_files(first) == files_before
    history = store.history()
    assert [h["event"] for h in history] == ["deployed", "refused"]
    assert history[-1]["model_id"] == bad.model_id and history[-1]["reasons"]
    # The refused bundle stays published (auditable) but is not deployed; publishing it again is a no-op.
    assert store.exists(bad.model_id)
    again = build_candidate(ws)
    assert again.model_id is None and "already published" in again.reason


def test_a_recorded_verdict_is_reused_only_while_its_key_holds(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path)
    first = deploy_first(ws)
    write_trained_model(ws, seed=1)
    cand = build_candidate(ws)
    recorded = cand.details["gate_verdict"]
    calls = []
    real = gate.evaluate_gate
    monkeypatch.setattr(gate, "evaluate_gate", lambda *a, **k: calls.append(1) or real(*a, **k))

    report, doc = gate.judge(ws, cand.model_id, GateConfig(), recorded)
    assert calls == [] and doc is recorded and report.to_dict() == recorded["report"]
    # other thresholds, another deployed model or another catalogue snapshot: judged again
    gate.judge(ws, cand.model_id, GateConfig(tolerance=0.2), recorded)
    assert len(calls) == 1
    add_images(ws, {"c0": 1}, seed=99, n_val=1)
    report2, doc2 = gate.judge(ws, cand.model_id, GateConfig(), recorded)
    assert len(calls) == 2 and doc2["key"]["snapshot"] != recorded["key"]["snapshot"]
    assert report2.n_val == report.n_val + 1
    ModelStore(ws).deploy(cand.model_id, reason="test")
    gate.judge(ws, cand.model_id, GateConfig(), doc2)
    assert len(calls) == 3 and first != cand.model_id


def test_gate_thresholds_are_configurable(tmp_path):
    ws = make_workspace(tmp_path)
    deploy_first(ws)
    write_trained_model(ws, shuffle=True)
    bad = build_candidate(ws)
    strict = evaluate_gate(ws, bad.model_id, GateConfig())
    lenient = evaluate_gate(ws, bad.model_id, GateConfig(tolerance=1.0, max_zero_accuracy_share=1.0))
    assert not strict.passed and lenient.passed
    assert lenient.candidate_top1 == strict.candidate_top1
    with pytest.raises(ValueError, match="tolerance"):
        GateConfig(tolerance=-0.1)
    with pytest.raises(ValueError, match="max_zero_accuracy_share"):
        GateConfig(max_zero_accuracy_share=2)


def test_dead_classes_fail_the_gate_even_when_accuracy_holds(tmp_path):
    ws = make_workspace(tmp_path)
    first = deploy_first(ws)
    data = load_training_data(ws)
    # A class whose validation images look like another class: no model can get it right.
    y = data.val.y
    dead = y == "c0"
    val = dataclasses.replace(data.val, X=data.val.X.copy())  # the loaded data is shared and read-only
    val.X[dead] = _centre("c1")
    data = dataclasses.replace(data, val=val)
    report = evaluate_gate(ws, first, GateConfig(), data=data)  # vs itself: accuracy criterion is trivially met
    assert report.accuracy_ok and not report.zero_ok and report.zero_accuracy_classes == ["c0"]
    assert report.zero_accuracy_share == pytest.approx(1 / 6)
    assert evaluate_gate(ws, first, GateConfig(max_zero_accuracy_share=0.2), data=data).zero_ok


def test_input_schema_and_encoder_problems_fail_the_gate(tmp_path):
    ws = make_workspace(tmp_path)
    first = deploy_first(ws)
    images = ws.read_table("images")
    images.loc[0, "split"] = "holdout"  # violates the images schema
    ws.write_parquet(ws.table_rel("images"), images)
    report = evaluate_gate(ws, first)
    assert not report.inputs_ok and any("schema" in p for p in report.input_problems)

    ws2 = make_workspace(tmp_path / "b")
    first2 = deploy_first(ws2)
    ws2.write_json("embeddings/current_encoder.json", {**ENCODER, "encoder_id": "other@1"})
    EmbeddingCache(ws2)._write_part("other@1", *EmbeddingCache(ws2).load(ENCODER["encoder_id"]))
    report = evaluate_gate(ws2, first2)
    assert not report.inputs_ok and any("encoder" in p for p in report.input_problems)
    # The fast path refuses to extend a model built on another encoder.
    cand = build_candidate(ws2)
    assert cand.model_id is None and "encoder changed" in cand.reason


def test_interrupted_training_leaves_the_deployed_model_untouched(tmp_path, monkeypatch):
    ws = make_workspace(tmp_path)
    store = ModelStore(ws)
    first = deploy_first(ws)
    files_before = store.load_files(first)
    pointer_before = ws.read_bytes("models/deployed.json")
    listed_before = [r.model_id for r in store.list()]

    # 1) training crashes half-way through writing its artifact: the new coarse head is written, the fine head and
    #    the index are not.
    real_write = Workspace.write_bytes

    def crash_after_first_file(self, rel, data):
        if rel.startswith("artifacts/hierarchical/fine/"):
            raise RuntimeError("simulated crash during training")
        return real_write(self, rel, data)

    monkeypatch.setattr(Workspace, "write_bytes", crash_after_first_file)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_trained_model(ws, shuffle=True, seed=3)
    monkeypatch.setattr(Workspace, "write_bytes", real_write)
    with pytest.raises((TamperedModelError, LineageError)):
        build_candidate(ws)  # the half-written artifact is detected and never reaches the gate

    # 2) publication crashes after the first bundle file: no card -> the bundle is invisible.
    write_trained_model(ws, seed=4)

    def crash_in_bundle(self, rel, data):
        if rel.startswith("models/") and "/lineage/" in rel:
            raise OSError("simulated disk failure")
        return real_write(self, rel, data)

    monkeypatch.setattr(Workspace, "write_bytes", crash_in_bundle)
    with pytest.raises(OSError, match="simulated disk failure"):
        build_candidate(ws)
    monkeypatch.setattr(Workspace, "write_bytes", real_write)

    assert store.deployed_id() == first
    assert ws.read_bytes("models/deployed.json") == pointer_before
    assert store.load_files(first) == files_before
    assert [r.model_id for r in store.list()] == listed_before
    assert [h["event"] for h in store.history()] == ["deployed"]


def test_failed_candidate_blocks_deployment_in_dagster(tmp_path):
    from skurec_assets.deploy import candidate_gate, candidate_model, deployed_model
    from skurec_resources import LabellingLoopResource, StorageResource

    ws = make_workspace(tmp_path)
    store = ModelStore(ws)
    resources = {
        "storage": StorageResource(workdir=ws.root),
        "loop": LabellingLoopResource(drop_location=str(tmp_path / "drop")),
    }
    assets = [candidate_model, deployed_model, candidate_gate]
    write_trained_model(ws)
    ok = dg.materialize(assets, resources=resources)
    first = store.deployed_id()
    assert ok.success and first is not None
    meta = {k: v.value for k, v in ok.asset_materializations_for_node("deployed_model")[0].metadata.items()}
    assert meta["decision"] == "deployed" and meta["model_id"] == first

    # A training run that died mid-write: candidate_model fails, deployed_model never runs.
    write_trained_model(ws, shuffle=True)
    ws.write_bytes("artifacts/hierarchical/tensors.safetensors", b"truncated")
    failed = dg.materialize(assets, resources=resources, raise_on_error=False)
    assert not failed.success
    assert failed.asset_materializations_for_node("deployed_model") == []
    assert store.deployed_id() == first

    # Nothing new: candidate_model materialises nothing and deployed_model is skipped (not re-materialised).
    write_trained_model(ws)
    noop_first = dg.materialize(assets, resources=resources)  # publishes the retrained model (passes the gate)
    assert noop_first.success
    deployed = store.deployed_id()
    noop = dg.materialize(assets, resources=resources)
    assert noop.success
    assert noop.asset_materializations_for_node("candidate_model") == []
    assert noop.asset_materializations_for_node("deployed_model") == []
    assert store.deployed_id() == deployed


def test_training_table_mismatch_is_an_error(tmp_path):
    ws = make_workspace(tmp_path)
    write_trained_model(ws)
    t = ws.read_parquet("artifacts/training_set.parquet").to_pandas()
    ws.write_parquet("artifacts/training_set.parquet", t.iloc[1:])  # one training image missing from the record
    with pytest.raises(LineageError, match="does not list the images"):
        build_candidate(ws)


def test_full_rebuild_publishes_the_flat_model_when_it_beats_the_hierarchy_on_validation(tmp_path):
    from skurec.models import fit_flat_softmax

    ws = make_workspace(tmp_path)
    write_trained_model(ws, shuffle=True)  # a bad hierarchy (shuffled labels) ...
    data = load_training_data(ws)
    write_files(ws, "artifacts/flat_linear", fit_flat_softmax(data.train.X, data.train.y).to_files())  # ... a good flat
    cand = build_candidate(ws)
    choice = cand.card["model_choice"]
    assert choice["deployed"] == "flat_linear" and cand.model_id.startswith("flat-")
    assert choice["val_top1"]["flat_linear"] > choice["val_top1"]["hierarchical"] + choice["margin"]
    assert cand.card["kind"] == "flat_softmax" and "flat linear model beats the hierarchy" in cand.reason
    assert "## Which model" in ModelStore(ws).card_markdown(cand.model_id)

    # A hierarchy that is not worse stays the deployed kind, and its card says why.
    ws2 = make_workspace(tmp_path / "second")
    write_trained_model(ws2)
    d2 = load_training_data(ws2)
    write_files(ws2, "artifacts/flat_linear", fit_flat_softmax(d2.train.X, d2.train.y).to_files())
    cand2 = build_candidate(ws2)
    assert cand2.card["model_choice"]["deployed"] == "hierarchical" and cand2.model_id.startswith("hier-")
