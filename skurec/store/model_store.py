"""Model store: versioned model bundles (tensor files + JSON config + model card) with tamper detection.

A bundle lives in ``<workdir>/models/<model_id>/``: the model's files (safetensors + ``config.json``, as produced by
a model's ``to_files()``), ``model_card.json`` and ``model_card.md``. The card records the SHA-256 of every file;
:meth:`ModelStore.load_files` recomputes them and refuses a bundle whose bytes changed. Bundles are immutable: a
model id is never written twice. The deployed model is a pointer file (``models/deployed.json``) replaced
atomically, with every promotion or refusal appended to ``models/history/`` as its own file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from skurec.layout import DEPLOYED_POINTER, MODEL_HISTORY_DIR, MODELS_DIR, model_dir
from skurec.store.workspace import Workspace

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
DEPLOYED = DEPLOYED_POINTER
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")


class ModelStoreError(RuntimeError):
    pass


class TamperedModelError(ModelStoreError):
    """A stored file's bytes no longer match the SHA-256 recorded in the model card."""


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    card: dict

    @property
    def created_at(self) -> str:
        return self.card.get("created_at", "")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_model_id(prefix: str = "hier") -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return f"{prefix}-{stamp}"


class ModelStore:
    def __init__(self, ws: Workspace):
        self.ws = ws

    def _dir(self, model_id: str) -> str:
        if not _ID.match(model_id):
            raise ModelStoreError(f"invalid model id {model_id!r}")
        return model_dir(model_id)

    def exists(self, model_id: str) -> bool:
        return self.ws.exists(f"{self._dir(model_id)}/{CARD_JSON}")

    def save(self, model_id: str, files: dict[str, bytes], card: dict, card_markdown: str | None = None) -> ModelRecord:
        """Write a new immutable bundle; the card gains ``files`` (name -> sha256) and ``model_id``."""
        if self.exists(model_id):
            raise ModelStoreError(f"model {model_id} already exists; bundles are immutable")
        for name in files:
            if not _FILE.match(name) or ".." in name.split("/") or name in (CARD_JSON, CARD_MD):
                raise ModelStoreError(f"invalid file name in bundle: {name!r}")
        card = {**card, "model_id": model_id, "files": {n: sha256_hex(b) for n, b in sorted(files.items())}}
        card.setdefault("created_at", now_iso())
        base = self._dir(model_id)
        for name, data in files.items():
            self.ws.write_bytes(f"{base}/{name}", data)
        if card_markdown is not None:
            self.ws.write_text(f"{base}/{CARD_MD}", card_markdown)
        # The card is written last: a bundle without a card is incomplete and invisible to list()/load().
        self.ws.write_json(f"{base}/{CARD_JSON}", card)
        return ModelRecord(model_id, card)

    def card(self, model_id: str) -> dict:
        if not self.exists(model_id):
            raise ModelStoreError(f"no model {model_id!r} in {self.ws.root_uri}")
        return self.ws.read_json(f"{self._dir(model_id)}/{CARD_JSON}")

    def card_markdown(self, model_id: str) -> str | None:
        rel = f"{self._dir(model_id)}/{CARD_MD}"
        return self.ws.read_bytes(rel).decode("utf-8") if self.ws.exists(rel) else None

    def load_files(self, model_id: str) -> dict[str, bytes]:
        """The bundle's files, each verified against the SHA-256 in its card."""
        card = self.card(model_id)
        base = self._dir(model_id)
        files = {}
        for name, expected in card["files"].items():
            data = self.ws.read_bytes(f"{base}/{name}")
            actual = sha256_hex(data)
            if actual != expected:
                raise TamperedModelError(
                    f"model {model_id}: file {name} has SHA-256 {actual[:16]}… but its model card records "
                    f"{expected[:16]}…; the file was modified after training. Refusing to load it."
                )
            files[name] = data
        return files

    def list(self) -> list[ModelRecord]:
        records = []
        for name in self.ws.listdir(MODELS_DIR):
            if _ID.match(name) and self.ws.exists(f"{MODELS_DIR}/{name}/{CARD_JSON}"):
                records.append(ModelRecord(name, self.ws.read_json(f"{MODELS_DIR}/{name}/{CARD_JSON}")))
        return sorted(records, key=lambda r: (r.created_at, r.model_id))

    # ------------------------------------------------------------------ deployment pointer
    def deployed_id(self) -> str | None:
        if not self.ws.exists(DEPLOYED):
            return None
        return self.ws.read_json(DEPLOYED)["model_id"]

    def deploy(self, model_id: str, reason: str, extra: dict[str, Any] | None = None) -> dict:
        """Point the deployment at ``model_id`` (verified first) and record the event."""
        self.load_files(model_id)
        event = {
            "model_id": model_id,
            "previous_model_id": self.deployed_id(),
            "deployed_at": now_iso(),
            "reason": reason,
            **(extra or {}),
        }
        self.record_event("deployed", event)
        self.ws.write_json(DEPLOYED, event)
        return event

    def record_event(self, kind: str, event: dict) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.ws.write_bytes(
            f"{MODEL_HISTORY_DIR}/{stamp}-{kind}.json",
            json.dumps({"event": kind, **event}, indent=2, default=str).encode(),
        )

    def history(self) -> list[dict]:
        return [self.ws.read_json(f"{MODEL_HISTORY_DIR}/{n}") for n in self.ws.listdir(MODEL_HISTORY_DIR)]
