"""DINOv2 backbones (ViT-S/14, ViT-B/14, with or without registers) through timm.

Weights come from the Hugging Face hub (timm's repos) or from a local file in any of the three layouts users
download, detected from the keys and converted to timm's names before a strict load:

* **timm** (``model.safetensors`` of ``timm/vit_small_patch14_dinov2.lvd142m``): ``cls_token``, ``pos_embed``,
  ``patch_embed.proj.*``, ``blocks.N.attn.qkv.*``, ``blocks.N.ls1.gamma``, ``reg_token`` (register variants),
  ``norm.*``.
* **Meta** (``dinov2_vits14_pretrain.pth`` from the DINOv2 repository): timm's names plus ``mask_token``;
  register variants carry ``register_tokens`` and a ``pos_embed`` that includes the CLS position (timm folds that
  position into ``cls_token``). Training checkpoints' chunked ``blocks.C.N.`` names are accepted too.
* **Hugging Face transformers** (``facebook/dinov2-small``, optionally under a ``dinov2.`` prefix):
  ``embeddings.*``, ``encoder.layer.N.attention.attention.query/key/value.*`` (concatenated into ``qkv``),
  ``encoder.layer.N.layer_scale1.lambda1``, ``layernorm.*``, ...

Position embeddings are resampled from the file's 37x37 grid (518 px) to the input size (224 px by default) by
timm's own converter. A file that does not fit (missing, unexpected or mis-shaped keys) fails with
:class:`EncoderCheckpointError` naming the detected layout and the keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from .base import Backbone, EncoderCheckpointError, sha256_file
from .checkpoint import (
    backbone_from_timm_model,
    classifier_prefixes,
    create_timm_model,
    load_matching_state_dict,
    mismatch_error,
    mismatch_report,
    read_state_dict,
)
from .registry import register_encoder
from .timm_hub import resolve_hub_file

INPUT_SIZE = 224  # 16x16 patches of 14 px; position embeddings are resampled from the 518 px (37x37) grid
CROP_PCT = 0.875  # timm's cfg says 1.0 at 518 px; the usual DINOv2 eval is resize 256 -> crop 224
PATCH = 14
HUB_FILE = "model.safetensors"

LAYOUT_TIMM = "timm"
LAYOUT_META = "meta"
LAYOUT_HF = "huggingface"
LAYOUT_NAMES = {LAYOUT_TIMM: "timm", LAYOUT_META: "Meta's original DINOv2", LAYOUT_HF: "Hugging Face transformers"}


@dataclass(frozen=True)
class DinoV2Variant:
    name: str
    arch: str  # timm architecture
    dim: int
    registers: int

    @property
    def hub_repo(self) -> str:
        return f"timm/{self.arch}.lvd142m"

    @property
    def description(self) -> str:
        size = {384: "ViT-S/14", 768: "ViT-B/14"}[self.dim]
        reg = f" with {self.registers} registers" if self.registers else ""
        return (
            f"DINOv2 {size}{reg} (timm {self.arch}), {self.dim}-d, {INPUT_SIZE} px; hub weights or checkpoint=PATH "
            "in timm's, Meta's or Hugging Face's layout"
            + (" (production default online)" if self.name == "dinov2_vits14" else "")
        )


VARIANTS: dict[str, DinoV2Variant] = {
    v.name: v
    for v in (
        DinoV2Variant("dinov2_vits14", "vit_small_patch14_dinov2", 384, 0),
        DinoV2Variant("dinov2_vitb14", "vit_base_patch14_dinov2", 768, 0),
        DinoV2Variant("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2", 384, 4),
        DinoV2Variant("dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2", 768, 4),
    )
}

_CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.(.*)$")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")
_HF_BLOCK_RENAMES = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attention.output.dense.": "attn.proj.",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_HF_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """``"huggingface"``, ``"meta"`` or ``"timm"``, from the key names alone."""
    keys = list(sd)
    if any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.embeddings.", "dinov2.encoder.")) for k in keys):
        return LAYOUT_HF
    if "mask_token" in sd or "register_tokens" in sd or any(_CHUNKED.match(k) for k in keys):
        return LAYOUT_META
    return LAYOUT_TIMM


def hf_to_meta(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` names -> Meta's names (q, k, v -> qkv).

    Keys it does not know are passed through unchanged, so the strict check reports them as unexpected; a layer
    lacking one of query/key/value keeps the others under their own names and its ``qkv`` is reported missing.
    """
    if any(k.startswith("dinov2.") for k in sd):  # Dinov2ForImageClassification: backbone under "dinov2.", a head
        sd = {
            k[len("dinov2.") :] if k.startswith("dinov2.") else k: v
            for k, v in sd.items()
            if not k.startswith("classifier.")
        }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        n, rest = int(m.group(1)), m.group(2)
        qm = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if qm:
            qkv.setdefault((n, qm.group(2)), {})[qm.group(1)] = value
            continue
        for old, new in _HF_BLOCK_RENAMES.items():
            if rest.startswith(old):
                out[f"blocks.{n}.{new}{rest[len(old) :]}"] = value
                break
        else:
            out[key] = value
    for (n, kind), parts in sorted(qkv.items()):
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        else:  # incomplete: leave the pieces visible in the report
            for which, value in parts.items():
                out[f"encoder.layer.{n}.attention.attention.{which}.{kind}"] = value
    return out


