"""What keeps the edge bundle's cost flat as the catalogue grows: the fp32 parity check on a stable-hash sample of
the validation images (the manifest says how many of how many), and the encoder's ONNX export reused across bundles
while the encoder is unchanged (kept with its SHA-256; a tampered or foreign export is exported again)."""

from __future__ import annotations

import hashlib
import json

import pytest
from support.edge import edge_workdir

from skurec import layout
from skurec.edge import EdgeRunner
from skurec.encoders import load_encoder
from skurec.serving import edge_export
from skurec.serving.edge_export import (
    EdgeExportConfig,
    encoder_export_key,
    export_from_workdir,
    parity_sample,
    validation_rows,
)


def _ids(n: int, prefix: str = "img") -> list[tuple[str, bytes, str]]:
    return [(f"{prefix}-{i:04d}", b"", "sku") for i in range(n)]


def test_the_parity_sample_is_stable_bounded_and_kept_when_images_arrive():
    images = _ids(600)
    first = parity_sample(images, 256)
    assert len(first) == 256 and parity_sample(list(reversed(images)), 256) == list(reversed(first))
    assert first == [im for im in images if im in first]  # the given order is kept
    assert parity_sample(images, 256) == first  # the same images every time
    assert parity_sample(images[:100], 256) == images[:100] and parity_sample(images, None) == images
    # images arriving later displace a sampled image only when their hash is lower: what stays, stays in
    grown = parity_sample(images + _ids(300, "new"), 256)
    old_kept = {im[0] for im in grown if im[0].startswith("img-")}
    assert old_kept <= {im[0] for im in first} and len(grown) == 256
    # the lowest hashes of the image ids, not the first ids in order
    h = {im[0]: hashlib.sha256(f"{edge_export.PARITY_SALT}:{im[0]}".encode()).hexdigest() for im in images}
    assert {im[0] for im in first} == set(sorted(h, key=h.get)[:256])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return edge_workdir(tmp_path_factory.mktemp("edge_reuse"))


def test_fp32_parity_runs_on_the_sample_and_says_of_how_many(workdir, tmp_path):
    ws, model_id = workdir
    rows = validation_rows(ws)
    manifest = export_from_workdir(ws, tmp_path / "b", config=EdgeExportConfig(parity_images=6))
    parity = manifest["parity"]
    assert parity["n_images"] == 6 and parity["n_validation_images"] == len(rows) == 15
    assert parity["sample"].startswith("stable hash") and parity["top1_agreement"] == 1.0
    every = export_from_workdir(ws, tmp_path / "all", config=EdgeExportConfig(parity_images=None))["parity"]
    assert every["n_images"] == 15 and every["sample"] == "every validation image"
    assert EdgeExportConfig().parity_images == 256


def test_the_encoder_export_is_reused_while_the_encoder_is_unchanged(workdir, tmp_path, monkeypatch):
    ws, model_id = workdir
    first = export_from_workdir(ws, tmp_path / "one", reuse_encoder=True)
    key = first["encoder_export"]["key"]
    folder = layout.edge_encoder_export_dir(key)
    assert ws.exists(f"{folder}/encoder.onnx") and first["encoder_export"]["reused"] is False
    # the next bundle copies the recorded export: the exporter is not called again, the bundle is still judged
    calls = []
    real = edge_export.export_encoder_onnx
    monkeypatch.setattr(edge_export, "export_encoder_onnx", lambda *a, **k: calls.append(a) or real(*a, **k))
    second = export_from_workdir(ws, tmp_path / "two", reuse_encoder=True)
    assert calls == [] and second["encoder_export"] == {**first["encoder_export"], "reused": True}
    assert (tmp_path / "two" / "encoder.onnx").read_bytes() == ws.read_bytes(folder, "encoder.onnx")
    assert second["parity"]["top1_agreement"] == 1.0 and EdgeRunner(tmp_path / "two").model_id == model_id
    # a tampered export is not trusted: exported again (and recorded again)
    ws.write_bytes(f"{folder}/encoder.onnx", b"not an onnx graph")
    third = export_from_workdir(ws, tmp_path / "three", reuse_encoder=True)
    assert len(calls) == 1 and third["encoder_export"]["reused"] is False
    record = ws.read_json(folder, "export.json")
    assert record["sha256"] == hashlib.sha256(ws.read_bytes(folder, "encoder.onnx")).hexdigest()
    # without reuse_encoder (the CLI, a reader of the work directory) nothing is read from or written to the cache
    export_from_workdir(ws, tmp_path / "four")
    assert len(calls) == 2 and json.loads((tmp_path / "four" / "manifest.json").read_text())["encoder_export"] == {
        "reused": False
    }


def test_another_encoder_identity_gets_another_export():
    enc = load_encoder("tiny_random_vit", device="cpu")
    other = load_encoder("tiny_random_vit", device="cpu", views="tight")
    assert encoder_export_key(enc, 18) == encoder_export_key(load_encoder("tiny_random_vit", device="cpu"), 18)
    assert encoder_export_key(enc, 18) != encoder_export_key(other, 18) != encoder_export_key(enc, 17)
