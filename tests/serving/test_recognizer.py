"""Real-time recognition: any image input -> top-k SKUs with scores and superclass; unknown below the threshold;
review queue closing the loop; `skurec predict` JSON lines."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from support.deploy import deploy_model, train_small_hierarchy
from support.loop import sku_png

from skurec.catalogue.batches import DropBatch, inspect_batch
from skurec.encoders import load_encoder
from skurec.serving.recognizer import Recognizer, RecognizerError
from skurec.serving.review_queue import ReviewQueue
from skurec.store.workspace import Workspace
from skurec_assets.cli import main

SKUS = ["sku-red", "sku-green", "sku-blue", "sku-yellow", "sku-white"]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A workspace with the case-study hierarchy trained on tiny-ViT embeddings of separable SKU images (the first two
    images of each SKU for validation), deployed."""
    root = tmp_path_factory.mktemp("recognizer")
    ws = Workspace(str(root / "work"))
    enc = load_encoder("tiny_random_vit", device="cpu")
    ids, labels, images = [], [], []
    for j, sku in enumerate(SKUS):
        for i in range(8):
            data = sku_png(sku, 10_000 * j + i)
            images.append(Image.open(io.BytesIO(data)).convert("RGB"))
            labels.append(sku)
            ids.append(f"{sku}-{i}")
    X = enc.embed_images(images)
    y = np.asarray(labels)
    val = np.tile(np.arange(8) < 2, len(SKUS))
    model = train_small_hierarchy(X[~val], y[~val], X[val], y[val], "case_study")
    train_ids = [i for i, v in zip(ids, val) if not v]
    model_id = deploy_model(ws, model, enc, train_ids, y[~val].tolist(), n_superclasses=model.n_superclasses)
    return ws, model_id, enc


def test_every_input_kind_gives_the_same_answer(deployed, tmp_path):
    ws, model_id, enc = deployed
    rec = Recognizer.from_workdir(ws, encoder=enc, threshold=0.0)
    assert rec.model_id == model_id
    data = sku_png("sku-blue", 777)
    path = tmp_path / "blue.png"
    path.write_bytes(data)
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    arr = np.asarray(pil)
    outs = [rec.predict(x) for x in (str(path), path, data, pil, arr, arr.astype(np.float32) / 255.0)]
    first = outs[0]
    assert first.label == first.sku_id == "sku-blue" and not first.unknown
    assert first.image == str(path) and first.image_id is not None
    assert len(first.top_k) == 3 and first.top_k[0] == {"sku_id": "sku-blue", "score": first.score, "sku_name": "Blue"}
    assert first.superclass == rec.model.superclass_of_class()["sku-blue"]
    for o in outs[1:]:
        assert o.sku_id == first.sku_id and o.score == pytest.approx(first.score, abs=1e-5)
    # predict_many (batched) agrees with predict
    many = rec.predict_many([sku_png(s, 555) for s in SKUS], batch_size=2)
    assert [m.sku_id for m in many] == SKUS
    assert [m.sku_id for m in many] == [rec.predict(sku_png(s, 555)).sku_id for s in SKUS]


def test_low_confidence_is_unknown_and_goes_to_the_review_queue(deployed, tmp_path):
    ws, model_id, enc = deployed
    queue_ws = Workspace(str(tmp_path / "queue"))
    queue = ReviewQueue(queue_ws)
    confident = Recognizer.from_workdir(ws, encoder=enc, threshold=0.0)
    # An out-of-catalogue image (noise) or a blend of two SKUs: take the least confident one and put the threshold
    # just above its score.
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]
    blends = [
        Image.blend(
            Image.open(io.BytesIO(sku_png(a, 5))).convert("RGB"),
            Image.open(io.BytesIO(sku_png(b, 6))).convert("RGB"),
            0.5,
        )
        for a, b in zip(SKUS, SKUS[1:])
    ]
    candidates = []
    for im in noise + blends:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        candidates.append(buf.getvalue())
    scores = [confident.predict(c).score for c in candidates]
    img = candidates[int(np.argmin(scores))]
    assert min(scores) < 0.99
    rec = Recognizer.from_workdir(ws, encoder=enc, threshold=min(scores) + 0.005)
    out = rec.predict(img, review_queue=queue)
    assert out.unknown and out.label == "unknown" and out.score == pytest.approx(min(scores), abs=1e-5)
    assert out.sku_id == confident.predict(img).sku_id  # the best guess is kept for the reviewer
    assert len(queue) == 1
    item = queue.items()[0]
    assert item["suggested_sku_id"] == out.sku_id and item["model_id"] == model_id
    assert queue_ws.read_bytes(item["image_file"]) == img
    # Confident predictions are not queued.
    assert not confident.predict(sku_png("sku-red", 1), review_queue=queue).unknown
    assert len(queue) == 1

    # Exported for labelling: a valid batch once a person fills in sku_id; rejected while it is empty.
    batch_dir = tmp_path / "drop" / "review-1"
    manifest = queue.export_for_labelling(batch_dir)
    batch = DropBatch("review-1", str(batch_dir), str(manifest))
    assert not inspect_batch(batch).ok and "missing_sku_id" in inspect_batch(batch).reason
    m = pd.read_csv(manifest)
    m["sku_id"] = "sku-green"
    m.to_csv(manifest, index=False)
    checked = inspect_batch(batch)
    assert checked.ok and checked.skus == ["sku-green"] and checked.n_images == 1


