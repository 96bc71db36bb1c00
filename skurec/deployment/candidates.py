"""Candidate models: the next model that could be deployed, from one of two paths, published and judged.

* **full rebuild**: the hierarchical model the training assets wrote to ``artifacts/hierarchical/`` (with
  ``artifacts/training_manifest.json``), published once per artifact digest;
* **fast path**: the deployed model plus every active train image it has not seen, added with
  :meth:`HierarchicalClassifier.add_classes` (new SKUs attached to a superclass, known SKUs' prototypes refreshed);
  nothing is retrained, so a new SKU is recognisable minutes after its batch lands.

:func:`build_candidate` publishes the candidate with the gate's verdict in its (immutable) card; the deployment step
(:func:`skurec.deployment.gate.decide_deployment`) judges it again against whatever is deployed at that moment.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skurec import layout
from skurec.deployment.bundle import PublishedModel, load_published, publish_model
from skurec.deployment.calibration import calibrate_threshold
from skurec.deployment.card import batches_of, build_model_card
from skurec.deployment.gate import GateConfig, GateReport, evaluate_gate, gate_key
from skurec.deployment.training_table import TABLE_COLUMNS, LineageError, image_ids_sha256
from skurec.evaluation import GAP_TOLERANCE
from skurec.models import load_classifier
from skurec.store.artifacts import artifact_exists, files_digest, read_files
from skurec.store.model_store import ModelStore, new_model_id, now_iso
from skurec.store.workspace import Workspace

SOURCE_FULL = "full_rebuild"
# The hierarchy is deployed unless the tuned flat model beats it on validation by more than this (0.5 point).
SOURCE_FAST = "fast_path"


@dataclass
class CandidateResult:
    """A published candidate (``model_id``) or, when ``model_id`` is None, why no candidate was needed."""

    source: str | None
    model_id: str | None
    reason: str
    card: dict | None = None
    gate: GateReport | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _audit_snapshot(ws: Workspace) -> str:
    return layout.catalogue_snapshot(ws)


def _sku_names(ws: Workspace) -> dict[str, str]:
    if not ws.has_table("classes"):
        return {}
    t = ws.read_table("classes", columns=["sku_id", "sku_name"])
    return {r.sku_id: r.sku_name for r in t.itertuples() if isinstance(r.sku_name, str) and r.sku_name}


def _tiers(ws: Workspace) -> dict[str, str]:
    from skurec.catalogue.audit import tiers_of_classes

    return tiers_of_classes(ws.read_table("classes")) if ws.has_table("classes") else {}


def published_artifact_digests(ws: Workspace) -> dict[str, str]:
    """artifact digest -> model id of every bundle published from ``artifacts/hierarchical``."""
    return {r.card["artifact_digest"]: r.model_id for r in ModelStore(ws).list() if r.card.get("artifact_digest")}


def prepare_full_rebuild(ws: Workspace, model_id: str | None = None) -> tuple[PublishedModel | None, str]:
    """The model in ``artifacts/hierarchical`` with its card and training table, in memory (not yet published).

    Returns ``(None, why)`` when there is no trained model or it is already published. Raises
    :class:`LineageError` / ``TamperedModelError`` when the training artifacts are inconsistent (an interrupted
    training run): such a model must never reach the gate.
    """
    if not ws.exists(layout.TRAINING_MANIFEST) or not artifact_exists(ws, layout.HIERARCHICAL_DIR):
        return None, "no trained hierarchical model yet (run the full_rebuild job)"
    files = read_files(ws, layout.HIERARCHICAL_DIR)  # verifies every file: a half-written artifact raises here
    digest = files_digest(files)
    done = published_artifact_digests(ws)
    if digest in done:
        return None, f"the trained model {digest[:12]} is already published as {done[digest]}"
    manifest = ws.read_json(layout.TRAINING_MANIFEST)
    if manifest.get("hierarchical_digest") not in (None, digest):
        raise LineageError(
            f"{layout.HIERARCHICAL_DIR} does not match {layout.TRAINING_MANIFEST} (a training run was interrupted "
            "between the two writes); re-run the full_rebuild job"
        )
    model = load_classifier(files, device="cpu")
    rel = manifest.get("training_set") or layout.TRAINING_SET
    if not ws.exists(rel):
        raise LineageError(f"the training manifest names {rel} but it does not exist; re-run the full_rebuild job")
    table = ws.read_parquet(rel).to_pandas()
    train_ids = table.loc[table["split"] == "train", "image_id"].tolist()
    expected = manifest.get("train_image_ids_sha256")
    if expected and image_ids_sha256(train_ids) != expected:
        raise LineageError(
            f"{rel} does not list the images that trained this model (its train image ids hash differs from the "
            "training manifest: the catalogue changed during training); re-run the full_rebuild job"
        )
    missing = sorted(set(model.classes) - set(table.loc[table["split"] == "train", "sku_id"]))
    if missing:
        raise LineageError(f"{len(missing)} model classes have no training rows in {rel}, e.g. {missing[:5]}")
    sc_doc = layout.superclasses_doc(ws)
    evaluation = {f"train/{k}": v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))}
    evaluation.update(_evaluation_summary(ws, digest))
    n_superclasses = int(model.n_superclasses)
    model, choice = better_of_hierarchy_and_flat(ws, model)
    model_id = model_id or new_model_id("hier" if choice["deployed"] == "hierarchical" else "flat")
    table = table.assign(added_by=model_id)
    card = build_model_card(
        source=SOURCE_FULL,
        model=model,
        table=table,
        catalogue_snapshot=manifest.get("catalogue_snapshot", ""),
        encoder=manifest.get("encoder", {}),
        superclasses={
            "version": manifest.get("superclass_version") or sc_doc.get("version"),
            "n_superclasses": n_superclasses,
            "method": sc_doc.get("method"),
        },
        training_config=manifest.get("configs", {}),
        seeds=manifest.get("seeds", {}),
        evaluation=evaluation,
        batches=batches_of(ws, train_ids),
        sku_names=_sku_names(ws),
        tiers=_tiers(ws),
        extra={
            "artifact_digest": digest,
            "training_code_version": manifest.get("code_version"),
            "model_choice": choice,
        },
    )
    why = f"trained model {digest[:12]} from the full rebuild"
    if choice["deployed"] != "hierarchical":
        why += f"; {choice['reason']}"
    return PublishedModel(model_id, model, card, table), why


def better_of_hierarchy_and_flat(ws: Workspace, hierarchical: Any, margin: float = GAP_TOLERANCE) -> tuple[Any, dict]:
    """The model a full rebuild publishes: the hierarchical model, unless the tuned flat linear baseline trained on
    the same embeddings beats it on the validation split by more than ``margin`` (then the flat model, which the
    card says, with both numbers; a flat model has no new-SKU fast path, so the next batch waits for a rebuild)."""
    from skurec.embeddings.training_data import load_training_data

    choice: dict[str, Any] = {"deployed": "hierarchical", "margin": margin}
    if not artifact_exists(ws, layout.FLAT_LINEAR_DIR):
        return hierarchical, {**choice, "reason": "no flat baseline was trained"}
    data = load_training_data(ws)
    if len(data.val) == 0:
        return hierarchical, {**choice, "reason": "no validation images to compare on"}
    flat = load_classifier(read_files(ws, layout.FLAT_LINEAR_DIR), device="cpu")
    y = data.val.y.astype(str)
    scores = {
        name: float(np.mean(m.predict_topk(data.val.X, k=1).labels[:, 0].astype(str) == y))
        for name, m in (("hierarchical", hierarchical), ("flat_linear", flat))
    }
    choice["val_top1"] = scores
    if set(flat.classes) == set(hierarchical.classes) and scores["flat_linear"] > scores["hierarchical"] + margin:
        return flat, {
            **choice,
            "deployed": "flat_linear",
            "reason": (
                f"the flat linear model beats the hierarchy on validation ({scores['flat_linear']:.4f} "
                f"vs {scores['hierarchical']:.4f}, margin {margin}): the flat model is deployed"
            ),
        }
    return hierarchical, {**choice, "reason": "the hierarchy is not worse than the flat linear model on validation"}


def _evaluation_summary(ws: Workspace, digest: str) -> dict[str, float]:
    """Top-1/top-3 numbers of reports/evaluation.json when it says it evaluated exactly this model (its
    ``hierarchical_digest``); an evaluation of another model is never attached to this card."""
    ev = layout.evaluation(ws)
    if ev is None:
        return {}
    if ev.get("hierarchical_digest") != digest:
        return {}
    out: dict[str, float] = {}
    for variant, v in (ev.get("variants") or {}).items():
        for name, r in (v.get("models") or {}).items():
            for metric in ("top1", "top3"):
                if isinstance(r, dict) and isinstance(r.get(metric), (int, float)):
                    out[f"eval/{ev.get('split', 'eval')}/{variant}/{name}/{metric}"] = float(r[metric])
    return out


def prepare_fast_path(
    ws: Workspace, data: Any, attach: str = "coarse", model_id: str | None = None
) -> tuple[PublishedModel | None, str, dict[str, Any]]:
    """The deployed model extended with every active train image it has not seen (in memory, not published).

    Returns ``(None, why, details)`` when there is nothing to add, no deployed model, or the encoder changed.
    """
    base, why_not, details = _fast_path_base(ws, data)
    if base is None:
        return None, why_not, details
    seen = set(base.table["image_id"])
    new_idx = [i for i, image_id in enumerate(data.train.image_ids) if image_id not in seen]
    if not new_idx:
        return None, f"no train image that {base.model_id} has not seen: nothing to add", details
    # the new images' fit rows: each image plus its train-time views when the encoder has them
    fit_idx = [i for i, image_id in enumerate(data.fit.image_ids) if image_id not in seen]
    result = base.model.add_classes(data.fit.X[fit_idx], data.fit.y[fit_idx], attach=attach)
    model_id = model_id or new_model_id("fast")
    table = _fast_path_table(base, data, new_idx, seen, model_id)
    tiers = _tiers(ws)
    fast = {
        "new_skus": sorted(result.superclass_of_new),
        "superclass_of_new": {k: int(v) for k, v in sorted(result.superclass_of_new.items())},
        "refreshed_skus": sorted(result.refreshed),
        "n_images_added": int(len(new_idx)),
        "n_fit_rows_added": int(len(fit_idx)),  # the images plus their train-time views
        "attach_rule": result.attach_rule,
        "inactive_new_skus": details["inactive_new_skus"],
        # a new SKU enters in the tail tier (>= min_shots images) and joins the head on a full rebuild (>= min_samples)
        "tier_of_new": {k: tiers.get(k, "tail") for k in sorted(result.superclass_of_new)},
    }
    card = _fast_path_card(ws, data, base, result, table, fast, attach, tiers)
    why = f"{len(fast['new_skus'])} new SKU(s) and {len(new_idx)} image(s) added to {base.model_id} without retraining"
    return PublishedModel(model_id, result.model, card, table), why, {**details, **fast}


def _fast_path_base(ws: Workspace, data: Any) -> tuple[PublishedModel | None, str, dict[str, Any]]:
    """The deployed model the fast path extends, or ``(None, why not, details)``: nothing deployed, another encoder,
    a model kind without ``add_classes``."""
    base_id = ModelStore(ws).deployed_id()
    if base_id is None:
        return None, "no deployed model to extend yet (the first model comes from full_rebuild)", {}
    base = load_published(ws, base_id)
    base_enc = base.card.get("encoder", {}).get("encoder_id")
    details: dict[str, Any] = {
        "base_model_id": base_id,
        "inactive_new_skus": _inactive_new_skus(ws, set(base.model.classes)),
    }
    if base_enc != data.encoder_id:
        why = (
            f"the encoder changed ({base_enc} -> {data.encoder_id}): the fast path cannot extend the "
            "deployed model; run the full_rebuild job"
        )
        return None, why, details
    if not hasattr(base.model, "add_classes"):
        return None, f"deployed model {base_id} ({type(base.model).__name__}) has no fast path", details
    return base, "", details


def _fast_path_table(
    base: PublishedModel, data: Any, new_idx: list[int], seen: set[str], model_id: str
) -> pd.DataFrame:
    """The base model's training table plus the new train images and the validation / test images the candidate
    will be judged on (recorded, never trained on)."""
    added = pd.DataFrame(
        {
            "image_id": [data.train.image_ids[i] for i in new_idx],
            "sku_id": data.train.y[new_idx].astype(str),
            "split": "train",
            "added_by": model_id,
        }
    )
    held = [
        pd.DataFrame(
            {"image_id": s.image_ids, "sku_id": np.asarray(s.y).astype(str), "split": name, "added_by": model_id}
        )
        for name, s in (("val", data.val), ("test", data.test))
        if len(s)
    ]
    held = [h[~h["image_id"].isin(seen)] for h in held]
    base_rows = (
        base.table[TABLE_COLUMNS]
        if set(TABLE_COLUMNS) <= set(base.table.columns)
        else pd.DataFrame(columns=TABLE_COLUMNS)
    )
    return pd.concat([base_rows, added, *held], ignore_index=True)


def _fast_path_card(
    ws: Workspace,
    data: Any,
    base: PublishedModel,
    result: Any,
    table: pd.DataFrame,
    fast: dict[str, Any],
    attach: str,
    tiers: dict[str, str],
) -> dict:
    """The extended model's card: the base's superclasses plus the new SKUs' attachments, its training config and
    seeds, the fast-path record."""
    train_ids = table.loc[table["split"] == "train", "image_id"].tolist()
    sc_base = dict(base.card.get("superclasses", {}))
    attached = {**sc_base.get("attached", {}), **{k: int(v) for k, v in result.superclass_of_new.items()}}
    assignment = json.dumps(result.model.superclass_of_class(), sort_keys=True).encode()
    return build_model_card(
        source=SOURCE_FAST,
        model=result.model,
        table=table,
        catalogue_snapshot=_audit_snapshot(ws),
        encoder=data.encoder,
        superclasses={**sc_base, "attached": attached, "assignment_sha256": hashlib.sha256(assignment).hexdigest()},
        training_config={**base.card.get("training_config", {}), "fast_path": {"attach_rule": attach}},
        seeds=base.card.get("seeds", {}),
        evaluation={},
        batches=batches_of(ws, train_ids),
        base_model_id=base.model_id,
        fast_path=fast,
        sku_names=_sku_names(ws),
        tiers=tiers,
        extra={"training_code_version": base.card.get("training_code_version")},
    )


def _inactive_new_skus(ws: Workspace, known: set[str]) -> list[dict[str, Any]]:
    """SKUs the model does not know that are still below the training bar (fewer than ``min(min_shots,
    min_samples)`` labelled images: reported, not trained on)."""
    if not ws.has_table("classes"):
        return []
    c = ws.read_table("classes")
    c = c[(c["status"] != "active") & ~c["sku_id"].isin(known)]
    # n_labelled: the images that count towards the tiers (not pinned to test)
    return [
        {"sku_id": r.sku_id, "n_images": int(r.n_images), "n_labelled": int(r.n_images) - int(r.n_test)}
        for r in c.itertuples()
    ]


def build_candidate(ws: Workspace, attach: str = "coarse", gate: GateConfig | None = None) -> CandidateResult:
    """Publish the next candidate and judge it: a newly trained full model if there is one, else the fast-path
    extension of the deployed model, else nothing (``model_id`` None, ``reason`` says why).

    The gate is evaluated before publication so that its numbers are part of the (immutable) model card; the verdict
    is recorded with its key (``details["gate_verdict"]``, see :func:`skurec.deployment.gate.judge`), so the gate
    check and the deployment step reuse it unless the deployed model, the catalogue or the thresholds changed since.
    """
    from skurec.embeddings.training_data import TrainingDataError, load_training_data

    gate = gate or GateConfig()
    cand, why_full = prepare_full_rebuild(ws)
    details: dict[str, Any] = {}
    data = None
    if cand is None:
        try:
            data = load_training_data(ws)
        except TrainingDataError as exc:
            return CandidateResult(None, None, f"{why_full}; the catalogue cannot be used yet: {exc}")
        cand, why_fast, details = prepare_fast_path(ws, data, attach=attach)
        if cand is None:
            return CandidateResult(None, None, f"{why_full}; {why_fast}", details=details)
        why = why_fast
    else:
        why = why_full
    report = evaluate_gate(ws, cand, gate, data)
    previous = None  # a fast-path candidate keeps its base's calibration while it still fits (calibrate_outputs)
    if cand.card.get("source") == SOURCE_FAST and cand.card.get("base_model_id"):
        previous = ModelStore(ws).card(cand.card["base_model_id"]).get("recognition")
    cand.card["recognition"] = calibrate_threshold(ws, cand.model, data, previous=previous)
    cand.card["evaluation"] = {
        **cand.card.get("evaluation", {}),
        "gate/candidate_top1": report.candidate_top1,
        "gate/deployed_top1": report.deployed_top1,
        "gate/n_val": report.n_val,
        "gate/zero_accuracy_share": report.zero_accuracy_share,
        "gate/basis": report.basis,
        "gate/n_val_tail": report.n_val_tail,
        "gate/tail_top1": report.tail_top1,
        "gate/tail_zero_accuracy_share": report.tail_zero_accuracy_share,
    }
    cand.card["gate_at_publication"] = report.to_dict()
    rec = publish_model(ws, cand.model, cand.card, cand.table, model_id=cand.model_id)
    details = {**details, "gate_verdict": {"key": gate_key(ws, rec.model_id, gate), "report": report.to_dict()}}
    source = rec.card.get("source")
    return CandidateResult(source, rec.model_id, why, rec.card, report, details)


def record_candidate(ws: Workspace, candidate: CandidateResult) -> dict:
    """Write ``candidates/<model_id>.json`` (the audit trail of every candidate) and return the record: the value of
    the ``candidate_model`` asset that the gate check and the deployment step receive through the graph."""
    doc = {
        "model_id": candidate.model_id,
        "source": candidate.source,
        "reason": candidate.reason,
        "created_at": now_iso(),
        "gate": candidate.gate.to_dict() if candidate.gate else None,
        "details": candidate.details,
    }
    ws.write_json(layout.candidate_record(candidate.model_id), doc)
    return doc
