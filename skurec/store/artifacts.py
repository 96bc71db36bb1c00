"""Artifact folders inside the work directory: a model's files plus ``_files.json`` (SHA-256 of each), written last.

Reading verifies every file against ``_files.json``, so a half-rewritten folder (a run killed between two files) or
a file edited by hand is detected instead of silently loaded.
"""

from __future__ import annotations

import hashlib

from skurec.store.model_store import TamperedModelError
from skurec.store.workspace import Workspace

INDEX = "_files.json"


def files_digest(files: dict[str, bytes]) -> str:
    """One hash over a set of files (names and bytes), order-free: the data version of an artifact."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def write_files(ws: Workspace, rel_dir: str, files: dict[str, bytes]) -> str:
    """Write an artifact folder; returns its digest."""
    for name, data in files.items():
        ws.write_bytes(f"{rel_dir}/{name}", data)
    ws.write_json(f"{rel_dir}/{INDEX}", {n: hashlib.sha256(d).hexdigest() for n, d in sorted(files.items())})
    return files_digest(files)


def artifact_exists(ws: Workspace, rel_dir: str) -> bool:
    """True when an artifact folder was written completely (its index is written last)."""
    return ws.exists(f"{rel_dir}/{INDEX}")


def read_files(ws: Workspace, rel_dir: str) -> dict[str, bytes]:
    if not ws.exists(f"{rel_dir}/{INDEX}"):
        raise FileNotFoundError(f"no artifact at {ws.uri(rel_dir)}; materialise the asset that writes it first")
    index = ws.read_json(f"{rel_dir}/{INDEX}")
    out = {}
    for name, expected in index.items():
        data = ws.read_bytes(f"{rel_dir}/{name}")
        if hashlib.sha256(data).hexdigest() != expected:
            raise TamperedModelError(f"{ws.uri(rel_dir)}/{name} does not match its recorded SHA-256; re-materialise it")
        out[name] = data
    return out
