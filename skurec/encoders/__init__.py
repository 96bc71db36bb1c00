"""Frozen image encoders selected by NAME (the Dagster resource and the CLI pass a name + optional checkpoint).

Every name lives in one table, :data:`skurec.encoders.registry.ENCODERS`, filled by each family's file with
``@register_encoder`` (see :func:`available_encoders` for the list with descriptions):

* ``dinov2_vits14``, ``dinov2_vitb14``, ``dinov2_vits14_reg``, ``dinov2_vitb14_reg``: DINOv2 via timm; hub
  weights, or ``checkpoint=PATH`` to a local file in Meta's, timm's or Hugging Face's layout.
* ``efficientnet_lite2``, ``mobilenetv2_100``: real ImageNet weights shipped in a pip package (offline).
* ``tiny_random_vit``: tiny RANDOM ViT for tests (``pretrained: False``).
* ``timm:<arch>``: any timm architecture + ``checkpoint=PATH``.
* ``a+b``: concatenation of the above (each part L2-normalised, then re-normalised).

Options (keyword arguments of :func:`load_encoder`, all part of the identity and ``encoder_id``):
``views`` (test-time view recipe, :data:`~skurec.encoders.base.VIEW_RECIPES`: "center" | "tight" | "flip" |
"zoom" | "flip+zoom"; the per-view embeddings are averaged and re-normalised; "tight" is the central zoom alone), ``input_size`` (crop side, px; above the
native size for finer detail), ``crop_pct`` (crop / resized shorter side), ``layers`` (0: pooled embedding only;
N: also the GeM-pooled (p=3) last N intermediate stages, each part L2-normalised, concatenated, re-normalised).

Train-time augmented views (:func:`skurec.encoders.views.train_views`) and PCA whitening
(:class:`skurec.encoders.whitening.PCAWhitening`) are separate: they depend on the training rows, not the encoder.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .base import (
    MAX_LAYERS,
    VIEWS,
    Backbone,
    EncoderCheckpointError,
    EncoderUnavailableError,
    FrozenEncoder,
    default_device,
)
from .combined import load_combined_backbones, split_combined_name
from .registry import (
    ENCODERS,
    SEPARATOR,
    EncoderSpec,
    descriptions,
    encoder_spec,
    load_families,
    register_encoder,
    takes_checkpoint,
)

load_families()  # every family registers its names on import: ENCODERS is complete from here on

__all__ = [
    "ENCODERS",
    "EncoderCheckpointError",
    "EncoderSpec",
    "EncoderUnavailableError",
    "FrozenEncoder",
    "OPTIONS",
    "available_encoders",
    "clear_encoder_cache",
    "encoder_spec",
    "load_encoder",
    "recorded_checkpoint",
    "register_encoder",
    "takes_checkpoint",
]

OPTIONS = {
    "views": f"one of {VIEWS}; the embeddings of the recipe's views (centre crop, mirror, central zoom) are averaged",
    "input_size": "crop side in pixels (default: the encoder's native size)",
    "crop_pct": "centre-crop fraction of the resized shorter side (default: the encoder's)",
    "layers": f"0..{MAX_LAYERS}: also concatenate the GeM-pooled last N intermediate stages (default 0)",
}

_COMBINED_EXAMPLE = (
    "efficientnet_lite2+mobilenetv2_100",
    "concatenation of the two packaged encoders, 2560-d (any 'a+b' works)",
)

_CACHE: dict[tuple[Any, ...], FrozenEncoder] = {}
_CACHE_LOCK = threading.Lock()


def available_encoders() -> dict[str, str]:
    """Encoder names (and name patterns) -> one-line description."""
    return {**descriptions(), _COMBINED_EXAMPLE[0]: _COMBINED_EXAMPLE[1]}


def recorded_checkpoint(identity: dict[str, Any]) -> str | None:
    """The local weights file an encoder identity (``FrozenEncoder.identity()``, as stored in model cards) was
    loaded from, or None (hub, packaged or random weights). For a combined encoder: its one file-based part's file.
    Serving passes it back as ``checkpoint=`` when the caller gives none; the encoder id check then proves the file
    still holds the same weights."""
    parts = identity.get("parts") or [identity]
    files = sorted({str(p["source"]["checkpoint"]) for p in parts if (p.get("source") or {}).get("checkpoint")})
    return files[0] if len(files) == 1 else None


def clear_encoder_cache() -> None:
    """Forget the per-process cache of loaded encoders (frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _load_backbone(name: str, checkpoint: str | None, input_size: int | None) -> Backbone:
    """One backbone by its (non-combined) name, through the registry."""
    return encoder_spec(name).load(name, checkpoint, input_size)


def _validate_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown encoder option(s) {unknown}; supported: {OPTIONS}")
    views = options.get("views", "center")
    if views not in VIEWS:
        raise ValueError(f"views={views!r} is not supported; use one of {VIEWS}")
    input_size = options.get("input_size")
    if input_size is not None and (int(input_size) != input_size or not 16 <= int(input_size) <= 1024):
        raise ValueError(f"input_size must be an integer between 16 and 1024, got {input_size!r}")
    crop_pct = options.get("crop_pct")
    if crop_pct is not None and not 0.1 <= float(crop_pct) <= 1.0:
        raise ValueError(f"crop_pct must be in [0.1, 1.0], got {crop_pct!r}")
    layers = options.get("layers", 0)
    if layers is None:
        layers = 0
    if isinstance(layers, bool) or int(layers) != layers or not 0 <= int(layers) <= MAX_LAYERS:
        raise ValueError(f"layers must be an integer in [0, {MAX_LAYERS}], got {layers!r}")
    return {
        "layers": int(layers),
        "views": views,
        "input_size": None if input_size is None else int(input_size),
        "crop_pct": None if crop_pct is None else float(crop_pct),
    }


def load_encoder(
    name: str,
    checkpoint: str | None = None,
    device: str | None = None,
    *,
    cpu_threads: int | None = None,
    **options: Any,
) -> FrozenEncoder:
    """Load (or reuse from the per-process cache) the frozen encoder ``name``.

    ``checkpoint``: local weights file for the encoders that take one (:func:`takes_checkpoint`). ``device``: defaults to CUDA when
    available. ``cpu_threads``: CPU forward threads (default: torch's intra-op thread count; 1 = plain torch; not
    part of the identity, see :mod:`skurec.encoders.cpu_pool`). ``options``: see :data:`OPTIONS`. Raises :class:`EncoderUnavailableError` (with a remedy) when the
    weights cannot be obtained and :class:`EncoderCheckpointError` when a file does not fit the architecture.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"encoder name must be a non-empty string, got {name!r}")
    name = name.strip()
    opts = _validate_options(dict(options))
    dev = default_device(device)
    ckpt = None if checkpoint is None else os.path.abspath(os.fspath(checkpoint))
    ckpt_stamp = None
    if ckpt is not None and os.path.isfile(ckpt):
        st = os.stat(ckpt)
        ckpt_stamp = (st.st_size, st.st_mtime_ns)  # a rewritten file is reloaded
    key = (name, ckpt, ckpt_stamp, str(dev), cpu_threads, tuple(sorted(opts.items())))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    if SEPARATOR in name:
        parts = split_combined_name(name)
        backbones = load_combined_backbones(parts, ckpt, lambda p, c: _load_backbone(p, c, opts["input_size"]))
    else:
        backbones = [_load_backbone(name, ckpt, opts["input_size"])]
    encoder = FrozenEncoder(
        name,
        backbones,
        device=dev,
        views=opts["views"],
        input_size=opts["input_size"],
        crop_pct=opts["crop_pct"],
        layers=opts["layers"],
        cpu_threads=cpu_threads,
    )
    with _CACHE_LOCK:
        _CACHE.setdefault(key, encoder)
        return _CACHE[key]
