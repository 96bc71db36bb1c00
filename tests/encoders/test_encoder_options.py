"""Encoder options of issue 12: test-time view recipes, multi-layer GeM features, input size, train-time views,
PCA whitening. Uses ``tiny_random_vit`` (RANDOM weights, ``pretrained: False``; never a real feature extractor) and
one small-input packaged convnet for the input-size / multi-stage checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from skurec.encoders import load_encoder
from skurec.encoders.base import VIEW_RECIPES, gem, zoom_center
from skurec.encoders.views import parse_view_encoder_id, train_views, view_encoder_id
from skurec.encoders.whitening import PCAWhitening


def _images(n: int, size: tuple[int, int] = (40, 30), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"), "RGB") for _ in range(n)]


def test_tiny_encoder_is_labelled_random() -> None:
    enc = load_encoder("tiny_random_vit", device="cpu", views="flip+zoom", layers=1)
    assert enc.pretrained is False and enc.identity()["source"]["kind"] == "random"


@pytest.mark.parametrize(
    "options",
    [
        {"views": "flip"},
        {"views": "zoom"},
        {"views": "tight"},
        {"views": "flip+zoom"},
        {"layers": 1},
        {"layers": 1, "views": "flip"},
    ],
)
def test_options_change_the_encoder_id_and_same_options_keep_it(options: dict) -> None:
    plain = load_encoder("tiny_random_vit", device="cpu")
    a = load_encoder("tiny_random_vit", device="cpu", **options)
    from skurec.encoders import clear_encoder_cache

    clear_encoder_cache()
    b = load_encoder("tiny_random_vit", device="cpu", **options)
    assert a is not b and a.encoder_id == b.encoder_id  # rebuilt from scratch: same id
    assert a.encoder_id != plain.encoder_id
    for k, v in options.items():
        assert f"{k}={v}" in a.encoder_id and a.identity()["options"][k] == v
    # the defaults never show up in the id (plain ids, and so cached tables, are unchanged)
    assert load_encoder("tiny_random_vit", device="cpu", views="center", layers=0).encoder_id == plain.encoder_id
    assert "layers" not in plain.identity()["options"]


def test_all_option_ids_are_distinct() -> None:
    ids = {
        load_encoder("tiny_random_vit", device="cpu", views=v, layers=l).encoder_id
        for v in VIEW_RECIPES
        for l in (0, 1)
    }
    assert len(ids) == 2 * len(VIEW_RECIPES)


def test_invalid_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="layers"):
        load_encoder("tiny_random_vit", device="cpu", layers=9)
    with pytest.raises(ValueError, match="layers"):
        load_encoder("tiny_random_vit", device="cpu", layers=1.5)
    with pytest.raises(ValueError, match="views"):
        load_encoder("tiny_random_vit", device="cpu", views="five_crop")


def test_multi_layer_dim_is_sum_of_parts_and_l2_normalised() -> None:
    enc = load_encoder("tiny_random_vit", device="cpu", layers=1)
    plain = load_encoder("tiny_random_vit", device="cpu")
    assert enc._part_dims == [[32, 32]] and enc.dim == 64 == enc.identity()["dim"]
    assert enc.identity()["part_dims"] == [[32, 32]]
    X = enc.embed_images(_images(3))
    assert X.shape == (3, 64) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    # first part = the plain pooled embedding (L2-normalised, weighted 1/sqrt(2) in the concatenation)
    P = plain.embed_images(_images(3))
    np.testing.assert_allclose(X[:, :32] * np.sqrt(2.0), P, atol=1e-5)
    assert np.allclose(np.linalg.norm(X[:, 32:], axis=1), 1 / np.sqrt(2.0), atol=1e-5)


def test_multi_stage_convnet_and_larger_input_size() -> None:
    enc = load_encoder("mobilenetv2_100", device="cpu", input_size=64, layers=2)
    assert (
        enc.pretrained and enc.input_size == 64 and "input_size=64" in enc.encoder_id and "layers=2" in enc.encoder_id
    )
    assert enc._part_dims == [[1280, 96, 320]] and enc.dim == 1696
    X = enc.embed_images(_images(2))
    assert X.shape == (2, 1696) and np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    bigger = load_encoder("mobilenetv2_100", device="cpu", input_size=96, layers=2)
    assert (
        bigger.encoder_id != enc.encoder_id and bigger.dim == enc.dim and bigger.min_decode_side > enc.min_decode_side
    )


def test_gem_and_zoom() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(gem(torch.full((1, 4, 3, 3), 2.0)), torch.full((1, 4), 2.0))
    assert torch.all(gem(x, p=3.0) >= x.mean(dim=(2, 3)) - 1e-6)  # power mean >= arithmetic mean
    z = zoom_center(x, 0.5)
    assert z.shape == x.shape and not torch.allclose(z, x)
    assert torch.allclose(zoom_center(x, 1.0), x, atol=1e-6)


def test_test_time_views_are_deterministic_and_recipe_matches_definition() -> None:
    imgs = _images(3)
    enc = load_encoder("tiny_random_vit", device="cpu", views="flip+zoom")
    a, b = enc.embed_images(imgs), enc.embed_images(imgs)
    np.testing.assert_array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    plain = load_encoder("tiny_random_vit", device="cpu")
    x = torch.stack([plain.preprocess(im) for im in imgs])
    views = [plain.forward_batch(x), plain.forward_batch(x.flip(3)), plain.forward_batch(zoom_center(x))]
    expected = torch.nn.functional.normalize(sum(views), dim=1).numpy()
    np.testing.assert_allclose(a, expected, atol=1e-5)
    # tight: the zoomed view alone, one forward
    tight = load_encoder("tiny_random_vit", device="cpu", views="tight").embed_images(imgs)
    np.testing.assert_allclose(tight, torch.nn.functional.normalize(views[2], dim=1).numpy(), atol=1e-5)
    # flip (unchanged behaviour): invariant to mirroring the input
    flip = load_encoder("tiny_random_vit", device="cpu", views="flip")
    mirrored = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs]
    np.testing.assert_allclose(flip.embed_images(imgs), flip.embed_images(mirrored), atol=1e-5)


def test_train_views_deterministic_per_image_and_seed() -> None:
    img = _images(1, size=(64, 48))[0]
    a = train_views(img, 4, seed=7, image_id="abc")
    b = train_views(img.copy(), 4, seed=7, image_id="abc")
    assert len(a) == 4 and all(v.mode == "RGB" for v in a)
    for x, y in zip(a, b):
        assert x.size == y.size and np.array_equal(np.asarray(x), np.asarray(y))
    arrays = [np.asarray(v) for v in a]
    assert len({(v.shape, v.tobytes()) for v in arrays}) == 4  # views differ across the view index
    # view j does not depend on k, and differs with the seed / the image id
    assert np.array_equal(np.asarray(train_views(img, 2, 7, "abc")[1]), arrays[1])
    other_seed = train_views(img, 1, seed=8, image_id="abc")[0]
    other_id = train_views(img, 1, seed=7, image_id="abd")[0]
    for o in (other_seed, other_id):
        assert o.size != a[0].size or not np.array_equal(np.asarray(o), arrays[0])
    assert train_views(img, 0, 7, "abc") == []
    with pytest.raises(ValueError):
        train_views(img.convert("L"), 1, 7, "abc")
    # the views embed like any image
    enc = load_encoder("tiny_random_vit", device="cpu")
    assert enc.embed_images(a).shape == (4, enc.dim)


def test_view_encoder_id_round_trip_and_cache_safe() -> None:
    import re

    enc = load_encoder("tiny_random_vit", device="cpu", views="flip")
    ids = {view_encoder_id(enc.encoder_id, k, 0) for k in range(3)} | {view_encoder_id(enc.encoder_id, 0, 1)}
    assert len(ids) == 4 and enc.encoder_id not in ids
    vid = view_encoder_id(enc.encoder_id, 2, 5)
    assert view_encoder_id(enc.encoder_id, 2, 5) == vid
    assert parse_view_encoder_id(vid) == (enc.encoder_id, 2, 5)
    assert parse_view_encoder_id(enc.encoder_id) is None
    suffix = vid[len(enc.encoder_id) :]
    assert re.fullmatch(r"[A-Za-z0-9._@+-]+", suffix)  # the cache keeps these characters in directory names
    with pytest.raises(ValueError):
        view_encoder_id(enc.encoder_id, -1, 0)


def test_pca_whitening_round_trips_through_safetensors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(50, 12)) @ rng.normal(size=(12, 12))).astype(np.float32)
    w = PCAWhitening.fit(X, dim=8)
    Z = w.transform(X)
    assert Z.shape == (50, 8) and np.allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    # whitened (before the final normalisation): unit variance, decorrelated
    raw = ((X - w.mean) @ w.components.T) * w.scale
    np.testing.assert_allclose(np.cov(raw, rowvar=False), np.eye(8), atol=1e-3)
    tensors_path, meta_path = w.to_files(tmp_path / "pca")
    assert tensors_path.suffix == ".safetensors" and meta_path.suffix == ".json"
    back = PCAWhitening.from_files(tmp_path / "pca")
    assert back.fingerprint == w.fingerprint
    np.testing.assert_array_equal(back.transform(X), Z)
    assert PCAWhitening.fit(X, dim=8).fingerprint == w.fingerprint  # deterministic fit (sign convention)
    from safetensors.numpy import load_file, save_file

    t = load_file(str(tensors_path))
    t["scale"] = t["scale"] * 2
    save_file(t, str(tensors_path))
    with pytest.raises(ValueError, match="fingerprint"):
        PCAWhitening.from_files(tmp_path / "pca")
