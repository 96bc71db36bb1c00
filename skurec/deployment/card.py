"""Model cards: the JSON facts of a model (catalogue snapshot, batches, encoder, superclasses, code, configuration,
seeds, evaluation) and their Markdown rendering for the UI and ``skurec lineage``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from skurec.deployment.training_table import image_ids_sha256, training_table_sha256
from skurec.layout import BUNDLE_TRAINING_TABLE
from skurec.store.workspace import Workspace

CARD_SCHEMA = "skurec-model-card/1"
#: below this many validation images a validation accuracy (and the gate built on it) is too noisy to trust: one
#: image moves it by more than 3 points. ``skurec demo`` / ``run`` warn, naming the number.
MIN_VALIDATION_IMAGES = 30


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
            commit = (
                subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
                ).stdout.strip()
                or None
            )
            status = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            dirty = bool(status.strip())
        except Exception:  # no git, not a checkout: the package version still identifies the code
            commit = None
    return {"package": "skurec", "package_version": pkg, "git_commit": commit, "git_dirty": dirty}


def batches_of(ws: Workspace, image_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The labelling batches that contributed images to ``image_ids`` (with content hash and image count)."""
    from skurec.catalogue.ingest import ingested_batches

    if not ws.has_table("images"):
        return []
    images = ws.read_table("images", columns=["image_id", "batch_id"])
    used = images[images["image_id"].isin(set(image_ids))]
    counts = used["batch_id"].dropna().value_counts()
    records = {r["batch_id"]: r for r in ingested_batches(ws)}
    out = []
    for batch_id, n in sorted(counts.items()):
        rec = records.get(batch_id, {})
        out.append(
            {
                "batch_id": str(batch_id),
                "n_images": int(n),
                "content_hash": rec.get("content_hash"),
                "ingested_at": rec.get("ingested_at"),
                "source_uri": rec.get("source_uri"),
            }
        )
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
    tiers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON model card (``model_id``, ``files`` and ``created_at`` are added by the model store).

    ``tiers``: the catalogue tier of each SKU (``head`` / ``tail``, :func:`skurec.catalogue.splits.class_tiers`); the
    card lists the model's classes by tier (a class the catalogue no longer lists counts as head)."""
    train = table[table["split"] == "train"]
    classes = list(model.classes)
    tier_of = {c: str((tiers or {}).get(c, "head")) for c in classes}
    return {
        "schema": CARD_SCHEMA,
        "kind": getattr(model, "KIND", type(model).__name__),
        "source": source,
        "base_model_id": base_model_id,
        "catalogue_snapshot": catalogue_snapshot,
        "training_set": {
            "file": BUNDLE_TRAINING_TABLE,
            # an order-free fingerprint of the (image_id, sku_id, split) rows, not the file's SHA-256 (that one is
            # ``file_sha256``, added at publication, and ``files[file]``)
            "table_fingerprint": training_table_sha256(table),
            "train_image_ids_sha256": image_ids_sha256(train["image_id"].tolist()),
            "n_rows": int(len(table)),
            "n_train": int(len(train)),
            "n_val": int((table["split"] == "val").sum()),
            "n_test": int((table["split"] == "test").sum()),
        },
        "classes": {
            "n": len(classes),
            "list": classes,
            "names": {c: sku_names[c] for c in classes if sku_names and c in sku_names},
            "tiers": tier_of,
            "n_head": sum(t == "head" for t in tier_of.values()),
            "n_tail": sum(t == "tail" for t in tier_of.values()),
        },
        "batches": [dict(b) for b in batches],
        "encoder": {
            k: encoder.get(k)
            for k in ("name", "encoder_id", "weights_sha256", "pretrained", "dim", "options", "source")
        },
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
    """Human-readable model card (the same facts as the JSON, for the UI and ``skurec lineage``): one section per
    helper below, in this order."""
    sections = (
        _summary_lines,
        _evaluation_lines,
        _model_choice_lines,
        _fast_path_lines,
        _batch_lines,
        _training_config_lines,
        _file_lines,
    )
    return "\n".join(line for section in sections for line in section(card)) + "\n"


def _summary_lines(card: Mapping[str, Any]) -> list[str]:
    """Title and the lineage bullets: source, classes, catalogue snapshot, training set, encoder, code, seeds."""
    ts, enc, sc, code = (
        card.get("training_set", {}),
        card.get("encoder", {}),
        card.get("superclasses", {}),
        card.get("code", {}),
    )
    return [
        f"# Model card: {card.get('model_id', '(unpublished)')}",
        "",
        f"- **source**: {card.get('source')}"
        + (f" (extends `{card['base_model_id']}`)" if card.get("base_model_id") else ""),
        f"- **created**: {card.get('created_at', '')}",
        f"- **classes**: {card.get('classes', {}).get('n')}"
        + (
            f" (head tier {card['classes']['n_head']}, tail tier {card['classes']['n_tail']})"
            if "n_head" in card.get("classes", {})
            else ""
        ),
        f"- **catalogue snapshot**: `{card.get('catalogue_snapshot')}`",
        f"- **training set**: `{ts.get('file')}` (file sha256 `{ts.get('file_sha256')}`, rows fingerprint "
        f"`{ts.get('table_fingerprint') or ts.get('sha256')}`) — {ts.get('n_train')} train / "
        f"{ts.get('n_val')} val / {ts.get('n_test')} test rows; train image ids sha256 `{ts.get('train_image_ids_sha256')}`",
        f"- **encoder**: `{enc.get('encoder_id')}` (weights sha256 `{enc.get('weights_sha256')}`, pretrained={enc.get('pretrained')})",
        f"- **superclasses**: version `{sc.get('version')}`, {sc.get('n_superclasses')} superclasses"
        + (f", extended by the fast path ({len(sc.get('attached', {}))} SKUs attached)" if sc.get("attached") else ""),
        f"- **code**: skurec {code.get('package_version')}, git commit `{code.get('git_commit')}`"
        + (" (dirty tree)" if code.get("git_dirty") else ""),
        f"- **seeds**: {_fmt(card.get('seeds'))}",
    ]


def _evaluation_lines(card: Mapping[str, Any]) -> list[str]:
    """The scalar evaluation metrics and the recommended unknown threshold, as a table."""
    lines = ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
    for k, v in sorted(card.get("evaluation", {}).items()):
        if not isinstance(v, (dict, list)):
            lines.append(f"| {k} | {_fmt(v)} |")
    rec = card.get("recognition") or {}
    if rec.get("threshold") is not None:
        lines.append(f"| recommended unknown threshold | {_fmt(rec['threshold'])} ({rec.get('method')}) |")
    return lines


def _model_choice_lines(card: Mapping[str, Any]) -> list[str]:
    """Which model family was deployed and why (absent when the card records no choice)."""
    choice = card.get("model_choice")
    if not choice:
        return []
    lines = ["", "## Which model", "", f"- **{choice.get('deployed')}**: {choice.get('reason')}"]
    if choice.get("val_top1"):
        lines.append(f"- validation top-1: {_fmt(choice['val_top1'])}")
    return lines


def _fast_path_lines(card: Mapping[str, Any]) -> list[str]:
    """What a fast-path model added to its base (absent for a full rebuild)."""
    fp = card.get("fast_path")
    if not fp:
        return []
    return [
        "",
        "## Fast path",
        "",
        f"- new SKUs: {', '.join(fp.get('new_skus', [])) or '(none)'}",
        f"- superclass of each new SKU: {_fmt(fp.get('superclass_of_new', {}))}",
        f"- refreshed SKUs: {len(fp.get('refreshed_skus', []))}; images added: {fp.get('n_images_added')}",
        f"- attach rule: {fp.get('attach_rule')}",
    ]


def _batch_lines(card: Mapping[str, Any]) -> list[str]:
    """The labelled batches that contributed training images (or a note that there were none)."""
    batches = card.get("batches", [])
    lines = ["", f"## Batches ({len(batches)})", ""]
    if not batches:
        return [*lines, "_(base catalogue only)_"]
    return [
        *lines,
        "| batch | images | content hash | ingested |",
        "|---|---|---|---|",
        *(
            f"| {b['batch_id']} | {b['n_images']} | `{(b.get('content_hash') or '')[:16]}` | {b.get('ingested_at') or ''} |"
            for b in batches
        ),
    ]


def _training_config_lines(card: Mapping[str, Any]) -> list[str]:
    return [
        "",
        "## Training configuration",
        "",
        "```json",
        json.dumps(card.get("training_config", {}), indent=1, sort_keys=True, default=str),
        "```",
    ]


def _file_lines(card: Mapping[str, Any]) -> list[str]:
    """Every bundle file with its SHA-256 (absent before publication)."""
    files = card.get("files", {})
    if not files:
        return []
    return ["", "## Files (SHA-256)", ""] + [f"- `{n}` `{h}`" for n, h in sorted(files.items())]
