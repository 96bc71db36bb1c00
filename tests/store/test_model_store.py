from __future__ import annotations

import pytest

from skurec.store.model_store import ModelStore, ModelStoreError, TamperedModelError
from skurec.store.workspace import Workspace


def _store(tmp_path):
    return ModelStore(Workspace(str(tmp_path / "work")))


def test_save_load_roundtrip_records_hashes(tmp_path):
    store = _store(tmp_path)
    rec = store.save("m1", {"config.json": b"{}", "w.safetensors": b"\x00\x01"}, {"kind": "test"}, "# card")
    assert set(rec.card["files"]) == {"config.json", "w.safetensors"}
    assert store.load_files("m1") == {"config.json": b"{}", "w.safetensors": b"\x00\x01"}
    assert store.card_markdown("m1") == "# card"
    assert [r.model_id for r in store.list()] == ["m1"]


def test_tampered_file_is_refused(tmp_path):
    store = _store(tmp_path)
    store.save("m1", {"w.safetensors": b"\x00\x01"}, {})
    (tmp_path / "work" / "models" / "m1" / "w.safetensors").write_bytes(b"\x00\x02")
    with pytest.raises(TamperedModelError, match="modified after training"):
        store.load_files("m1")
    with pytest.raises(TamperedModelError):
        store.deploy("m1", "test")
    assert store.deployed_id() is None


def test_bundles_are_immutable_and_names_checked(tmp_path):
    store = _store(tmp_path)
    store.save("m1", {"a.json": b"1"}, {})
    with pytest.raises(ModelStoreError, match="immutable"):
        store.save("m1", {"a.json": b"2"}, {})
    with pytest.raises(ModelStoreError):
        store.save("m2", {"../escape": b"x"}, {})
    with pytest.raises(ModelStoreError):
        store.card("../etc")


def test_deploy_pointer_and_history(tmp_path):
    store = _store(tmp_path)
    store.save("m1", {"a.json": b"1"}, {})
    store.save("m2", {"a.json": b"2"}, {})
    store.deploy("m1", "first")
    store.deploy("m2", "better")
    assert store.deployed_id() == "m2"
    hist = store.history()
    assert [h["model_id"] for h in hist] == ["m1", "m2"]
    assert hist[1]["previous_model_id"] == "m1"
