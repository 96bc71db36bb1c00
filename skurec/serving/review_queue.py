"""Review queue: low-confidence (``unknown``) predictions kept for a person to label, closing the labelling loop.

Layout inside the work directory::

    review_queue/images/<image_sha256><ext>     the image, once per content
    review_queue/items/<time>-<sha16>.json      one file per queued prediction (no shared file to lock or rewrite)

:meth:`ReviewQueue.export_for_labelling` writes a folder with the images and a ``manifest.csv`` whose ``sku_id``
column is empty (``suggested_sku_id`` holds the model's best guess). Once a person fills in ``sku_id``, the folder is
a valid labelled batch: move it into the drop location and the labelling loop ingests it. No Dagster import here.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import posixpath
from pathlib import Path
from typing import Any

import pandas as pd

from skurec.deployment.training_table import neutralise_cell
from skurec.images import sha256_bytes
from skurec.layout import REVIEW_QUEUE_DIR as QUEUE_DIR
from skurec.store.workspace import Workspace

_EXT = {b"\xff\xd8\xff": ".jpg", b"\x89PNG": ".png", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}


def _ext_for(data: bytes) -> str:
    for magic, ext in _EXT.items():
        if data.startswith(magic):
            return ext
    return ".img"


class ReviewQueue:
    """Append-only queue of predictions to review, stored in a work directory (local or remote)."""

    def __init__(self, ws: Workspace | str | os.PathLike):
        self.ws = ws if isinstance(ws, Workspace) else Workspace(os.fspath(ws))

    def add(self, recognition: Any, image_bytes: bytes) -> dict:
        """Queue one prediction (a :class:`skurec.serving.recognizer.Recognition` or its dict) with the image bytes."""
        rec = recognition.to_dict() if hasattr(recognition, "to_dict") else dict(recognition)
        if not image_bytes:
            raise ValueError("the review queue needs the image bytes (got none)")
        image_id = sha256_bytes(image_bytes)
        image_rel = f"{QUEUE_DIR}/images/{image_id}{_ext_for(image_bytes)}"
        if not self.ws.exists(image_rel):
            self.ws.write_bytes(image_rel, image_bytes)
        now = dt.datetime.now(dt.timezone.utc)
        item = {
            "image_id": image_id,
            "image_file": image_rel,
            "original": rec.get("image"),
            "suggested_sku_id": rec.get("sku_id"),
            "score": rec.get("score"),
            "top_k": rec.get("top_k", []),
            "superclass": rec.get("superclass"),
            "model_id": rec.get("model_id"),
            "threshold": rec.get("threshold"),
            "queued_at": now.isoformat(timespec="seconds"),
        }
        self.ws.write_json(f"{QUEUE_DIR}/items/{now.strftime('%Y%m%dT%H%M%S%f')}-{image_id[:16]}.json", item)
        return item

    def items(self) -> list[dict]:
        """Every queued item, oldest first."""
        return [
            self.ws.read_json(QUEUE_DIR, "items", n) for n in self.ws.listdir(QUEUE_DIR, "items") if n.endswith(".json")
        ]

    def frame(self) -> pd.DataFrame:
        cols = [
            "image_id",
            "image_file",
            "original",
            "suggested_sku_id",
            "score",
            "superclass",
            "model_id",
            "queued_at",
        ]
        return pd.DataFrame([{c: it.get(c) for c in cols} for it in self.items()], columns=cols)

    def __len__(self) -> int:
        return len(self.ws.listdir(QUEUE_DIR, "items"))

    def export_for_labelling(self, dest: str | os.PathLike) -> Path:
        """Write ``dest/images/*`` and ``dest/manifest.csv`` (one row per distinct image, ``sku_id`` to fill in).

        Returns the manifest path. The manifest is written last, so ``dest`` only looks like a complete batch once
        everything is there; but with ``sku_id`` empty it is rejected by the loop until a person fills it in.
        """
        dest = Path(dest)
        (dest / "images").mkdir(parents=True, exist_ok=True)
        seen: set[str] = set()
        rows = []
        for it in self.items():
            if it["image_id"] in seen:
                continue
            seen.add(it["image_id"])
            name = posixpath.basename(it["image_file"])
            (dest / "images" / name).write_bytes(self.ws.read_bytes(it["image_file"]))
            rows.append(
                {
                    "image_uri": f"images/{name}",
                    "sku_id": "",
                    "suggested_sku_id": it.get("suggested_sku_id") or "",
                    "score": it.get("score"),
                    "model_id": it.get("model_id") or "",
                }
            )
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["image_uri", "sku_id", "suggested_sku_id", "score", "model_id"])
        writer.writeheader()
        # Cells a spreadsheet would run as formulas (= + - @ ...) are prefixed with ' (docs/security.md).
        writer.writerows({k: neutralise_cell(v) for k, v in row.items()} for row in rows)
        manifest = dest / "manifest.csv"
        tmp = dest / ".manifest.csv.tmp"
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, manifest)
        return manifest
