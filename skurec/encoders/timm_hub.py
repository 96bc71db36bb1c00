"""Weights from the Hugging Face hub, without ever hanging an offline machine.

We look in the local HF cache first, honour ``HF_HUB_OFFLINE``, probe the endpoint with a short TCP timeout and turn
any hub failure into :class:`EncoderUnavailableError` whose message names the remedies (a local checkpoint, or a
packaged offline encoder). The DINOv2 family (:mod:`skurec.encoders.dinov2`) loads its hub weights through here.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .base import EncoderUnavailableError

HUB_TIMEOUT_S = 3.0

_REMEDY = (
    "Remedy: pass checkpoint=PATH to a local weights file (for DINOv2: model.safetensors from the timm hub repo, "
    "Meta's dinov2_vits14_pretrain.pth, or the Hugging Face facebook/dinov2-small files), or use a packaged offline "
    "encoder such as 'efficientnet_lite2' or 'mobilenetv2_100'."
)


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


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
        raise EncoderUnavailableError(
            f"{repo_id}/{filename} is not in the local HF cache and HF_HUB_OFFLINE is set. {_REMEDY}"
        )
    _probe_endpoint(timeout)
    try:
        return str(hf_hub_download(repo_id, filename, etag_timeout=timeout))
    except Exception as exc:
        raise EncoderUnavailableError(
            f"downloading {repo_id}/{filename} failed ({type(exc).__name__}: {exc}). {_REMEDY}"
        ) from exc
