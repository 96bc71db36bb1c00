"""The gate per tier: the head is judged as before tiers existed (on head validation images only), the tail on its own
floor, so a weak tail never blocks a good head and a broken head is never hidden by tail volume. Synthetic embeddings
and a real (prototype) classifier trained on relabelled rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support.deploy import ENCODER, add_images

from skurec.deployment.bundle import PublishedModel
from skurec.deployment.gate import GateConfig, evaluate_gate
from skurec.deployment.training_table import training_table_sha256
from skurec.embeddings.training_data import load_training_data
from skurec.models import FlatPrototype
from skurec.store.workspace import Workspace

HEAD = [f"c{i}" for i in range(6)]
TAIL = [f"c{i}" for i in range(6, 16)]


def _tiered_workspace(tmp_path) -> Workspace:
    """6 head SKUs (12 images, 2 val) and 10 tail SKUs (6 images, 1 val), on orthogonal class centres."""
    ws = Workspace(str(tmp_path / "work"))
    add_images(ws, {c: 12 for c in HEAD}, seed=0, n_val=2)
    add_images(ws, {c: 6 for c in TAIL}, seed=1, n_val=1)
    classes = ws.read_table("classes")
    classes["tier"] = np.where(classes["sku_id"].isin(TAIL), "tail", "head")
    ws.write_table("classes", classes)
    return ws


def _candidate(ws: Workspace, relabel: dict[str, str]) -> PublishedModel:
    """A prototype classifier trained on the train rows with some labels swapped (``relabel``: sku -> trained as)."""
    data = load_training_data(ws)
    y = np.asarray([relabel.get(c, c) for c in data.train.y.tolist()])
    model = FlatPrototype.fit(data.train.X, y)
    table = pd.DataFrame(
        {
            "image_id": data.train.image_ids + data.val.image_ids,
            "sku_id": list(y) + data.val.y.tolist(),
            "split": ["train"] * len(data.train) + ["val"] * len(data.val),
        }
    )
    card = {"encoder": ENCODER, "training_set": {"sha256": training_table_sha256(table)}}
    return PublishedModel("cand-" + "-".join(sorted(relabel)) or "cand", model, card, table)


def _rotation(skus: list[str]) -> dict[str, str]:
    return {a: b for a, b in zip(skus, skus[1:] + skus[:1])}


def test_a_good_model_passes_and_reports_both_tiers(tmp_path):
    ws = _tiered_workspace(tmp_path)
    report = evaluate_gate(ws, _candidate(ws, {}))
    assert report.passed, report.reasons
    assert (report.n_val_head, report.n_val_tail, report.n_val) == (12, 10, 22)
    assert report.basis == "head" and report.n_validated_classes == 6 and report.n_validated_tail_classes == 10
    assert report.candidate_top1 == 1.0 and report.tail_top1 == 1.0 and report.candidate_top1_all == 1.0


def test_a_weak_tail_does_not_block_a_good_head(tmp_path):
    ws = _tiered_workspace(tmp_path)
    report = evaluate_gate(ws, _candidate(ws, _rotation(TAIL[:3])))  # 3 of 10 tail SKUs dead
    assert report.tail_zero_accuracy_classes == sorted(TAIL[:3]) and report.tail_zero_accuracy_share == 0.3
    assert report.tail_top1 == pytest.approx(0.7)
    # the head is judged on its own images: untouched by the weak tail
    assert report.candidate_top1 == 1.0 and report.zero_accuracy_classes == [] and report.zero_ok
    assert report.passed, report.reasons
    # one rule over all classes (as before tiers) would have refused it: 3 dead of 16 > 5 %
    assert 3 / 16 > GateConfig().max_zero_accuracy_share
    assert report.candidate_top1_all == pytest.approx(19 / 22)


def test_a_dead_tail_is_refused_on_its_own_floor(tmp_path):
    ws = _tiered_workspace(tmp_path)
    cand = _candidate(ws, _rotation(TAIL))  # every tail SKU dead
    report = evaluate_gate(ws, cand)
    assert report.tail_zero_accuracy_share == 1.0 and not report.tail_ok
    assert report.accuracy_ok and report.zero_ok and report.inputs_ok and not report.passed
    assert any(r.startswith("tail tier: 10/10 validated tail SKUs") for r in report.reasons)
    assert evaluate_gate(ws, cand, GateConfig(tail_max_zero_accuracy_share=1.0)).passed
    with pytest.raises(ValueError, match="tail_max_zero_accuracy_share"):
        GateConfig(tail_max_zero_accuracy_share=1.5)


def test_a_broken_head_is_not_hidden_by_tail_volume(tmp_path):
    ws = _tiered_workspace(tmp_path)
    config = GateConfig(max_zero_accuracy_share=0.15)
    report = evaluate_gate(ws, _candidate(ws, {"c0": "c1", "c1": "c0"}), config)  # two head SKUs swapped
    assert report.zero_accuracy_classes == ["c0", "c1"] and report.zero_accuracy_share == pytest.approx(2 / 6)
    assert not report.zero_ok and not report.passed and report.tail_ok
    assert report.candidate_top1 == pytest.approx(8 / 12)
    # counted over every validated class the 2 dead SKUs would have passed (2 / 16 <= 15 %): tail volume hid them
    assert 2 / 16 <= config.max_zero_accuracy_share


def test_a_catalogue_with_only_a_tail_is_judged_on_all_its_validation(tmp_path):
    ws = _tiered_workspace(tmp_path)
    classes = ws.read_table("classes")
    classes["tier"] = "tail"
    ws.write_table("classes", classes)
    report = evaluate_gate(ws, _candidate(ws, {}))
    assert report.basis.startswith("all") and report.n_val_head == 0 and report.n_validated_classes == 16
    assert report.passed, report.reasons


def test_a_classes_table_without_tiers_is_all_head(tmp_path):
    """Work directories audited before tiers existed: every active class counts as head (the gate as before)."""
    ws = _tiered_workspace(tmp_path)
    ws.write_table("classes", ws.read_table("classes").drop(columns="tier"))
    report = evaluate_gate(ws, _candidate(ws, _rotation(TAIL[:3])))
    assert report.n_val_tail == 0 and report.n_validated_classes == 16
    assert not report.zero_ok  # 3 / 16 dead over one rule, as before
