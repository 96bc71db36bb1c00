"""Frozen encoders: registry, tiny RANDOM ViT, identity, checkpoint files, hub failure path, packaged weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skurec.encoders import (
    EncoderCheckpointError,
    EncoderUnavailableError,
    FrozenEncoder,
    available_encoders,
    load_encoder,
)
from skurec.encoders.checkpoint import create_timm_model
from skurec.encoders.packaged import PACKAGED, build_packaged_model, read_packaged_state_dict
from skurec.encoders.tiny import TINY_ARCH, TINY_KWARGS

GROCERY = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "grocery_store" / "dataset"


def _images(n: int, size: tuple[int, int] = (40, 30), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB") for _ in range(n)]


def test_registry_lists_every_family() -> None:
    names = available_encoders()
    for name in ("dinov2_vits14", "efficientnet_lite2", "mobilenetv2_100", "tiny_random_vit", "timm:<arch>"):
        assert name in names and names[name].strip()
    assert "random" in names["tiny_random_vit"].lower()


def test_registry_is_the_one_table_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding an encoder is one registered loader: load_encoder, combined names and takes_checkpoint all see it."""
    from skurec.encoders import ENCODERS, encoder_spec, register_encoder, takes_checkpoint
    from skurec.encoders.tiny import load_tiny_random_vit

    for name in ("dinov2_vits14", "dinov2_vitb14", "dinov2_vits14_reg", "dinov2_vitb14_reg"):
        assert (
            ENCODERS[name].takes_checkpoint and not ENCODERS[name].requires_checkpoint and name in available_encoders()
        )
    assert takes_checkpoint("timm:resnet50") and encoder_spec("timm:resnet50").requires_checkpoint
    assert not takes_checkpoint("efficientnet_lite2") and takes_checkpoint("efficientnet_lite2+dinov2_vits14")
    assert encoder_spec("tiny_random_vit").pretrained is False

    monkeypatch.setattr("skurec.encoders.registry.ENCODERS", dict(ENCODERS))  # the registration is undone after
    import skurec.encoders.registry as registry

    calls = []

    @register_encoder(
        "random_test_encoder", description="RANDOM tiny ViT under another name (test only)", pretrained=False
    )
    def _load(name: str, checkpoint: str | None, input_size: int | None):
        calls.append((name, checkpoint, input_size))
        return load_tiny_random_vit(seed=5)

    assert "random_test_encoder" in registry.descriptions()
    enc = load_encoder("random_test_encoder", device="cpu")
    assert calls == [("random_test_encoder", None, None)] and enc.dim == 32 and enc.pretrained is False
    both = load_encoder("random_test_encoder+tiny_random_vit", device="cpu")
    assert both.dim == 64 and not takes_checkpoint("random_test_encoder+tiny_random_vit")
    with pytest.raises(ValueError, match="does not take a checkpoint"):
        load_encoder("random_test_encoder", checkpoint="x.pth", device="cpu")
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("random_test_encoder", description="again")(lambda n, c, s: None)


def test_unknown_name_and_option_are_clear_errors() -> None:
    with pytest.raises(EncoderUnavailableError, match="unknown encoder 'nope'"):
        load_encoder("nope")
    with pytest.raises(ValueError, match="unknown encoder option"):
        load_encoder("tiny_random_vit", colour="blue")
    with pytest.raises(ValueError, match="views"):
        load_encoder("tiny_random_vit", views="five_crop")
    with pytest.raises(EncoderUnavailableError, match="checkpoint=PATH"):
        load_encoder("timm:vit_tiny_patch16_224")


def test_tiny_random_vit_output_is_l2_normalised_and_says_random() -> None:
    enc = load_encoder("tiny_random_vit", device="cpu")
    assert isinstance(enc, FrozenEncoder)
    assert enc.pretrained is False and enc.dim == 32 and enc.device == torch.device("cpu")
    x = enc.preprocess(_images(1)[0])
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    out = enc.embed_images(_images(5))
    assert out.shape == (5, 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])  # different images -> different vectors
    ident = enc.identity()
    assert ident["pretrained"] is False and ident["source"]["kind"] == "random"
    assert enc.encoder_id.startswith("tiny_random_vit@") and ident["weights_sha256"] == enc.weights_sha256