def meta_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 names -> timm's (drops ``mask_token``; registers -> ``reg_token`` with the CLS position folded
    into ``cls_token``; chunked ``blocks.C.N.`` -> ``blocks.N.``; SwiGLU ``w12``/``w3`` -> ``fc1``/``fc2``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = _CHUNKED.match(key)
        if m:
            key = f"blocks.{m.group(1)}.{m.group(2)}"
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", key)
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", key)
        out[key] = value
    out.pop("mask_token", None)
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        if "pos_embed" in out and "cls_token" in out:
            pos = out.pop("pos_embed")
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]
    return out


def to_timm_layout(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported DINOv2 state dict -> (timm-named state dict at the file's own resolution, detected layout)."""
    layout = detect_layout(sd)
    if layout == LAYOUT_HF:
        return meta_to_timm(hf_to_meta(sd)), layout
    if layout == LAYOUT_META:
        return meta_to_timm(sd), layout
    return dict(sd), layout


def _resample(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's ViT converter: resamples ``pos_embed`` (and a patch embedding of another size) to the model."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(sd, model)


def load_state_dict_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], where: str) -> str:
    """Convert ``sd`` (any layout) to timm's names, resample the position embeddings and load strictly.

    Returns the detected layout. Key names are checked before resampling (so a file of another architecture gets a
    key report, not a resampling traceback), shapes after.
    """
    heads = classifier_prefixes(model)
    timm_sd, layout = to_timm_layout(sd)
    timm_sd = {k: v for k, v in timm_sd.items() if not k.startswith(heads)}
    note = f" (file layout detected: {LAYOUT_NAMES[layout]}; keys shown after conversion to timm's names)"
    report = mismatch_report(model, timm_sd, check_shapes=False)
    if report is not None:
        raise mismatch_error(model, where, report, note)
    try:
        resampled = _resample(timm_sd, model)
    except Exception as exc:  # e.g. a position table that is not a square grid
        report = mismatch_report(model, timm_sd) or f"{type(exc).__name__}: {exc}"
        raise mismatch_error(model, where, report, note) from exc
    load_matching_state_dict(model, resampled, where, note)
    return layout


def load_dinov2(name: str = "dinov2_vits14", checkpoint: str | None = None, input_size: int | None = None) -> Backbone:
    """DINOv2 backbone ``name`` (CLS-token features) from ``checkpoint`` (any layout) or the hub."""
    variant = VARIANTS[name]
    size = int(input_size or INPUT_SIZE)
    if size % PATCH:
        raise ValueError(f"{name} needs input_size divisible by {PATCH} (patch size), got {size}")
    model = create_timm_model(variant.arch, input_size=size)
    if checkpoint is not None:
        path = os.path.abspath(os.fspath(checkpoint))
        layout = load_state_dict_into(model, read_state_dict(path), path)
        source: dict[str, Any] = {"kind": "file", "checkpoint": path, "arch": variant.arch, "layout": layout}
    else:
        path = resolve_hub_file(variant.hub_repo, HUB_FILE)
        load_state_dict_into(model, read_state_dict(path), path)
        source = {"kind": "hub", "repo": variant.hub_repo, "file": HUB_FILE, "arch": variant.arch}
    backbone = backbone_from_timm_model(
        name,
        model,
        weights_sha256=sha256_file(path),
        pretrained=True,
        source=source,
        input_size=size,
        native_input_size=INPUT_SIZE,
    )
    if backbone.dim != variant.dim:  # pragma: no cover - guards the table above against a timm change
        raise EncoderCheckpointError(f"{variant.arch} gives {backbone.dim}-d features, expected {variant.dim}")
    backbone.crop_pct = CROP_PCT
    return backbone


def _register() -> None:
    for variant in VARIANTS.values():

        def load(name: str, checkpoint: str | None, input_size: int | None) -> Backbone:
            return load_dinov2(name, checkpoint=checkpoint, input_size=input_size)

        register_encoder(variant.name, description=variant.description, takes_checkpoint=True)(load)


_register()