def test_clear_errors(deployed, tmp_path):
    ws, _, enc = deployed
    missing = tmp_path / "nowhere" / "work"
    for given in (missing, str(missing)):
        with pytest.raises(RecognizerError, match="does not exist") as err:
            Recognizer.from_workdir(given)
        assert f"{missing} does not exist" in str(err.value) and f"skurec demo --workdir {missing}" in str(err.value)
    assert not missing.exists() and not missing.parent.exists()  # a reader never creates the work directory
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecognizerError, match="no model is deployed") as err:
        Recognizer.from_workdir(empty)
    assert str(empty) in str(err.value) and "skurec run --workdir" in str(err.value)
    assert list(empty.iterdir()) == []  # ... nor writes into an empty one
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RecognizerError, match="is not a folder"):
        Recognizer.from_workdir(tmp_path / "a-file")
    rec = Recognizer.from_workdir(ws, encoder=enc)
    with pytest.raises(RecognizerError, match="not a usable image"):
        rec.predict(b"definitely not an image")
    with pytest.raises(RecognizerError, match="cannot read image"):
        rec.predict(str(tmp_path / "missing.jpg"))
    with pytest.raises(RecognizerError, match="unsupported image input"):
        rec.predict(12345)
    other = load_encoder("tiny_random_vit", device="cpu", views="flip")  # other options -> other encoder id
    with pytest.raises(RecognizerError, match="trained on embeddings of encoder"):
        Recognizer.from_workdir(ws, encoder=other)
    with pytest.raises(ValueError, match="threshold"):
        Recognizer.from_workdir(ws, encoder=enc, threshold=1.5)


def test_default_threshold_is_the_models_calibrated_one(deployed):
    ws, model_id, enc = deployed
    plain = Recognizer.from_workdir(ws, encoder=enc)
    assert plain.threshold == 0.5  # this bundle has no calibration
    calibrated = Recognizer(plain.model, {**plain.card, "recognition": {"threshold": 0.123}}, enc)
    assert calibrated.threshold == 0.123
    assert (
        Recognizer(plain.model, {**plain.card, "recognition": {"threshold": 0.123}}, enc, threshold=0.7).threshold
        == 0.7
    )


def test_predict_cli_prints_one_json_line_per_image(deployed, tmp_path, capsys):
    ws, model_id, _ = deployed
    paths = []
    for sku in ("sku-yellow", "sku-white"):
        p = tmp_path / f"{sku}.png"
        p.write_bytes(sku_png(sku, 31337))
        paths.append(str(p))
    assert main(["predict", *paths, "--workdir", ws.root, "--device", "cpu", "--top-k", "2", "--threshold", "0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["sku_id"] for line in lines] == ["sku-yellow", "sku-white"]
    assert all(len(line["top_k"]) == 2 and line["model_id"] == model_id for line in lines)

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    code = main(
        ["predict", str(bad), paths[0], "--workdir", ws.root, "--device", "cpu", "--threshold", "1", "--review-queue"]
    )
    assert code == 1  # one image failed; the others are still answered
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert "error" in lines[0] and lines[1]["label"] == "unknown"
    assert len(ReviewQueue(ws)) == 1


@pytest.mark.parametrize("options", [{"views": "tight", "layers": 1}, {"views": "flip+zoom"}])
def test_the_recognizer_applies_exactly_the_evaluations_test_time_recipe(tmp_path, options):
    """A model trained on embeddings of an encoder with test-time options: the Recognizer loads that encoder from the
    card alone, and its embedding of an image equals the pipeline's (the rows evaluation scores) for the same bytes."""
    from skurec.embeddings.encode import embed_all
    from skurec.models import FlatPrototype

    enc = load_encoder("tiny_random_vit", device="cpu", **options)
    datas = {f"{sku}-{i}": sku_png(sku, 500 + 10 * j + i) for j, sku in enumerate(SKUS) for i in range(3)}
    batch = embed_all(enc, [(k, (lambda d=d: d)) for k, d in datas.items()], batch_size=4, tqdm_bar=False)
    assert batch.ids == list(datas) and not batch.failures
    y = np.asarray([k.rsplit("-", 1)[0] for k in batch.ids])
    model = FlatPrototype.fit(batch.vectors, y, device="cpu")
    ws = Workspace(str(tmp_path / "work"))
    deploy_model(ws, model, enc, batch.ids, y, n_superclasses=1)
    rec = Recognizer.from_workdir(ws, threshold=0.0)  # the encoder comes from the card
    assert rec.encoder is not enc and rec.encoder.encoder_id == enc.encoder_id
    for k, v in options.items():
        assert rec.encoder.identity()["options"][k] == v
    np.testing.assert_allclose(rec.embed(list(datas.values())), batch.vectors, atol=1e-5)
    img = Image.open(io.BytesIO(datas["sku-red-0"])).convert("RGB")
    plain, recipe = load_encoder("tiny_random_vit", device="cpu").embed_images([img]), rec.embed([img])
    assert plain.shape != recipe.shape or not np.allclose(plain, recipe, atol=1e-3)  # the options change the vectors
    assert rec.predict(datas["sku-red-0"]).sku_id == "sku-red"
