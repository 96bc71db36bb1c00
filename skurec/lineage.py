"""Model lineage and deployment: model cards, publishing bundles, candidate models and the deployment gate.

Every model that can ever be deployed is a :class:`~skurec.model_store.ModelStore` bundle carrying

* the model files (``to_files()`` of the classifier, SHA-256 verified on load),
* ``lineage/training_images.parquet``: the exact ``(image_id, sku_id, split, added_by)`` table the model was built
  from ("which images and which labels trained this?" is answered by reading it),
* ``model_card.json`` + ``model_card.md``: catalogue snapshot, batches, encoder id and weights SHA-256, superclass
  version, code version (git commit + package version), training configuration, seeds and evaluation numbers.

Candidates come from two paths (:func:`build_candidate`):

* **full rebuild**: the hierarchical model the training assets wrote to ``artifacts/hierarchical/`` (with
  ``artifacts/training_manifest.json``), published once per artifact digest;
* **fast path**: the deployed model plus every active train image it has not seen, added with
  :meth:`HierarchicalClassifier.add_classes` (new SKUs attached to a superclass, known SKUs' prototypes refreshed);
  nothing is retrained, so a new SKU is recognisable minutes after its batch lands.

The **gate** (:func:`evaluate_gate`) compares a candidate with the deployed model on the current validation split;
:func:`decide_deployment` moves the deployment pointer only when every gate criterion passes. A refused or failed
candidate never touches the pointer or the deployed bundle. No Dagster import here.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skurec.model_store import ModelRecord, ModelStore, new_model_id, now_iso, sha256_hex
from skurec.storage import Workspace

log = logging.getLogger(__name__)

CARD_SCHEMA = "skurec-model-card/1"
LINEAGE_TABLE = "lineage/training_images.parquet"
HIERARCHICAL_DIR = "artifacts/hierarchical"
TRAINING_MANIFEST = "artifacts/training_manifest.json"
SUPERCLASSES_JSON = "artifacts/superclasses.json"
AUDIT_SUMMARY = "reports/audit_summary.json"
EVALUATION_JSON = "reports/evaluation.json"
CANDIDATES_DIR = "candidates"
LATEST_CANDIDATE = f"{CANDIDATES_DIR}/latest.json"
TABLE_COLUMNS = ["image_id", "sku_id", "split", "added_by"]

SOURCE_FULL = "full_rebuild"
SOURCE_FAST = "fast_path"


class LineageError(RuntimeError):
    """A model cannot be published or judged because its inputs are inconsistent (message says which and why)."""


# ------------------------------------------------------------------------------------------------ hashes / code
def image_ids_sha256(image_ids: Sequence[str]) -> str:
    """SHA-256 of a set of image ids (sorted, newline-joined): the ``train_image_ids_sha256`` of the manifest."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in image_ids)).encode()).hexdigest()


def training_table_sha256(table: pd.DataFrame) -> str:
    """Order-free SHA-256 of an (image_id, sku_id, split) table: identical labels and splits <=> identical hash."""
    rows = sorted(f"{r.image_id}\t{r.sku_id}\t{r.split}" for r in table[["image_id", "sku_id", "split"]].itertuples())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_version_info() -> dict[str, Any]:
    """Package version and, when the code runs from a git checkout, the commit and whether the tree was dirty.

    ``SKUREC_GIT_COMMIT`` overrides the commit (container images built without ``.git``).
    """
    try:
        from importlib.metadata import version

        pkg = version("skurec")
    except Exception:  # not installed (running from a source tree)
        pkg = "unknown"
    commit = os.environ.get("SKUREC_GIT_COMMIT") or None
    dirty = None
    if commit is None:
        repo = Path(__file__).resolve().parent.parent
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=5, check=True).stdout.strip() or None
            status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5, check=True).stdout
            dirty = bool(status.strip())
        except Exception:  # no git, not a checkout: the package version still identifies the code
            commit = None
    return {"package": "skurec", "package_version": pkg, "git_commit": commit, "git_dirty": dirty}


