"""Frozen timm backbones from a local checkpoint file (``.safetensors`` or a ``.pth/.pt/.bin`` state dict).

Used for ``load_encoder("timm:<arch>", checkpoint=PATH)`` and, through :mod:`skurec.encoders.timm_hub`, for
``load_encoder("dinov2_vits14", checkpoint=PATH)``. Files are read with ``safetensors`` or
``torch.load(weights_only=True)`` (never unpickling arbitrary objects). Keys must match the architecture exactly
(after stripping a ``module.``/``model.`` prefix and dropping classifier weights); otherwise an
:class:`EncoderCheckpointError` lists what is missing, unexpected or of the wrong shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .base import Backbone, EncoderCheckpointError, EncoderUnavailableError, sha256_file
from .registry import register_encoder

_PT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "teacher")
_PREFIXES = ("module.", "model.", "backbone.")
_MAX_LISTED = 8

StateDictFilter = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``), unwrapping common wrappers."""
    p = Path(path)
    if not p.is_file():
        raise EncoderUnavailableError(f"checkpoint file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(p), device="cpu")
        except Exception as exc:
            raise EncoderCheckpointError(f"cannot read safetensors file {str(p)!r}: {exc}") from exc
    elif p.suffix in _PT_SUFFIXES:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise EncoderCheckpointError(
                f"cannot read {str(p)!r} with torch.load(weights_only=True): {exc}. Save a plain state dict "
                "(torch.save(model.state_dict(), path)) or a .safetensors file."
            ) from exc
    else:
        raise EncoderCheckpointError(
            f"unsupported checkpoint suffix {p.suffix!r} for {str(p)!r}; use .safetensors or one of {_PT_SUFFIXES}"
        )
    return _unwrap(sd, str(p))


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise EncoderCheckpointError(f"{where!r} does not contain a state dict of tensors")
    sd = {str(k): v for k, v in obj.items()}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Module names of the classifier head(s) per timm's pretrained_cfg (dropped from checkpoints for embeddings)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier") or "head"
    names = clf if isinstance(clf, (tuple, list)) else (clf,)
    return tuple(f"{n}." for n in names)


def mismatch_report(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, check_shapes: bool = True) -> str | None:
    """``None`` when ``sd``'s keys (and shapes) are exactly the model's; else a readable report listing what is
    missing, unexpected or (with ``check_shapes``) of the wrong shape. Classifier-head keys the model lacks are
    ignored (embeddings do not use them)."""
    target = model.state_dict()
    heads = classifier_prefixes(model)
    sd = {k: v for k, v in sd.items() if k in target or not k.startswith(heads)}
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mis_shaped = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if check_shapes and k in sd and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if not (missing or unexpected or mis_shaped):
        return None
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
        if keys:
            more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_MAX_LISTED])}{more}")
    return "; ".join(parts)


def model_arch(model: torch.nn.Module) -> str:
    return str((getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__))


def mismatch_error(model: torch.nn.Module, where: str, report: str, note: str = "") -> EncoderCheckpointError:
    return EncoderCheckpointError(
        f"checkpoint {where!r} does not match architecture {model_arch(model)!r}{note}: {report}"
        ". Check that the file holds weights for exactly this architecture (same depth/width/patch size)."
    )


def load_matching_state_dict(
    model: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str, note: str = ""
) -> None:
    """Strictly load ``sd`` into ``model``; raise a readable error listing missing/unexpected/mis-shaped keys."""
    report = mismatch_report(model, sd)
    if report is not None:
        raise mismatch_error(model, where, report, note)
    target = model.state_dict()
    heads = classifier_prefixes(model)
    model.load_state_dict({k: v for k, v in sd.items() if k in target or not k.startswith(heads)}, strict=True)


def create_timm_model(arch: str, input_size: int | None = None, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=0)`` with a clear error for unknown names.

    ``input_size`` is passed as ``img_size`` to architectures that take it (ViTs); convnets accept any size.
    """
    import timm

    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise EncoderUnavailableError(f"unknown timm architecture {arch!r}; similar names: {close}")
    kwargs = {"pretrained": False, "num_classes": 0, **kwargs}
    if input_size is not None:
        try:
            return timm.create_model(arch, img_size=input_size, **kwargs)
        except TypeError:
            pass  # architecture without img_size (convnets): any input size works
    return timm.create_model(arch, **kwargs)


def backbone_from_timm_model(
    name: str,
    model: torch.nn.Module,
    *,
    weights_sha256: str,
    pretrained: bool,
    source: dict[str, Any],
    input_size: int | None = None,
    native_input_size: int | None = None,
) -> Backbone:
    """Wrap a timm model (already holding its weights, classifier removed) as a :class:`Backbone`."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    native = int(cfg.get("input_size", (3, 224, 224))[-1])
    fixed = _fixed_input_size(model)
    if fixed is not None:  # ViT-like: the model was built for exactly this size (timm's cfg keeps the default)
        native = input_size = fixed
    return Backbone(
        name=name,
        module=model,
        dim=int(model.num_features),
        mean=tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        input_size=int(input_size or native),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        weights_sha256=weights_sha256,
        pretrained=pretrained,
        source=source,
        native_input_size=int(native_input_size or native),
    )


def _fixed_input_size(model: torch.nn.Module) -> int | None:
    """Square input size a patch-embedding model was built for (None for convnets / dynamic-size models)."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None or getattr(pe, "dynamic_img_size", False) or getattr(pe, "strict_img_size", True) is False:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h != w:
        raise EncoderCheckpointError(f"non-square input size {size} is not supported")
    return int(h)


def load_timm_checkpoint(
    arch: str,
    checkpoint: str | os.PathLike[str],
    *,
    name: str | None = None,
    input_size: int | None = None,
    native_input_size: int | None = None,
    state_dict_filter: StateDictFilter | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Backbone:
    """Build timm ``arch`` (no classifier) and load a local checkpoint file into it, strictly.

    ``state_dict_filter`` adapts foreign key layouts (e.g. Meta's original DINOv2 files, position-embedding
    resampling to another input size) before the strict key check.
    """
    path = os.path.abspath(os.fspath(checkpoint))
    sd = read_state_dict(path)
    model = create_timm_model(arch, input_size=input_size, **dict(model_kwargs or {}))
    if state_dict_filter is not None:
        heads = classifier_prefixes(model)
        sd = state_dict_filter({k: v for k, v in sd.items() if not k.startswith(heads)}, model)
    load_matching_state_dict(model, sd, path)
    return backbone_from_timm_model(
        name or f"timm:{arch}",
        model,
        weights_sha256=sha256_file(path),
        pretrained=True,
        source={"kind": "file", "checkpoint": path, "arch": arch},
        input_size=input_size,
        native_input_size=native_input_size,
    )


TIMM_PREFIX = "timm:"


@register_encoder(
    TIMM_PREFIX,
    description="any timm architecture with checkpoint=PATH (.safetensors or .pth/.pt/.bin state dict)",
    requires_checkpoint=True,
    prefix=True,
)
def _load_timm_file(name: str, checkpoint: str | None, input_size: int | None) -> Backbone:
    assert checkpoint is not None  # EncoderSpec.load enforces requires_checkpoint
    return load_timm_checkpoint(name[len(TIMM_PREFIX) :], checkpoint, input_size=input_size)
