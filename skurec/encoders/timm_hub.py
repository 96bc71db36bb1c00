"""DINOv2 ViT-S/14 through timm: weights from the Hugging Face hub (production) or from a local file.

Hub loading must never hang an offline machine: we look in the local HF cache first, honour ``HF_HUB_OFFLINE``,
probe the endpoint with a short TCP timeout and turn any hub failure into :class:`EncoderUnavailableError` whose
message names the remedies (a local checkpoint, or a packaged offline encoder).
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

import torch

from .base import Backbone, EncoderUnavailableError, sha256_file
from .checkpoint import backbone_from_timm_model, create_timm_model, load_matching_state_dict, load_timm_checkpoint, read_state_dict

DINOV2_ARCH = "vit_small_patch14_dinov2"
DINOV2_HUB_REPO = "timm/vit_small_patch14_dinov2.lvd142m"
DINOV2_HUB_FILE = "model.safetensors"
DINOV2_INPUT_SIZE = 224  # 16x16 patches of 14 px; position embeddings are resampled from the 518 px (37x37) grid
DINOV2_CROP_PCT = 0.875
HUB_TIMEOUT_S = 3.0

_REMEDY = (
    "Remedy: pass checkpoint=PATH to a local DINOv2 ViT-S/14 file (.safetensors from the hub repo "
    f"{DINOV2_HUB_REPO!r}, or Meta's dinov2_vits14_pretrain.pth), or use a packaged offline encoder such as "
    "'efficientnet_lite2' or 'mobilenetv2_100'."
)


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _probe_endpoint(timeout: float) -> None:
    """Fail in ``timeout`` seconds if the hub endpoint is unreachable (DNS or TCP), instead of hanging."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    old = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)  # also bounds the DNS lookup inside create_connection
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise EncoderUnavailableError(
            f"cannot reach the Hugging Face hub at {host}:{port} ({type(exc).__name__}: {exc}). {_REMEDY}"
        ) from exc
    finally:
        socket.setdefaulttimeout(old)


def resolve_hub_file(repo_id: str, filename: str, timeout: float = HUB_TIMEOUT_S) -> str:
    """Local path of ``repo_id/filename``: from the HF cache, else downloaded; fast, clear failure when offline."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a timm dependency
        raise EncoderUnavailableError(f"huggingface_hub is not installed. {_REMEDY}") from exc
    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str) and os.path.isfile(cached):
        return cached
    if _hub_offline():
        raise EncoderUnavailableError(f"{repo_id}/{filename} is not in the local HF cache and HF_HUB_OFFLINE is set. {_REMEDY}")
    _probe_endpoint(timeout)
    try:
        return str(hf_hub_download(repo_id, filename, etag_timeout=timeout))
    except Exception as exc:
        raise EncoderUnavailableError(f"downloading {repo_id}/{filename} failed ({type(exc).__name__}: {exc}). {_REMEDY}") from exc


def _dinov2_filter(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's ViT converter: accepts Meta's original key layout, drops mask_token, resamples pos_embed."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    return checkpoint_filter_fn(sd, model)


def load_dinov2(checkpoint: str | None = None, input_size: int | None = None) -> Backbone:
    """DINOv2 ViT-S/14 backbone (CLS-token features, 384-d) from ``checkpoint`` or the hub."""
    size = int(input_size or DINOV2_INPUT_SIZE)
    if size % 14:
        raise ValueError(f"dinov2_vits14 needs input_size divisible by 14 (patch size), got {size}")
    if checkpoint is not None:
        backbone = load_timm_checkpoint(
            DINOV2_ARCH, checkpoint, name="dinov2_vits14", input_size=size, native_input_size=DINOV2_INPUT_SIZE,
            state_dict_filter=_dinov2_filter,
        )
    else:
        path = resolve_hub_file(DINOV2_HUB_REPO, DINOV2_HUB_FILE)
        model = create_timm_model(DINOV2_ARCH, input_size=size)
        load_matching_state_dict(model, _dinov2_filter(read_state_dict(path), model), path)
        source: dict[str, Any] = {"kind": "hub", "repo": DINOV2_HUB_REPO, "file": DINOV2_HUB_FILE, "arch": DINOV2_ARCH}
        backbone = backbone_from_timm_model("dinov2_vits14", model, weights_sha256=sha256_file(path), pretrained=True, source=source, input_size=size,
            native_input_size=DINOV2_INPUT_SIZE,
        )
    backbone.crop_pct = DINOV2_CROP_PCT  # timm's cfg says 1.0 at 518 px; the usual DINOv2 eval is resize 256 -> crop 224
    return backbone
