"""DINOv2 weights in the layouts users download (timm hub, Meta's original .pth, Hugging Face transformers).

Every file here holds RANDOM weights (``random_*`` file names), written in exactly the foreign layout by converters
written independently of skurec's (timm -> layout); the loaded encoder must give the features of the timm model
holding the same weights. Small input sizes (56 px = 4x4 patches) keep the CPU cost low.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skurec.encoders import EncoderCheckpointError, load_encoder
from skurec.encoders.checkpoint import create_timm_model

SIZE = 56  # divisible by the 14 px patch


def _random_state_dict(arch: str, seed: int) -> dict[str, torch.Tensor]:
    """timm ``arch`` at its native 518 px with EVERY tensor random (layer scales ~1, not timm's 1e-5 init, so a
    mis-mapped block really changes the features)."""
    model = create_timm_model(arch)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith(("ls1.gamma", "ls2.gamma")):
            out[key] = 0.5 + torch.rand(value.shape, generator=g)
        elif ".norm" in key or key.startswith("norm."):
            out[key] = (1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn(value.shape, generator=g)
        else:
            out[key] = 0.05 * torch.randn(value.shape, generator=g)
    return out


def _meta_layout(sd: dict[str, torch.Tensor], seed: int = 7) -> dict[str, torch.Tensor]:
    """timm -> Meta's dinov2_*_pretrain.pth layout."""
    out = {k: v.clone() for k, v in sd.items()}
    dim = sd["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim)
    if "reg_token" in out:  # Meta: pos_embed includes the CLS position; timm folded it into cls_token
        cls_pos = torch.randn(1, 1, dim, generator=torch.Generator().manual_seed(seed))
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([cls_pos, out["pos_embed"]], dim=1)
        out["cls_token"] = out["cls_token"] - cls_pos
    return out


def _hf_layout(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """timm -> Hugging Face transformers Dinov2Model (Dinov2WithRegistersModel) layout."""
    meta = _meta_layout(sd)
    out: dict[str, torch.Tensor] = {
        "embeddings.cls_token": meta["cls_token"],
        "embeddings.mask_token": meta["mask_token"],
        "embeddings.position_embeddings": meta["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": meta["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": meta["patch_embed.proj.bias"],
        "layernorm.weight": meta["norm.weight"],
        "layernorm.bias": meta["norm.bias"],
    }
    if "register_tokens" in meta:
        out["embeddings.register_tokens"] = meta["register_tokens"]
    depth = 1 + max(int(k.split(".")[1]) for k in meta if k.startswith("blocks."))
    for n in range(depth):
        b, h = f"blocks.{n}.", f"encoder.layer.{n}."
        for kind in ("weight", "bias"):
            q, k, v = meta[f"{b}attn.qkv.{kind}"].chunk(3, dim=0)
            out[f"{h}attention.attention.query.{kind}"] = q
            out[f"{h}attention.attention.key.{kind}"] = k
            out[f"{h}attention.attention.value.{kind}"] = v
            out[f"{h}attention.output.dense.{kind}"] = meta[f"{b}attn.proj.{kind}"]
            out[f"{h}norm1.{kind}"] = meta[f"{b}norm1.{kind}"]
            out[f"{h}norm2.{kind}"] = meta[f"{b}norm2.{kind}"]
            out[f"{h}mlp.fc1.{kind}"] = meta[f"{b}mlp.fc1.{kind}"]
            out[f"{h}mlp.fc2.{kind}"] = meta[f"{b}mlp.fc2.{kind}"]
        out[f"{h}layer_scale1.lambda1"] = meta[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = meta[f"{b}ls2.gamma"]
    out = {prefix + k: v.contiguous().clone() for k, v in out.items()}
    if prefix:  # Dinov2ForImageClassification also has a linear head on top
        dim = sd["cls_token"].shape[-1]
        out["classifier.weight"], out["classifier.bias"] = torch.zeros(10, 2 * dim), torch.zeros(10)
    return out


def _write(sd: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def _reference_features(arch: str, timm_sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Features of a plain timm model holding the same weights (timm's own position-embedding resampling)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = create_timm_model(arch, input_size=SIZE).eval()
    model.load_state_dict(checkpoint_filter_fn(dict(timm_sd), model), strict=True)
    with torch.inference_mode():
        return model(x)


def _features(enc, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return enc.backbones[0].module(x.contiguous(memory_format=torch.channels_last))


ARCH = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
}


@pytest.fixture(scope="module")
def small_weights() -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: _random_state_dict(ARCH[name], seed=i) for i, name in enumerate(("dinov2_vits14", "dinov2_vits14_reg"))
    }


LAYOUTS = {
    "timm": (lambda sd: dict(sd), "random_model.safetensors"),
    "meta": (_meta_layout, "random_dinov2_pretrain.pth"),
    "huggingface": (_hf_layout, "random_hf_model.safetensors"),
    "huggingface_prefixed": (lambda sd: _hf_layout(sd, prefix="dinov2."), "random_hf_classifier.safetensors"),
}


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_gives_the_timm_models_features(tmp_path: Path, small_weights, name: str, layout: str) -> None:
    timm_sd = small_weights[name]
    convert, filename = LAYOUTS[layout]
    path = _write(convert(timm_sd), tmp_path / filename)
    enc = load_encoder(name, checkpoint=str(path), device="cpu", input_size=SIZE)
    assert enc.name == name and enc.dim == 384 and enc.input_size == SIZE
    source = enc.identity()["source"]
    assert source["kind"] == "file" and source["arch"] == ARCH[name] and source["layout"] == layout.split("_")[0]
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    ref = _reference_features(ARCH[name], timm_sd, x)
    got = _features(enc, x)
    assert got.shape == ref.shape == (2, 384)
    assert (got - ref).abs().max().item() < 1e-4
    if layout == "huggingface":  # the comparison has teeth: swapping query and key changes the features
        bad = dict(convert(timm_sd))
        q, k = "encoder.layer.0.attention.attention.query.weight", "encoder.layer.0.attention.attention.key.weight"
        bad[q], bad[k] = bad[k], bad[q]
        swapped = load_encoder(
            name, checkpoint=str(_write(bad, tmp_path / "random_swapped.safetensors")), device="cpu", input_size=SIZE
        )
        assert (_features(swapped, x) - ref).abs().max().item() > 1e-3


def test_default_input_size_resamples_to_224(tmp_path: Path, small_weights) -> None:
    path = _write(_meta_layout(small_weights["dinov2_vits14_reg"]), tmp_path / "random_reg_pretrain.pth")
    enc = load_encoder("dinov2_vits14_reg", checkpoint=str(path), device="cpu")
    sd = enc.backbones[0].module.state_dict()
    assert enc.input_size == 224 and sd["pos_embed"].shape == (1, 16 * 16, 384) and sd["reg_token"].shape == (1, 4, 384)


def test_vitb14_meta_layout_loads(tmp_path: Path) -> None:
    timm_sd = _random_state_dict(ARCH["dinov2_vitb14"], seed=3)
    path = _write(_meta_layout(timm_sd), tmp_path / "random_vitb14_pretrain.pth")
    enc = load_encoder("dinov2_vitb14", checkpoint=str(path), device="cpu", input_size=SIZE)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    assert enc.dim == 768
    assert (_features(enc, x) - _reference_features(ARCH["dinov2_vitb14"], timm_sd, x)).abs().max().item() < 1e-4


def test_wrong_files_fail_with_a_key_report(tmp_path: Path, small_weights) -> None:
    sd = small_weights["dinov2_vits14"]

    hf = _hf_layout(sd)
    del hf["encoder.layer.3.attention.attention.key.weight"]
    with pytest.raises(EncoderCheckpointError) as err:
        load_encoder(
            "dinov2_vits14",
            checkpoint=str(_write(hf, tmp_path / "random_hf_missing.safetensors")),
            device="cpu",
            input_size=SIZE,
        )
    msg = str(err.value)
    assert "Hugging Face" in msg and "missing: blocks.3.attn.qkv.weight" in msg
    assert "encoder.layer.3.attention.attention.query.weight" in msg  # the orphaned pieces are named

    meta = {**_meta_layout(sd), "blocks.0.attn.extra_thing": torch.zeros(3)}
    with pytest.raises(EncoderCheckpointError, match=r"Meta.*unexpected: blocks\.0\.attn\.extra_thing"):
        load_encoder(
            "dinov2_vits14",
            checkpoint=str(_write(meta, tmp_path / "random_meta_extra.pth")),
            device="cpu",
            input_size=SIZE,
        )

    shaped = {**sd, "blocks.0.norm1.weight": torch.ones(100)}
    with pytest.raises(
        EncoderCheckpointError, match=r"shape mismatch: blocks\.0\.norm1\.weight: file \(100,\) vs model \(384,\)"
    ):
        load_encoder(
            "dinov2_vits14",
            checkpoint=str(_write(shaped, tmp_path / "random_misshaped.safetensors")),
            device="cpu",
            input_size=SIZE,
        )

    # A plain (no-register) file for a register variant, and a ViT-S file for ViT-B: the report, not a traceback.
    with pytest.raises(EncoderCheckpointError, match=r"vit_small_patch14_reg4_dinov2.*missing: reg_token"):
        load_encoder(
            "dinov2_vits14_reg",
            checkpoint=str(_write(_meta_layout(sd), tmp_path / "random_plain.pth")),
            device="cpu",
            input_size=SIZE,
        )
    with pytest.raises(EncoderCheckpointError, match=r"vit_base_patch14_dinov2.*shape mismatch"):
        load_encoder("dinov2_vitb14", checkpoint=str(tmp_path / "random_plain.pth"), device="cpu", input_size=SIZE)
