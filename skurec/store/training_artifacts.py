"""The training steps' rules, framework-free (the Dagster training assets call them): the prototype and LDA-statistics
artifact formats and whether a scheduled rebuild has anything to do.

``TRAINING_CODE_VERSION`` names the training code: it is recorded in every training manifest and model card, and a
change of it makes the scheduled rebuild retrain.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from skurec import layout
from skurec.models import LDAStatistics, Prototypes, rows_sha256, statistics_files, statistics_from_files
from skurec.store.artifacts import files_digest, read_files, write_files
from skurec.store.workspace import Workspace

TRAINING_CODE_VERSION = "train-v2"  # v2: LDA confusion superclasses, LDA router, specialists


def prototypes_files(p: Prototypes) -> dict[str, bytes]:
    """The ``artifacts/prototypes`` folder: tensors + JSON."""
    return {
        "prototypes.safetensors": st_save(
            {"vectors": p.vectors.astype(np.float32), "counts": p.counts.astype(np.int64)}
        ),
        "config.json": json.dumps({"kind": "prototypes", "classes": list(p.classes), "dim": p.dim}).encode(),
    }


def load_prototypes(ws: Workspace) -> Prototypes:
    files = read_files(ws, layout.PROTOTYPES_DIR)
    cfg = json.loads(files["config.json"])
    t = st_load(files["prototypes.safetensors"])
    return Prototypes(classes=cfg["classes"], vectors=t["vectors"], counts=t["counts"])


class StaleArtifactError(RuntimeError):
    """An artifact was written by another run or from other rows than the step reading it has: re-materialise the
    asset that writes it."""


def write_lda_statistics(ws: Workspace, stats: LDAStatistics, classes: list[str], X: np.ndarray, y: np.ndarray) -> str:
    """Write ``artifacts/lda_statistics`` (the statistics of the fit rows ``(X, y)``, with their digest); returns the
    folder's digest, which ``superclasses.json`` records."""
    return write_files(ws, layout.LDA_STATISTICS_DIR, statistics_files(stats, classes, rows_sha256(X, y)))


def load_lda_statistics(ws: Workspace, X: np.ndarray, y: np.ndarray, digest: str | None) -> LDAStatistics:
    """The LDA statistics the superclasses step wrote, for the fit rows ``(X, y)`` of the step reading them.

    Refused (:class:`StaleArtifactError`) unless the folder's digest is ``digest`` (the one ``superclasses.json``
    recorded: the statistics the superclasses were derived from) and they were computed on exactly ``(X, y)`` (the
    same rows, labels and class list); the folder itself is hash-verified on reading.
    """
    hint = "re-materialise superclasses (it writes them) before coarse_model / fine_model"
    if not digest:
        raise StaleArtifactError(f"superclasses.json records no LDA statistics (an older superclasses run); {hint}")
    files = read_files(ws, layout.LDA_STATISTICS_DIR)
    if files_digest(files) != digest:
        raise StaleArtifactError(
            f"{layout.LDA_STATISTICS_DIR} is not the one the superclasses were derived from; {hint}"
        )
    stats, classes, rows = statistics_from_files(files)
    if classes != sorted(np.unique(np.asarray(y).astype(str)).tolist()) or rows != rows_sha256(X, y):
        raise StaleArtifactError(
            f"{layout.LDA_STATISTICS_DIR} was computed on other training rows than this step's "
            f"({len(classes)} classes, rows {rows[:12]}... vs {rows_sha256(X, y)[:12]}...); {hint}"
        )
    return stats


def rebuild_needed(ws: Workspace, code_version: str = TRAINING_CODE_VERSION) -> tuple[bool, str]:
    """Whether a scheduled rebuild has anything to do: catalogue, encoder or training code changed since the last
    trained model (or there is none)."""
    manifest: dict[str, Any] | None = layout.training_manifest(ws)
    if manifest is None:
        return True, "no trained model yet"
    if layout.catalogue_snapshot(ws) != manifest.get("catalogue_snapshot"):
        return True, "the catalogue changed since the last full training (new batches were added by the fast path)"
    current = layout.current_encoder(ws) or {}
    enc = current.get("encoder_id")
    if enc is not None and enc != (manifest.get("encoder") or {}).get("encoder_id"):
        return True, f"the encoder changed to {enc}"
    views = current.get("train_views")  # None without train-time views (then as before)
    if enc is not None and views != (manifest.get("encoder") or {}).get("train_views"):
        k = (views or {}).get("k", 0)
        return True, f"the train-time views changed (now {k} per train image, seed {(views or {}).get('seed', 0)})"
    if manifest.get("code_version") != code_version:
        return True, f"training code version changed ({manifest.get('code_version')} -> {code_version})"
    return False, "catalogue, encoder and training code unchanged since the last full training"