# ------------------------------------------------------------------------------------------------ tables
def table_to_parquet(table: pd.DataFrame) -> bytes:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise LineageError(f"training table lacks columns {missing}")
    t = pa.Table.from_pandas(table[TABLE_COLUMNS].astype(str).reset_index(drop=True), preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    return buf.getvalue()


def table_from_parquet(data: bytes) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(data)).to_pandas()


def model_files_only(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """A bundle's files without the lineage side files (what ``load_classifier`` needs)."""
    return {k: v for k, v in files.items() if not k.startswith("lineage/")}


# ------------------------------------------------------------------------------------------------ model card
def batches_of(ws: Workspace, image_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The labelling batches that contributed images to ``image_ids`` (with content hash and image count)."""
    from skurec.ingest import ingested_batches

    if not ws.has_table("images"):
        return []
    images = ws.read_table("images", columns=["image_id", "batch_id"])
    used = images[images["image_id"].isin(set(image_ids))]
    counts = used["batch_id"].dropna().value_counts()
    records = {r["batch_id"]: r for r in ingested_batches(ws)}
    out = []
    for batch_id, n in sorted(counts.items()):
        rec = records.get(batch_id, {})
        out.append({"batch_id": str(batch_id), "n_images": int(n), "content_hash": rec.get("content_hash"),
                    "ingested_at": rec.get("ingested_at"), "source_uri": rec.get("source_uri")})
    return out


def build_model_card(
    *,
    source: str,
    model: Any,
    table: pd.DataFrame,
    catalogue_snapshot: str,
    encoder: Mapping[str, Any],
    superclasses: Mapping[str, Any],
    training_config: Mapping[str, Any],
    seeds: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    batches: Sequence[Mapping[str, Any]],
    base_model_id: str | None = None,
    fast_path: Mapping[str, Any] | None = None,
    sku_names: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON model card (``model_id``, ``files`` and ``created_at`` are added by the model store)."""
    train = table[table["split"] == "train"]
    classes = list(model.classes)
    return {
        "schema": CARD_SCHEMA,
        "kind": getattr(model, "KIND", type(model).__name__),
        "source": source,
        "base_model_id": base_model_id,
        "catalogue_snapshot": catalogue_snapshot,
        "training_set": {
            "file": LINEAGE_TABLE,
            "sha256": training_table_sha256(table),
            "train_image_ids_sha256": image_ids_sha256(train["image_id"].tolist()),
            "n_rows": int(len(table)),
            "n_train": int(len(train)),
            "n_val": int((table["split"] == "val").sum()),
            "n_test": int((table["split"] == "test").sum()),
        },
        "classes": {"n": len(classes), "list": classes, "names": {c: sku_names[c] for c in classes if sku_names and c in sku_names}},
        "batches": [dict(b) for b in batches],
        "encoder": {k: encoder.get(k) for k in ("name", "encoder_id", "weights_sha256", "pretrained", "dim", "options", "source")},
        "superclasses": dict(superclasses),
        "code": code_version_info(),
        "training_config": dict(training_config),
        "seeds": dict(seeds),
        "evaluation": dict(evaluation),
        "fast_path": dict(fast_path) if fast_path else None,
        **dict(extra or {}),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True, default=str)[:300] + "`"
    return "" if v is None else str(v)


def model_card_markdown(card: Mapping[str, Any]) -> str:
    """Human-readable model card (the same facts as the JSON, for the UI and ``skurec lineage``)."""
    ts, enc, sc, code = card.get("training_set", {}), card.get("encoder", {}), card.get("superclasses", {}), card.get("code", {})
    lines = [
        f"# Model card: {card.get('model_id', '(unpublished)')}",
        "",
        f"- **source**: {card.get('source')}" + (f" (extends `{card['base_model_id']}`)" if card.get("base_model_id") else ""),
        f"- **created**: {card.get('created_at', '')}",
        f"- **classes**: {card.get('classes', {}).get('n')}",
        f"- **catalogue snapshot**: `{card.get('catalogue_snapshot')}`",
        f"- **training set**: `{ts.get('file')}` sha256 `{ts.get('sha256')}` — {ts.get('n_train')} train / "
        f"{ts.get('n_val')} val / {ts.get('n_test')} test rows; train image ids sha256 `{ts.get('train_image_ids_sha256')}`",
        f"- **encoder**: `{enc.get('encoder_id')}` (weights sha256 `{enc.get('weights_sha256')}`, pretrained={enc.get('pretrained')})",
        f"- **superclasses**: version `{sc.get('version')}`, {sc.get('n_superclasses')} superclasses"
        + (f", extended by the fast path ({len(sc.get('attached', {}))} SKUs attached)" if sc.get("attached") else ""),
        f"- **code**: skurec {code.get('package_version')}, git commit `{code.get('git_commit')}`"
        + (" (dirty tree)" if code.get("git_dirty") else ""),
        f"- **seeds**: {_fmt(card.get('seeds'))}",
        "",
        "## Evaluation",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in sorted(card.get("evaluation", {}).items()):
        if not isinstance(v, (dict, list)):
            lines.append(f"| {k} | {_fmt(v)} |")
    rec = card.get("recognition") or {}
    if rec.get("threshold") is not None:
        lines.append(f"| recommended unknown threshold | {_fmt(rec['threshold'])} ({rec.get('method')}) |")
    fp = card.get("fast_path")
    if fp:
        lines += ["", "## Fast path", "", f"- new SKUs: {', '.join(fp.get('new_skus', [])) or '(none)'}",
                  f"- superclass of each new SKU: {_fmt(fp.get('superclass_of_new', {}))}",
                  f"- refreshed SKUs: {len(fp.get('refreshed_skus', []))}; images added: {fp.get('n_images_added')}",
                  f"- attach rule: {fp.get('attach_rule')}"]
    batches = card.get("batches", [])
    lines += ["", f"## Batches ({len(batches)})", ""]
    if batches:
        lines += ["| batch | images | content hash | ingested |", "|---|---|---|---|"]
        lines += [f"| {b['batch_id']} | {b['n_images']} | `{(b.get('content_hash') or '')[:16]}` | {b.get('ingested_at') or ''} |"
                  for b in batches]
    else:
        lines.append("_(base catalogue only)_")
    lines += ["", "## Training configuration", "", "```json", json.dumps(card.get("training_config", {}), indent=1, sort_keys=True, default=str), "```"]
    files = card.get("files", {})
    if files:
        lines += ["", "## Files (SHA-256)", ""] + [f"- `{n}` `{h}`" for n, h in sorted(files.items())]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ publishing
def publish_model(ws: Workspace, model: Any, card: dict, table: pd.DataFrame, model_id: str | None = None,
                  prefix: str = "hier") -> ModelRecord:
    """Save ``model`` with its training table and card as a new immutable bundle (nothing is deployed here).

    The card is written last by the model store, so an exception anywhere before leaves no visible bundle.
    """
    model_id = model_id or new_model_id(prefix)
    table = table.assign(added_by=table["added_by"].fillna(model_id) if "added_by" in table else model_id)
    files = dict(model.to_files())
    files[LINEAGE_TABLE] = table_to_parquet(table)
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


def load_published(ws: Workspace, model_id: str, device: str | None = "cpu") -> PublishedModel:
    """A bundle's classifier, card and training table (every file verified against its SHA-256)."""
    from skurec.models.serialization import load_classifier

    store = ModelStore(ws)
    files = store.load_files(model_id)
    card = store.card(model_id)
    model = load_classifier(model_files_only(files), device=device)
    table = table_from_parquet(files[LINEAGE_TABLE]) if LINEAGE_TABLE in files else pd.DataFrame(columns=TABLE_COLUMNS)
    return PublishedModel(model_id, model, card, table)


# ------------------------------------------------------------------------------------------------ candidates
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
    return ws.read_json(AUDIT_SUMMARY).get("catalogue_snapshot", "") if ws.exists(AUDIT_SUMMARY) else ""


def _sku_names(ws: Workspace) -> dict[str, str]:
    if not ws.has_table("classes"):
        return {}
    t = ws.read_table("classes", columns=["sku_id", "sku_name"])
    return {r.sku_id: r.sku_name for r in t.itertuples() if isinstance(r.sku_name, str) and r.sku_name}


def published_artifact_digests(ws: Workspace) -> dict[str, str]:
    """artifact digest -> model id of every bundle published from ``artifacts/hierarchical``."""
    return {r.card["artifact_digest"]: r.model_id for r in ModelStore(ws).list() if r.card.get("artifact_digest")}


def prepare_full_rebuild(ws: Workspace, model_id: str | None = None) -> tuple[PublishedModel | None, str]:
    """The model in ``artifacts/hierarchical`` with its card and training table, in memory (not yet published).

    Returns ``(None, why)`` when there is no trained model or it is already published. Raises
    :class:`LineageError` / ``TamperedModelError`` when the training artifacts are inconsistent (an interrupted
    training run): such a model must never reach the gate.
    """
    from skurec.artifacts import files_digest, read_files
    from skurec.models.serialization import load_classifier

    if not ws.exists(TRAINING_MANIFEST) or not ws.exists(f"{HIERARCHICAL_DIR}/_files.json"):
        return None, "no trained hierarchical model yet (run the full_rebuild job)"
    files = read_files(ws, HIERARCHICAL_DIR)  # verifies every file: a half-written artifact raises here
    digest = files_digest(files)
    done = published_artifact_digests(ws)
    if digest in done:
        return None, f"the trained model {digest[:12]} is already published as {done[digest]}"
    manifest = ws.read_json(TRAINING_MANIFEST)
    if manifest.get("hierarchical_digest") not in (None, digest):
        raise LineageError(
            "artifacts/hierarchical does not match artifacts/training_manifest.json (a training run was interrupted "
            "between the two writes); re-run the full_rebuild job"
        )
    model = load_classifier(files, device="cpu")
    rel = manifest.get("training_set") or "artifacts/training_set.parquet"
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
    sc_doc = ws.read_json(SUPERCLASSES_JSON) if ws.exists(SUPERCLASSES_JSON) else {}
    evaluation = {f"train/{k}": v for k, v in (manifest.get("metrics") or {}).items() if isinstance(v, (int, float))}
    evaluation.update(_evaluation_summary(ws, digest))
    model_id = model_id or new_model_id("hier")
    table = table.assign(added_by=model_id)
    card = build_model_card(
        source=SOURCE_FULL,
        model=model,
        table=table,
        catalogue_snapshot=manifest.get("catalogue_snapshot", ""),
        encoder=manifest.get("encoder", {}),
        superclasses={"version": manifest.get("superclass_version") or sc_doc.get("version"),
                      "n_superclasses": int(model.n_superclasses), "method": sc_doc.get("method")},
        training_config=manifest.get("configs", {}),
        seeds=manifest.get("seeds", {}),
        evaluation=evaluation,
        batches=batches_of(ws, train_ids),
        sku_names=_sku_names(ws),
        extra={"artifact_digest": digest, "training_code_version": manifest.get("code_version")},
    )
    return PublishedModel(model_id, model, card, table), f"trained model {digest[:12]} from the full rebuild"


def _evaluation_summary(ws: Workspace, digest: str) -> dict[str, float]:
    """Top-1/top-3 numbers of reports/evaluation.json when it says it evaluated exactly this model (its
    ``hierarchical_digest``); an evaluation of another model is never attached to this card."""
    if not ws.exists(EVALUATION_JSON):
        return {}
    ev = ws.read_json(EVALUATION_JSON)
    if ev.get("hierarchical_digest") != digest:
        return {}
    out: dict[str, float] = {}
    for variant, v in (ev.get("variants") or {}).items():
        for name, r in (v.get("models") or {}).items():
            for metric in ("top1", "top3"):
                if isinstance(r, dict) and isinstance(r.get(metric), (int, float)):
                    out[f"eval/{ev.get('split', 'eval')}/{variant}/{name}/{metric}"] = float(r[metric])
    return out


def prepare_fast_path(ws: Workspace, data: Any, attach: str = "coarse", model_id: str | None = None
                      ) -> tuple[PublishedModel | None, str, dict[str, Any]]:
    """The deployed model extended with every active train image it has not seen (in memory, not published).

    Returns ``(None, why, details)`` when there is nothing to add, no deployed model, or the encoder changed.
    """
    store = ModelStore(ws)
    base_id = store.deployed_id()
    if base_id is None:
        return None, "no deployed model to extend yet (the first model comes from full_rebuild)", {}
    base = load_published(ws, base_id)
    base_enc = base.card.get("encoder", {}).get("encoder_id")
    details: dict[str, Any] = {"base_model_id": base_id, "inactive_new_skus": _inactive_new_skus(ws, set(base.model.classes))}
    if base_enc != data.encoder_id:
        return None, (f"the encoder changed ({base_enc} -> {data.encoder_id}): the fast path cannot extend the "
                      "deployed model; run the full_rebuild job"), details
    if not hasattr(base.model, "add_classes"):
        return None, f"deployed model {base_id} ({type(base.model).__name__}) has no fast path", details
    seen = set(base.table["image_id"])
    new_idx = [i for i, image_id in enumerate(data.train.image_ids) if image_id not in seen]
    if not new_idx:
        return None, f"no train image that {base_id} has not seen: nothing to add", details
    X_new, y_new = data.train.X[new_idx], data.train.y[new_idx]
    result = base.model.add_classes(X_new, y_new, attach=attach)
    model_id = model_id or new_model_id("fast")
    added = pd.DataFrame({"image_id": [data.train.image_ids[i] for i in new_idx], "sku_id": y_new.astype(str),
                          "split": "train", "added_by": model_id})
    # Validation/test images it will be judged on are recorded too (never trained on).
    held = [pd.DataFrame({"image_id": s.image_ids, "sku_id": np.asarray(s.y).astype(str), "split": name, "added_by": model_id})
            for name, s in (("val", data.val), ("test", data.test)) if len(s)]
    held = [h[~h["image_id"].isin(seen)] for h in held]
    base_rows = base.table[TABLE_COLUMNS] if set(TABLE_COLUMNS) <= set(base.table.columns) else pd.DataFrame(columns=TABLE_COLUMNS)
    table = pd.concat([base_rows, added, *held], ignore_index=True)
    train_ids = table.loc[table["split"] == "train", "image_id"].tolist()
    sc_base = dict(base.card.get("superclasses", {}))
    attached = {**sc_base.get("attached", {}), **{k: int(v) for k, v in result.superclass_of_new.items()}}
    fast = {
        "new_skus": sorted(result.superclass_of_new),
        "superclass_of_new": {k: int(v) for k, v in sorted(result.superclass_of_new.items())},
        "refreshed_skus": sorted(result.refreshed),
        "n_images_added": int(len(new_idx)),
        "attach_rule": result.attach_rule,
        "inactive_new_skus": details["inactive_new_skus"],
    }
    assignment = json.dumps(result.model.superclass_of_class(), sort_keys=True).encode()
    card = build_model_card(
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
        base_model_id=base_id,
        fast_path=fast,
        sku_names=_sku_names(ws),
        extra={"training_code_version": base.card.get("training_code_version")},
    )
    why = f"{len(fast['new_skus'])} new SKU(s) and {len(new_idx)} image(s) added to {base_id} without retraining"
    return PublishedModel(model_id, result.model, card, table), why, {**details, **fast}


def _inactive_new_skus(ws: Workspace, known: set[str]) -> list[dict[str, Any]]:
    """SKUs the model does not know that are still below min_samples (reported, not trained on)."""
    if not ws.has_table("classes"):
        return []
    c = ws.read_table("classes")
    c = c[(c["status"] != "active") & ~c["sku_id"].isin(known)]
    return [{"sku_id": r.sku_id, "n_images": int(r.n_images)} for r in c.itertuples()]


def build_candidate(ws: Workspace, attach: str = "coarse", gate: GateConfig | None = None) -> CandidateResult:
    """Publish the next candidate and judge it: a newly trained full model if there is one, else the fast-path
    extension of the deployed model, else nothing (``model_id`` None, ``reason`` says why).

    The gate is evaluated before publication so that its numbers are part of the (immutable) model card; the
    deployment step evaluates it again against whatever is deployed at that moment.
    """
    from skurec.datasets import TrainingDataError, load_training_data

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
    cand.card["recognition"] = calibrate_threshold(ws, cand.model, data)
    cand.card["evaluation"] = {
        **cand.card.get("evaluation", {}),
        "gate/candidate_top1": report.candidate_top1,
        "gate/deployed_top1": report.deployed_top1,
        "gate/n_val": report.n_val,
        "gate/zero_accuracy_share": report.zero_accuracy_share,
    }
    cand.card["gate_at_publication"] = report.to_dict()
    rec = publish_model(ws, cand.model, cand.card, cand.table, model_id=cand.model_id)
    source = rec.card.get("source")
    return CandidateResult(source, rec.model_id, why, rec.card, report, details)


def calibrate_threshold(ws: Workspace, model: Any, data: Any | None = None, keep: float = 0.95,
                        bounds: tuple[float, float] = (0.05, 0.9)) -> dict[str, Any]:
    """The "unknown" threshold recommended for this model: the top-1 score that ``keep`` of the correct validation
    predictions reach (so 95 % of in-catalogue photos the model gets right are answered), clipped to ``bounds``.

    Scores of the hierarchical model are ``p(superclass) * p(SKU | superclass)``; their scale depends on the number
    of SKUs per superclass and the fine head's temperature, so a fixed threshold does not fit every model.
    """
    from skurec.datasets import load_training_data

    data = data if data is not None else load_training_data(ws)
    if len(data.val) == 0:
        return {"threshold": None, "method": "no validation images"}
    pred = model.predict_topk(data.val.X, k=1)
    correct = pred.labels[:, 0].astype(str) == data.val.y.astype(str)
    if not correct.any():
        return {"threshold": None, "method": "no correct validation prediction"}
    q = float(np.quantile(pred.scores[correct, 0], 1.0 - keep))
    t = float(min(max(q, bounds[0]), bounds[1]))
    wrong = pred.scores[~correct, 0]
    return {"threshold": round(t, 4), "method": f"{keep:.0%} of correct validation predictions score >= threshold",
            "n_val": int(len(correct)), "wrong_rejected_share": float(np.mean(wrong < t)) if len(wrong) else None}


def record_candidate(ws: Workspace, candidate: CandidateResult) -> dict:
    """Write ``candidates/<model_id>.json`` and ``candidates/latest.json`` (what the deployment step looks at)."""
    doc = {"model_id": candidate.model_id, "source": candidate.source, "reason": candidate.reason,
           "created_at": now_iso(), "gate": candidate.gate.to_dict() if candidate.gate else None,
           "details": candidate.details}
    ws.write_json(f"{CANDIDATES_DIR}/{candidate.model_id}.json", doc)
    ws.write_json(LATEST_CANDIDATE, doc)
    return doc


def latest_candidate(ws: Workspace) -> dict | None:
    return ws.read_json(LATEST_CANDIDATE) if ws.exists(LATEST_CANDIDATE) else None


# ------------------------------------------------------------------------------------------------ gate
@dataclass(frozen=True)
class GateConfig:
    """Deployment gate. ``tolerance``: largest allowed drop of validation top-1 accuracy below the deployed model's
    (absolute, 0.01 = one point); ``max_zero_accuracy_share``: largest share of validated classes allowed to have
    zero validation accuracy; ``min_accuracy``: floor for the very first deployment (nothing to compare with)."""

    tolerance: float = 0.01
    max_zero_accuracy_share: float = 0.05
    min_accuracy: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"gate tolerance must be in [0, 1], got {self.tolerance}")
        if not 0.0 <= self.max_zero_accuracy_share <= 1.0:
            raise ValueError(f"max_zero_accuracy_share must be in [0, 1], got {self.max_zero_accuracy_share}")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must be in [0, 1], got {self.min_accuracy}")


@dataclass
class GateReport:
    candidate_id: str
    deployed_id: str | None
    config: dict
    n_val: int = 0
    candidate_top1: float | None = None
    deployed_top1: float | None = None
    deployed_top1_basis: str = ""
    accuracy_ok: bool = False
    accuracy_reason: str = ""
    zero_accuracy_classes: list[str] = field(default_factory=list)
    n_validated_classes: int = 0
    zero_accuracy_share: float = 0.0
    zero_ok: bool = False
    zero_reason: str = ""
    input_problems: list[str] = field(default_factory=list)
    input_warnings: list[str] = field(default_factory=list)
    inputs_ok: bool = False

    @property
    def passed(self) -> bool:
        return self.accuracy_ok and self.zero_ok and self.inputs_ok

    @property
    def reasons(self) -> list[str]:
        out = []
        if not self.inputs_ok:
            out.append("inputs: " + "; ".join(self.input_problems))
        if not self.accuracy_ok:
            out.append("accuracy: " + self.accuracy_reason)
        if not self.zero_ok:
            out.append("dead classes: " + self.zero_reason)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "reasons": self.reasons}


def _top1(model: Any, X: np.ndarray) -> np.ndarray:
    return model.predict_topk(X, k=1).labels[:, 0].astype(str)


def _check_inputs(ws: Workspace, cand: PublishedModel, data: Any, report: GateReport) -> None:
    from skurec.schemas import ImagesSchema

    problems, warnings = report.input_problems, report.input_warnings
    try:
        ImagesSchema.validate(ws.read_table("images"), lazy=True)
    except Exception as exc:  # pandera SchemaErrors: name it, don't crash the gate
        problems.append(f"images table violates its schema: {str(exc)[:500]}")
    enc = cand.card.get("encoder", {}).get("encoder_id")
    if enc != data.encoder_id:
        problems.append(f"candidate was built on encoder {enc} but the current embeddings come from {data.encoder_id}")
    dim = getattr(cand.model, "dim", None)
    if dim is not None and data.val.X.size and data.val.X.shape[1] != dim:
        problems.append(f"embedding width {data.val.X.shape[1]} differs from the model's input width {dim}")
    needed = {"image_id", "sku_id", "split"}
    if not needed <= set(cand.table.columns):
        problems.append(f"training table lacks columns {sorted(needed - set(cand.table.columns))}")
    elif training_table_sha256(cand.table) != cand.card.get("training_set", {}).get("sha256"):
        problems.append("training table does not match the SHA-256 recorded in the model card")
    uncovered = sorted(set(data.classes) - set(cand.model.classes))
    if uncovered:
        problems.append(f"{len(uncovered)} active class(es) unknown to the candidate, e.g. {uncovered[:5]} "
                        "(the catalogue changed after training; run full_rebuild or let the fast path add them)")
    stale = sorted(set(cand.model.classes) - set(data.classes))
    if stale:
        warnings.append(f"{len(stale)} class(es) of the model are no longer active, e.g. {stale[:5]}")
    report.inputs_ok = not problems


def evaluate_gate(ws: Workspace, candidate: str | PublishedModel, config: GateConfig = GateConfig(),
                  data: Any | None = None) -> GateReport:
    """Judge ``candidate_id`` against the deployed model on the current validation split.

    * inputs: the images table satisfies its schema, the candidate's encoder and input width match the current
      embeddings, its training table matches its card, and it knows every active class;
    * accuracy: candidate top-1 >= deployed top-1 - ``tolerance`` (both scored on the same current validation
      images; if the deployed model used another encoder, its recorded gate accuracy is the reference);
    * dead classes: at most ``max_zero_accuracy_share`` of the validated classes have zero validation accuracy.
    """
    from skurec.datasets import load_training_data

    store = ModelStore(ws)
    deployed_id = store.deployed_id()
    cand = load_published(ws, candidate) if isinstance(candidate, str) else candidate
    candidate_id = cand.model_id
    report = GateReport(candidate_id=candidate_id, deployed_id=deployed_id, config=asdict(config))
    data = data if data is not None else load_training_data(ws)
    _check_inputs(ws, cand, data, report)
    val = data.val
    report.n_val = len(val)
    if len(val) == 0:
        report.accuracy_reason = "no validation images: the candidate cannot be judged"
        report.zero_reason = "no validation images"
        return report
    if report.inputs_ok or (cand.card.get("encoder", {}).get("encoder_id") == data.encoder_id):
        pred = _top1(cand.model, val.X)
    else:
        report.accuracy_reason = "candidate cannot be scored on the current embeddings"
        report.zero_reason = report.accuracy_reason
        return report
    y = val.y.astype(str)
    hits = pred == y
    report.candidate_top1 = float(hits.mean())
    # Dead classes: validated classes with no correct validation prediction.
    per_class = pd.Series(hits).groupby(y).mean()
    dead = sorted(per_class[per_class == 0].index.tolist())
    report.zero_accuracy_classes = dead
    report.n_validated_classes = int(len(per_class))
    report.zero_accuracy_share = float(len(dead) / max(1, len(per_class)))
    report.zero_ok = report.zero_accuracy_share <= config.max_zero_accuracy_share + 1e-12
    report.zero_reason = (f"{len(dead)}/{len(per_class)} validated classes ({report.zero_accuracy_share:.1%}) have zero "
                          f"validation accuracy (allowed: {config.max_zero_accuracy_share:.1%}), e.g. {dead[:10]}") if dead else ""
    # Accuracy against the deployed model.
    if deployed_id is None or deployed_id == candidate_id:
        report.deployed_top1_basis = "none deployed" if deployed_id is None else "candidate is the deployed model"
        report.accuracy_ok = report.candidate_top1 >= config.min_accuracy
        report.accuracy_reason = ("" if report.accuracy_ok else
                                  f"validation top-1 {report.candidate_top1:.4f} is below the minimum {config.min_accuracy:.4f}")
        return report
    dep = load_published(ws, deployed_id)
    if dep.card.get("encoder", {}).get("encoder_id") == data.encoder_id:
        report.deployed_top1 = float((_top1(dep.model, val.X) == y).mean())
        report.deployed_top1_basis = "scored on the current validation split"
    else:
        recorded = (dep.card.get("evaluation") or {}).get("gate/candidate_top1")
        report.deployed_top1 = float(recorded) if recorded is not None else None
        report.deployed_top1_basis = "recorded in its card (it used another encoder)"
    if report.deployed_top1 is None:
        report.accuracy_ok = report.candidate_top1 >= config.min_accuracy
        report.accuracy_reason = "" if report.accuracy_ok else "below the minimum accuracy"
        return report
    floor = report.deployed_top1 - config.tolerance
    report.accuracy_ok = report.candidate_top1 + 1e-12 >= floor and report.candidate_top1 >= config.min_accuracy
    report.accuracy_reason = "" if report.accuracy_ok else (
        f"validation top-1 {report.candidate_top1:.4f} is more than {config.tolerance:.4f} below the deployed model "
        f"{deployed_id} ({report.deployed_top1:.4f}, {report.deployed_top1_basis})")
    return report


@dataclass
class DeploymentDecision:
    deployed: bool
    model_id: str | None  # the model deployed after the decision
    candidate_id: str
    report: GateReport
    event: dict


def decide_deployment(ws: Workspace, candidate_id: str, config: GateConfig = GateConfig(), data: Any | None = None) -> DeploymentDecision:
    """Promote ``candidate_id`` iff the gate passes; a refusal is recorded and leaves the pointer untouched."""
    store = ModelStore(ws)
    before = store.deployed_id()
    report = evaluate_gate(ws, candidate_id, config, data)
    if report.passed:
        event = store.deploy(candidate_id, reason="gate passed", extra={"gate": report.to_dict()})
        return DeploymentDecision(True, candidate_id, candidate_id, report, event)
    event = {"model_id": candidate_id, "deployed_model_id": before, "refused_at": now_iso(), "reasons": report.reasons,
             "gate": report.to_dict()}
    store.record_event("refused", event)
    return DeploymentDecision(False, before, candidate_id, report, event)