def test_identity_fields_are_json_and_reflect_options() -> None:
    plain = load_encoder("tiny_random_vit", device="cpu")
    flip = load_encoder("tiny_random_vit", device="cpu", views="flip")
    ident = json.loads(json.dumps(flip.identity()))
    for key in (
        "name",
        "encoder_id",
        "weights_sha256",
        "pretrained",
        "dim",
        "input_size",
        "mean",
        "std",
        "options",
        "source",
    ):
        assert key in ident
    assert ident["options"]["views"] == "flip" and ident["input_size"] == 32
    assert len(ident["weights_sha256"]) == 64
    assert flip.encoder_id != plain.encoder_id and "views=flip" in flip.encoder_id
    assert flip.weights_sha256 == plain.weights_sha256
    assert load_encoder("tiny_random_vit", device="cpu") is plain  # cached per (name, checkpoint, options)
    # The identity's options reload the same encoder (what serving does with a model card).
    again = load_encoder(ident["name"], device="cpu", **ident["options"])
    assert again.encoder_id == flip.encoder_id


def test_flip_views_is_invariant_to_mirroring() -> None:
    enc = load_encoder("tiny_random_vit", device="cpu", views="flip")
    img = _images(1, size=(32, 32))[0]
    mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a, b = enc.embed_images([img, mirrored])
    np.testing.assert_allclose(a, b, atol=1e-5)
    plain = load_encoder("tiny_random_vit", device="cpu").embed_images([img, mirrored])
    assert not np.allclose(plain[0], plain[1], atol=1e-3)


def test_forward_batch_rejects_wrong_shapes_and_modes() -> None:
    enc = load_encoder("tiny_random_vit", device="cpu")
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        enc.forward_batch(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="RGB"):
        enc.preprocess(Image.new("L", (40, 40)))
    assert enc.forward_batch(torch.zeros(0, 3, 32, 32)).shape == (0, 32)


def _tiny_timm_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_timm_model(TINY_ARCH, **TINY_KWARGS)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip_of_random_tiny_vit(tmp_path: Path, suffix: str) -> None:
    """A RANDOM tiny ViT state dict saved to a file loads back exactly through timm:<arch>."""
    model = _tiny_timm_model(seed=123).eval()
    path = tmp_path / f"random_tiny_vit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    # The checkpoint path needs architecture kwargs for the tiny shape; generic timm names use timm defaults, so
    # load through the checkpoint module with the same kwargs the file was made with.
    from skurec.encoders.checkpoint import load_timm_checkpoint

    backbone = load_timm_checkpoint(
        TINY_ARCH, path, input_size=32, model_kwargs={k: v for k, v in TINY_KWARGS.items() if k != "img_size"}
    )
    enc = FrozenEncoder("random_tiny_vit_file", [backbone], device="cpu")
    loaded = backbone.module.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    x = torch.stack([enc.preprocess(im) for im in _images(3)])
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(model(x), dim=1)
    torch.testing.assert_close(enc.forward_batch(x), expected)
    assert enc.identity()["source"]["kind"] == "file"
    import hashlib

    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_timm_name_with_checkpoint_and_key_mismatch_error(tmp_path: Path) -> None:
    """load_encoder('timm:<arch>', checkpoint=...) works for a matching file and names missing keys otherwise."""
    arch = "test_vit"  # timm's tiny test ViT, RANDOM weights
    torch.manual_seed(0)
    model = create_timm_model(arch, img_size=32)
    good = tmp_path / "random_test_vit.safetensors"
    from safetensors.torch import save_file

    sd = model.state_dict()
    save_file(sd, str(good))
    enc = load_encoder(f"timm:{arch}", checkpoint=str(good), device="cpu", input_size=32)
    assert enc.dim == model.num_features and enc.identity()["source"]["checkpoint"] == str(good)
    from skurec.encoders import recorded_checkpoint

    assert recorded_checkpoint(enc.identity()) == str(good)  # what serving passes back from a model card
    assert recorded_checkpoint(load_encoder("tiny_random_vit", device="cpu").identity()) is None
    assert enc.embed_images(_images(2)).shape == (2, model.num_features)

    bad = tmp_path / "random_test_vit_missing.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.0.")}, bad)
    with pytest.raises(EncoderCheckpointError, match=r"missing: blocks\.0\."):
        load_encoder(f"timm:{arch}", checkpoint=str(bad), device="cpu", input_size=32)

    wrong = tmp_path / "random_test_vit_extra.pth"
    torch.save({**sd, "blocks.99.weird": torch.zeros(3)}, wrong)
    with pytest.raises(EncoderCheckpointError, match=r"unexpected: blocks\.99\.weird"):
        load_encoder(f"timm:{arch}", checkpoint=str(wrong), device="cpu", input_size=32)

    with pytest.raises(EncoderUnavailableError, match="does not exist"):
        load_encoder(f"timm:{arch}", checkpoint=str(tmp_path / "absent.pth"))


