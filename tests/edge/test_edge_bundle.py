"""The edge bundle: exported from a deployed model, verified, answered by the onnxruntime runner exactly like the
Recognizer; corrupted or mismatched bundles are refused with a clear error; `skurec export` / `predict --bundle`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.edge import SKUS, edge_workdir
from support.loop import sku_png

from skurec.edge import BundleError, EdgeRunner, load_bundle
from skurec.serving.edge_export import (
    EdgeExportConfig,
    ParityError,
    check_parity,
    export_edge_bundle,
    export_from_workdir,
    write_manifest,
)
from skurec.serving.recognizer import Recognizer
from skurec_assets.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    ws, model_id = edge_workdir(root)
    manifest = export_from_workdir(ws, root / "bundle")
    return ws, model_id, root / "bundle", manifest


def test_export_writes_a_verified_bundle_that_answers_like_the_recognizer(exported, tmp_path):
    ws, model_id, bundle, manifest = exported
    assert manifest["model_id"] == model_id and manifest["precision"] == "fp32"
    assert set(manifest["files"]) == {
        "encoder.onnx",
        "classifier.onnx",
        "labels.json",
        "preprocess.json",
        "thresholds.json",
    }
    assert manifest["opset"]["classifier.onnx"] == 18
    parity = manifest["parity"]
    assert parity["n_images"] == 15 and parity["top1_agreement"] == 1.0 and parity["max_score_diff"] <= 1e-4
    on_disk = json.loads((bundle / "manifest.json").read_text())
    assert on_disk == manifest
    # the runner on new images: same JSON answer as the Recognizer (labels, unknown flag, scores to 1e-4)
    runner = EdgeRunner(bundle)
    rec = Recognizer.from_workdir(ws, device="cpu")
    imgs = [sku_png(s, 4242) for s in SKUS]
    for a, b in zip(runner.predict_many(imgs, batch_size=2), rec.predict_many(imgs)):
        b = b.to_dict()
        assert set(a) == set(b)
        assert a["sku_id"] == b["sku_id"] and a["unknown"] == b["unknown"] and a["superclass"] == b["superclass"]
        assert [t["sku_id"] for t in a["top_k"]] == [t["sku_id"] for t in b["top_k"]]
        np.testing.assert_allclose([t["score"] for t in a["top_k"]], [t["score"] for t in b["top_k"]], atol=1e-4)
    # every input kind decodes the same way
    pil = Image.open(io.BytesIO(imgs[0])).convert("RGB")
    assert runner.predict(np.asarray(pil))["sku_id"] == runner.predict(imgs[0])["sku_id"]
    # tracks: fused answer of several frames of one product
    track = runner.predict_track([sku_png("sku-green", 70 + i) for i in range(3)])
    assert (
        track["n_frames"] == 3
        and track["sku_id"] == rec.predict_track([sku_png("sku-green", 70 + i) for i in range(3)]).sku_id
    )


def test_a_corrupted_bundle_is_refused(exported, tmp_path):
    _, _, bundle, _ = exported
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "classifier.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "classifier.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="classifier.onnx is corrupted or was altered"):
        EdgeRunner(bad)
    (bad / "classifier.onnx").unlink()
    with pytest.raises(BundleError, match="classifier.onnx is missing"):
        load_bundle(bad)
    with pytest.raises(BundleError, match="not an edge bundle"):
        load_bundle(tmp_path)


def test_a_mismatched_bundle_fails_the_parity_check(exported, tmp_path):
    """Parts of another model with a consistent manifest pass the hash check; the parity check refuses them."""
    import shutil

    ws, _, bundle, _ = exported
    mixed = tmp_path / "mixed"
    shutil.copytree(bundle, mixed)
    # labels of another class order (e.g. another export's labels.json): same shapes, consistent manifest
    labels = json.loads((mixed / "labels.json").read_text())
    labels["classes"] = labels["classes"][1:] + labels["classes"][:1]
    (mixed / "labels.json").write_text(json.dumps(labels))
    write_manifest(mixed, {k: v for k, v in json.loads((mixed / "manifest.json").read_text()).items() if k != "files"})
    runner = EdgeRunner(mixed)
    rec = Recognizer.from_workdir(ws, device="cpu")
    images = [(f"{s}-{i}", sku_png(s, 10_000 * j + i), s) for j, s in enumerate(SKUS) for i in range(3)]
    with pytest.raises(ParityError, match="does not answer like the Recognizer"):
        check_parity(runner, rec, images)
    with pytest.raises(ParityError, match="no validation images"):
        check_parity(runner, rec, [])
    # a bundle whose embedding width does not fit the classifier is refused when opened
    enc_other = tmp_path / "wide"
    shutil.copytree(bundle, enc_other)
    flat_ws, _ = edge_workdir(tmp_path / "flat", flat=True, options={"views": "tight", "layers": 1})
    flat = export_from_workdir(flat_ws, tmp_path / "flat_bundle")  # the zoomed view and a GeM layer, as ONNX
    assert flat["parity"]["top1_agreement"] == 1.0 and flat["encoder"]["options"]["views"] == "tight"
    assert json.loads((tmp_path / "flat_bundle" / "preprocess.json").read_text())["layers"] == 1
    shutil.copy(tmp_path / "flat_bundle" / "encoder.onnx", enc_other / "encoder.onnx")
    write_manifest(
        enc_other, {k: v for k, v in json.loads((enc_other / "manifest.json").read_text()).items() if k != "files"}
    )
    with pytest.raises(BundleError, match="embeddings but the classifier expects"):
        EdgeRunner(enc_other)
    # and the refused export leaves nothing behind
    with pytest.raises(ParityError):
        export_edge_bundle(rec, tmp_path / "never", [], EdgeExportConfig())
    assert not (tmp_path / "never").exists()


def test_the_runner_imports_neither_torch_nor_timm_nor_dagster(exported):
    _, _, bundle, _ = exported
    code = (
        "import sys; from skurec.edge import EdgeRunner; r = EdgeRunner(sys.argv[1]); "
        "from PIL import Image; r.predict(Image.new('RGB', (50, 40), (200, 10, 10))); "
        "bad = [m for m in ('torch', 'timm', 'dagster') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(bundle)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_export_and_predict_with_the_bundle(exported, tmp_path, capsys):
    ws, model_id, _, _ = exported
    out = tmp_path / "cli_bundle"
    assert main(["export", "--workdir", ws.root, "--out", str(out)]) == 0
    assert load_bundle(out).model_id == model_id
    paths = []
    for sku in ("sku-yellow", "sku-white"):
        p = tmp_path / f"{sku}.png"
        p.write_bytes(sku_png(sku, 31337))
        paths.append(str(p))
    capsys.readouterr()
    assert main(["predict", "--bundle", str(out), *paths, "--threshold", "0"]) == 0
    edge = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert main(["predict", *paths, "--workdir", ws.root, "--device", "cpu", "--threshold", "0"]) == 0
    torch_lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [e["sku_id"] for e in edge] == [t["sku_id"] for t in torch_lines] == ["sku-yellow", "sku-white"]
    assert [set(e) for e in edge] == [set(t) for t in torch_lines]
    # --explain: the nearest training images of each top-k SKU (exemplars stored with the model)
    assert main(["predict", paths[0], "--workdir", ws.root, "--device", "cpu", "--explain", "--exemplars", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    expl = line["extra"]["explanations"]
    assert sorted(expl) == sorted(t["sku_id"] for t in line["top_k"])
    train_ids = {f"{s}-{i}" for s in SKUS for i in range(3, 10)}
    for sku, near in expl.items():
        assert len(near) == 2 and all(n["sku_id"] == sku and n["image_id"] in train_ids for n in near)
        assert near[0]["similarity"] >= near[1]["similarity"] and near[0]["image_uri"].endswith(".png")
    assert main(["predict", "--bundle", str(out), paths[0], "--explain"]) == 2
    capsys.readouterr()
    # the output says whether each image went to the review queue (both paths), and stderr counts the queue
    queue_dir = tmp_path / "queue_ws"
    for extra in (["--bundle", str(out)], ["--device", "cpu"]):
        argv = ["predict", *extra, *paths, "--workdir", str(queue_dir) if extra[0] == "--bundle" else ws.root]
        assert main([*argv, "--threshold", "1", "--review-queue"]) == 0
        captured = capsys.readouterr()
        lines = [json.loads(line) for line in captured.out.strip().splitlines()]
        assert all(line["unknown"] and line["queued_for_review"] for line in lines)
        assert "review queue: 2 image(s) queued by this run" in captured.err
    # a broken bundle: clear error, exit code 2
    (out / "labels.json").write_text("{}")
    assert main(["predict", "--bundle", str(out), paths[0]]) == 2
    assert "labels.json is corrupted or was altered" in capsys.readouterr().err


def test_int8_bundles_are_judged_on_validation_top1(exported, tmp_path):
    """A static int8 bundle (activations calibrated on training photos) runs and reports its top-1 delta; an int8
    bundle that loses more than half a point of validation top-1 is refused."""
    import shutil

    ws, _, bundle, _ = exported
    try:
        manifest = export_from_workdir(ws, tmp_path / "int8", quantize="static")
    except ParityError as exc:  # refused: the message names the loss
        assert "int8 bundle loses" in str(exc) and not (tmp_path / "int8").exists()
    else:
        assert manifest["precision"] == "int8-static" and manifest["parity"]["val_top1_delta"] >= -0.005
        assert len(EdgeRunner(tmp_path / "int8").predict(sku_png("sku-red", 5))["top_k"]) == 3
    # a quantised bundle whose answers are wrong (labels of another order) is refused on accuracy
    bad = tmp_path / "bad_int8"
    shutil.copytree(bundle, bad)
    labels = json.loads((bad / "labels.json").read_text())
    labels["classes"] = labels["classes"][1:] + labels["classes"][:1]
    (bad / "labels.json").write_text(json.dumps(labels))
    write_manifest(bad, {k: v for k, v in json.loads((bad / "manifest.json").read_text()).items() if k != "files"})
    images = [(f"{s}-{i}", sku_png(s, 10_000 * j + i), s) for j, s in enumerate(SKUS) for i in range(3)]
    with pytest.raises(ParityError, match="int8 bundle loses"):
        check_parity(EdgeRunner(bad), Recognizer.from_workdir(ws, device="cpu"), images, quantized=True)
