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


# ------------------------------------------------------------------------------------------------ issue 22: card digest
def _card_path(tmp_path, model_id):
    return tmp_path / "work" / "models" / model_id / "model_card.json"


def test_tampered_card_of_the_deployed_model_is_refused(tmp_path):
    """One changed byte of the card (a threshold) must refuse, not silently change answers."""
    store = _store(tmp_path)
    store.save("m1", {"w.safetensors": b"\x00\x01"}, {"recognition": {"threshold": 0.6422}})
    store.deploy("m1", "first")
    pointer = store.ws.read_json("models/deployed.json")
    assert pointer["card_sha256"] == store.expected_card_sha256("m1")
    path = _card_path(tmp_path, "m1")
    path.write_bytes(path.read_bytes().replace(b"0.6422", b"0.2422"))
    with pytest.raises(TamperedModelError, match="model_card.json.*modified after training") as err:
        store.card("m1")
    assert "\n" not in str(err.value)
    with pytest.raises(TamperedModelError):
        store.load_files("m1")


def test_tampered_card_of_a_published_model_is_refused_and_cannot_be_deployed(tmp_path):
    store = _store(tmp_path)
    store.save("m1", {"w.safetensors": b"\x00\x01"}, {"classes": {"list": ["a", "b"]}})
    path = _card_path(tmp_path, "m1")
    path.write_bytes(path.read_bytes().replace(b'"a"', b'"z"'))
    with pytest.raises(TamperedModelError):
        store.deploy("m1", "test")
    assert store.deployed_id() is None and store.history() == []


def test_unknown_model_error_names_the_known_ones(tmp_path):
    store = _store(tmp_path)
    store.save("m1", {"a.json": b"1"}, {})
    with pytest.raises(ModelStoreError, match="no model 'nosuch'.*m1"):
        store.card("nosuch")


# ------------------------------------------------------------------------------------------------ issue 22: kill points
def test_history_is_written_after_the_pointer_moves(tmp_path, monkeypatch):
    """A kill before the pointer moves must leave no history entry claiming a deployment."""
    store = _store(tmp_path)
    store.save("m1", {"a.json": b"1"}, {})
    store.save("m2", {"a.json": b"2"}, {})
    store.deploy("m1", "first")

    real = store.ws.write_bytes

    def killed_at_pointer(rel, data):
        if rel == "models/deployed.json":
            raise KeyboardInterrupt("killed")  # stands for SIGKILL at the moment the pointer would move
        return real(rel, data)

    monkeypatch.setattr(store.ws, "write_bytes", killed_at_pointer)
    with pytest.raises(KeyboardInterrupt):
        store.deploy("m2", "better")
    monkeypatch.undo()
    assert store.deployed_id() == "m1"
    assert [h["model_id"] for h in store.history()] == ["m1"]


def test_reconcile_adds_the_history_a_kill_after_the_pointer_left_out(tmp_path, monkeypatch):
    store = _store(tmp_path)
    store.save("m1", {"a.json": b"1"}, {})
    store.save("m2", {"a.json": b"2"}, {})
    store.deploy("m1", "first")
    monkeypatch.setattr(store, "record_event", lambda kind, event: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.deploy("m2", "better")
    monkeypatch.undo()
    assert store.deployed_id() == "m2"
    assert [h["model_id"] for h in store.history()] == ["m1"]
    assert store.reconcile_history() is True
    assert store.reconcile_history() is False
    hist = store.history()
    assert [h["model_id"] for h in hist] == ["m1", "m2"] and hist[1]["previous_model_id"] == "m1"