def test_dinov2_local_checkpoint_with_random_weights_loads(tmp_path: Path) -> None:
    """A RANDOM DINOv2-S/14 state dict at timm's native 518 px loads at 224 px (position embeddings resampled)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    native = create_timm_model("vit_small_patch14_dinov2")  # 518 px, 37x37 patch grid
    path = tmp_path / "random_dinov2_vits14.safetensors"
    save_file(native.state_dict(), str(path))
    enc = load_encoder("dinov2_vits14", checkpoint=str(path), device="cpu")
    assert enc.dim == 384 and enc.input_size == 224 and enc.identity()["source"]["kind"] == "file"
    loaded = enc.backbones[0].module.state_dict()
    assert loaded["pos_embed"].shape[1] == 1 + 16 * 16
    torch.testing.assert_close(loaded["blocks.0.attn.qkv.weight"], native.state_dict()["blocks.0.attn.qkv.weight"])
    out = enc.embed_images(_images(2, size=(60, 50)))
    assert out.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_dinov2_local_checkpoint_wrong_file_is_clear(tmp_path: Path) -> None:
    """dinov2_vits14 with a file holding another architecture fails with the key/shape report."""
    torch.manual_seed(0)
    other = create_timm_model("test_vit", img_size=32)
    path = tmp_path / "random_not_dinov2.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(EncoderCheckpointError, match="vit_small_patch14_dinov2"):
        load_encoder("dinov2_vits14", checkpoint=str(path), device="cpu")


def test_dinov2_hub_unavailable_fails_fast_and_names_remedy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))  # nothing cached
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"), raising=False)
    for offline in ("1", None):
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: connection refused
        t0 = time.perf_counter()
        with pytest.raises(EncoderUnavailableError) as err:
            load_encoder("dinov2_vits14", device="cpu")
        assert time.perf_counter() - t0 < 10
        msg = str(err.value)
        assert "checkpoint=PATH" in msg and "efficientnet_lite2" in msg


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_weights_equal_the_shipped_file(name: str) -> None:
    """Every tensor of the shipped file is loaded, unchanged, into the timm model (position mapping)."""
    file_sd, path = read_packaged_state_dict(name)
    assert path.is_file()
    with_head = PACKAGED[name].has_classifier
    model, _ = build_packaged_model(name, with_classifier=with_head)
    model_sd = model.state_dict()
    assert len(model_sd) == len(file_sd)
    for (f_key, f_val), (m_key, m_val) in zip(file_sd.items(), model_sd.items()):
        assert torch.equal(f_val, m_val), (f_key, m_key)
    enc = load_encoder(name, device="cpu")
    assert enc.pretrained is True and enc.dim == 1280
    assert enc.identity()["source"]["kind"] == "package"
    assert enc.input_size == PACKAGED[name].input_size and enc.mean == PACKAGED[name].mean
    emb_sd = enc.backbones[0].module.state_dict()  # embedding model: same tensors minus the classifier
    n_head = 2 if with_head else 0
    for (f_key, f_val), (m_key, m_val) in zip(list(file_sd.items())[: len(file_sd) - n_head], emb_sd.items()):
        assert torch.equal(f_val, m_val), (f_key, m_key)
    import hashlib

    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_efficientnet_lite2_native_preprocessing_matches_timm_cfg() -> None:
    enc = load_encoder("efficientnet_lite2", device="cpu")
    cfg = enc.backbones[0].module.pretrained_cfg
    assert cfg["input_size"][-1] == enc.input_size == 260
    assert tuple(cfg["mean"]) == enc.mean == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == enc.std
    assert enc.min_decode_side == int(260 / cfg["crop_pct"])


def test_combined_encoder_concatenates_normalised_parts() -> None:
    both = load_encoder("efficientnet_lite2+mobilenetv2_100", device="cpu", input_size=64)
    assert both.dim == 2560 and both.pretrained and len(both.identity()["parts"]) == 2
    assert [p["name"] for p in both.identity()["parts"]] == ["efficientnet_lite2", "mobilenetv2_100"]
    # Each part alone, same crop (the combined encoder uses the first part's crop_pct), its own normalisation.
    lite, mnv2 = both.backbones
    a = FrozenEncoder("efficientnet_lite2", [lite], device="cpu", input_size=64)
    b = FrozenEncoder("mobilenetv2_100", [mnv2], device="cpu", input_size=64, crop_pct=lite.crop_pct)
    assert b.mean != a.mean  # the mobilenet part really gets re-normalised inside the combined encoder
    imgs = _images(2, size=(80, 70))
    expected = np.concatenate([a.embed_images(imgs), b.embed_images(imgs)], axis=1) / np.sqrt(2.0)
    np.testing.assert_allclose(both.embed_images(imgs), expected, atol=1e-4)
    assert both.encoder_id != a.encoder_id and "input_size=64" in both.encoder_id


@pytest.mark.skipif(not GROCERY.is_dir(), reason="Grocery Store dataset (../shared beside the checkout) not present")
def test_efficientnet_lite2_head_recognises_granny_smith() -> None:
    """With the shipped ImageNet head, Granny-Smith photos come out as ImageNet class 948 'Granny Smith'."""
    from skurec.images import decode_rgb

    model, _ = build_packaged_model("efficientnet_lite2", with_classifier=True)
    enc = load_encoder("efficientnet_lite2", device="cpu")
    files = sorted((GROCERY / "train/Fruit/Apple/Granny-Smith").glob("*.jpg"))[:4]
    x = torch.stack([enc.preprocess(decode_rgb(f.read_bytes(), enc.min_decode_side)) for f in files])
    with torch.inference_mode():
        top = model(x).argmax(1).tolist()
    assert sum(t == 948 for t in top) >= 3, top


def test_cpu_forward_pool_matches_plain_torch_and_keeps_thread_setting() -> None:
    """The multi-thread CPU forward (one intra-op thread per worker) gives the plain-torch vectors and leaves the
    caller's torch thread count alone."""
    before = torch.get_num_threads()
    pooled = load_encoder("tiny_random_vit", device="cpu", cpu_threads=2)
    plain = load_encoder("tiny_random_vit", device="cpu", cpu_threads=1)
    assert pooled is not plain and pooled.encoder_id == plain.encoder_id  # runtime setting, not identity
    x = torch.stack([pooled.preprocess(im) for im in _images(11)])  # 11: micro-batches of 4 don't divide it
    torch.testing.assert_close(pooled.forward_batch(x), plain.forward_batch(x), rtol=1e-4, atol=1e-5)
    assert torch.get_num_threads() == before
    if pooled._get_cpu_pool() is not None:  # OpenMP builds: the workers really run single-threaded
        assert set(pooled._get_cpu_pool().map(lambda _: torch.get_num_threads(), range(4))) == {1}
    with pytest.raises(ValueError, match="cpu_threads"):
        load_encoder("tiny_random_vit", device="cpu", cpu_threads=0)
