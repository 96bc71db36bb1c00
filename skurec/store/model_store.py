"""Model store: versioned model bundles (tensor files + JSON config + model card) with tamper detection.

A bundle lives in ``<workdir>/models/<model_id>/``: the model's files (safetensors + ``config.json``, as produced by
a model's ``to_files()``), ``model_card.json`` and ``model_card.md``. The card records the SHA-256 of every file;
:meth:`ModelStore.load_files` recomputes them and refuses a bundle whose bytes changed. The card itself is covered
too: its SHA-256 is recorded outside the bundle when it is published (``models/card_digests/<model_id>.json``) and in
the deployment pointer when it is deployed, and :meth:`ModelStore.card` refuses a card whose bytes differ (a changed
threshold or class list would otherwise change answers silently). Bundles are immutable: a model id is never
written twice. The deployed model is a pointer file (``models/deployed.json``) replaced atomically; every promotion
is appended to ``models/history/`` as its own file *after* the pointer moved (a kill in between is reconciled by
:meth:`ModelStore.reconcile_history`), so the history never names a deployment that did not happen.

These digests detect a card or file changed by mistake or by a careless edit; they are not signatures: someone who
can rewrite the pointer and the digest files as well can still substitute a model (docs/security.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from skurec.layout import DEPLOYED_POINTER, MODEL_HISTORY_DIR, MODELS_DIR, card_digest_record, model_dir
from skurec.store.workspace import Workspace

log = logging.getLogger(__name__)

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
        # The card is written last: a bundle without a card is incomplete and invisible to list()/load(). Its digest
        # is recorded outside the bundle, after it.
        data = _card_bytes(card)
        self.ws.write_bytes(f"{base}/{CARD_JSON}", data)
        self.ws.write_json(card_digest_record(model_id), {"model_id": model_id, "card_sha256": sha256_hex(data)})
        return ModelRecord(model_id, card)

    def expected_card_sha256(self, model_id: str) -> str | None:
        """The card digest recorded for ``model_id``: the deployment pointer's when it is deployed, else the one
        recorded at publication (``None`` for a bundle published before card digests existed)."""
        pointer = self._pointer()
        if pointer and pointer.get("model_id") == model_id and pointer.get("card_sha256"):
            return pointer["card_sha256"]
        rel = card_digest_record(model_id)
        return self.ws.read_json(rel).get("card_sha256") if self.ws.exists(rel) else None

    def card_bytes(self, model_id: str) -> bytes:
        """The card's bytes, verified against its recorded SHA-256 (:class:`TamperedModelError` when they differ)."""
        if not self.exists(model_id):
            known = [r.model_id for r in self.list()][-5:]
            raise ModelStoreError(
                f"no model {model_id!r} in {self.ws.root_uri}; "
                + (
                    f"known models (latest last): {', '.join(known)}; pass one of them, or no model id for the deployed one"
                    if known
                    else "no model has been published there; build one with `skurec run`"
                )
            )
        data = self.ws.read_bytes(f"{self._dir(model_id)}/{CARD_JSON}")
        expected = self.expected_card_sha256(model_id)
        actual = sha256_hex(data)
        if expected is None:
            log.warning("model %s: no card digest recorded (published by an older skurec); card not verified", model_id)
        elif actual != expected:
            raise TamperedModelError(
                f"model {model_id}: {CARD_JSON} has SHA-256 {actual[:16]}… but {expected[:16]}… was recorded when it "
                "was published; the card was modified after training. Refusing to use it (restore the original card "
                "or deploy another model)."
            )
        return data

    def card(self, model_id: str) -> dict:
        """The model card, verified against the digest recorded at publication / deployment."""
        return json.loads(self.card_bytes(model_id).decode("utf-8"))

    def card_markdown(self, model_id: str) -> str | None:
        rel = f"{self._dir(model_id)}/{CARD_MD}"
        return self.ws.read_bytes(rel).decode("utf-8") if self.ws.exists(rel) else None

    def load_files(self, model_id: str) -> dict[str, bytes]:
        """The bundle's files, each verified against the SHA-256 in its card."""
        card = self.card(model_id)
        base = self._dir(model_id)
        files = {}
        for name, expected in card["files"].items():
            try:
                data = self.ws.read_bytes(f"{base}/{name}")
            except FileNotFoundError:
                raise TamperedModelError(
                    f"model {model_id}: file {name} listed in its model card is missing; the bundle is incomplete. "
                    "Restore the bundle from a backup or deploy another model."
                ) from None
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
    def _pointer(self) -> dict | None:
        return self.ws.read_json(DEPLOYED) if self.ws.exists(DEPLOYED) else None

    def deployed_id(self) -> str | None:
        pointer = self._pointer()
        return None if pointer is None else pointer["model_id"]

    def deploy(self, model_id: str, reason: str, extra: dict[str, Any] | None = None) -> dict:
        """Point the deployment at ``model_id`` (card and files verified first), then record the event.

        The pointer records the card's SHA-256 (the card records every file's). History is written after the pointer
        moved: a kill before the move leaves neither; a kill after it is repaired by :meth:`reconcile_history`.
        """
        card_sha256 = sha256_hex(self.card_bytes(model_id))
        self.load_files(model_id)
        event = {
            "model_id": model_id,
            "previous_model_id": self.deployed_id(),
            "deployed_at": now_iso(),
            "reason": reason,
            **(extra or {}),
            "card_sha256": card_sha256,
        }
        self.ws.write_json(DEPLOYED, event)
        self.record_event("deployed", event)
        return event

    def reconcile_history(self) -> bool:
        """Append the deployment event that a process killed between moving the pointer and writing the history
        left out (True when one was added). Idempotent."""
        pointer = self._pointer()
        if pointer is None:
            return False
        for event in self.history():
            if (
                event.get("event") == "deployed"
                and event.get("model_id") == pointer.get("model_id")
                and event.get("deployed_at") == pointer.get("deployed_at")
            ):
                return False
        self.record_event("deployed", {**pointer, "reconciled": "history written after an interrupted deployment"})
        log.warning(
            "model history: recorded the deployment of %s that an interrupted run left out", pointer["model_id"]
        )
        return True

    def record_event(self, kind: str, event: dict) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        self.ws.write_bytes(
            f"{MODEL_HISTORY_DIR}/{stamp}-{kind}.json",
            json.dumps({"event": kind, **event}, indent=2, default=str).encode(),
        )

    def history(self) -> list[dict]:
        """Every recorded event, oldest first."""
        return [self.ws.read_json(f"{MODEL_HISTORY_DIR}/{n}") for n in self.ws.listdir(MODEL_HISTORY_DIR)]


def _card_bytes(card: dict) -> bytes:
    return json.dumps(card, indent=2, sort_keys=True, default=str).encode("utf-8")
