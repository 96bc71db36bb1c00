"""The :class:`FrozenEncoder`: a frozen image backbone (or several) turned into L2-normalised embeddings.

Every encoder family (hub, checkpoint file, packaged weights, tiny random test model, concatenations) builds one or
more :class:`Backbone` objects and wraps them in a :class:`FrozenEncoder`. The wrapper owns everything the rest of
skurec relies on: the preprocessing (resize shorter side, centre crop, normalise), batched inference under
``torch.inference_mode()``, optional horizontal-flip averaging, concatenation of several backbones and a stable
identity (``encoder_id``) that changes whenever the weights or any option change, so cached embeddings are never
mixed across encoders.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from skurec.images import crop_normalize

# Test-time view recipes: each view is a deterministic transform of the preprocessed crop; the embedding is the mean
# of the per-view (L2-normalised) embeddings, re-normalised. "zoom" = the central ZOOM_FRACTION of the crop resized
# back to input_size (a closer look at label text / colour accents); "tight" = that zoomed view alone (one forward).
VIEW_RECIPES: dict[str, tuple[str, ...]] = {
    "center": ("center",),
    "tight": ("zoom",),
    "flip": ("center", "flip"),
    "zoom": ("center", "zoom"),
    "flip+zoom": ("center", "flip", "zoom"),
}
VIEWS = tuple(VIEW_RECIPES)
ZOOM_FRACTION = 0.8
MAX_LAYERS = 4  # intermediate stages that ``layers`` may add
GEM_P = 3.0


class EncoderUnavailableError(RuntimeError):
    """The requested encoder cannot be loaded here (no network, missing package or file); the message says why
    and what to do instead."""


class EncoderCheckpointError(ValueError):
    """A checkpoint file does not fit the architecture (missing/unexpected keys, shape mismatch, bad format)."""


@dataclass
class Backbone:
    """One frozen network producing pooled features ``(B, dim)`` from normalised ``(B, 3, H, W)`` input.

    ``mean``/``std`` are the normalisation the network was trained with; :class:`FrozenEncoder` converts its own
    preprocessed input to them when several backbones with different normalisations are combined.
    """

    name: str
    module: torch.nn.Module
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    crop_pct: float
    interpolation: str
    weights_sha256: str
    pretrained: bool
    source: dict[str, Any] = field(default_factory=dict)
    native_input_size: int = 0  # the encoder's default crop size (0: same as input_size); decides the encoder_id

    @property
    def default_input_size(self) -> int:
        return int(self.native_input_size or self.input_size)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, streamed (weights files can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_state_dict(state_dict: Mapping[str, torch.Tensor], salt: str = "") -> str:
    """Deterministic SHA-256 over a state dict's names, dtypes, shapes and values (for generated weights)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    digest.update(salt.encode())
    return digest.hexdigest()


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resize_size_for(input_size: int, crop_pct: float) -> int:
    """Shorter-side resize before the centre crop (timm's convention: floor(input_size / crop_pct))."""
    return int(math.floor(input_size / crop_pct))


class FrozenEncoder:
    """A frozen image encoder: PIL image -> L2-normalised float32 embedding.

    Attributes follow the project-wide contract: ``name``, ``encoder_id``, ``weights_sha256``, ``pretrained``,
    ``dim``, ``device``, ``min_decode_side``. Several backbones are concatenated (each part L2-normalised, then the
    concatenation re-normalised) so every part contributes equally regardless of its feature scale.
    """

    def __init__(
        self,
        name: str,
        backbones: Sequence[Backbone],
        *,
        device: str | torch.device | None = None,
        views: str = "center",
        input_size: int | None = None,
        crop_pct: float | None = None,
        extra_options: Mapping[str, Any] | None = None,
        layers: int = 0,
        cpu_micro_batch: int = 4,
        cpu_threads: int | None = None,
    ) -> None:
        if not backbones:
            raise ValueError("FrozenEncoder needs at least one backbone")
        if views not in VIEWS:
            raise ValueError(f"views={views!r} is not supported; use one of {VIEWS}")
        if int(layers) != layers or not 0 <= int(layers) <= MAX_LAYERS:
            raise ValueError(f"layers must be an integer in [0, {MAX_LAYERS}], got {layers!r}")
        first = backbones[0]
        self.name = name
        self.layers = int(layers)
        self.view_names = VIEW_RECIPES[views]
        self.backbones = list(backbones)
        self.views = views
        self.input_size = int(input_size or max(b.default_input_size for b in backbones))
        self.crop_pct = float(crop_pct or first.crop_pct)
        if self.input_size < 8 or not 0.1 <= self.crop_pct <= 1.0:
            raise ValueError(f"invalid input_size={self.input_size} / crop_pct={self.crop_pct}")
        self.interpolation = first.interpolation
        self.mean = first.mean
        self.std = first.std
        self.resize_size = resize_size_for(self.input_size, self.crop_pct)
        self.min_decode_side = self.resize_size
        self.device = default_device(device)
        for b in self.backbones:
            b.module.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        # Per-backbone output width: the pooled embedding, plus (layers > 0) the channels of the last ``layers``
        # intermediate stages (found with one dummy forward, so any timm architecture with forward_intermediates works).
        self._part_dims = [self._probe_part_dims(b) for b in self.backbones]
        self.dim = int(sum(sum(d) for d in self._part_dims))
        self.pretrained = all(b.pretrained for b in backbones)
        self.extra_options = dict(extra_options or {})
        # On CPU, small chunks keep the activations in cache (measured: 4 images/chunk ~2x faster per image than 32
        # for EfficientNet-Lite2 at 260 px); channels_last lets oneDNN skip layout reorders (~1.5-2x for convnets).
        if cpu_micro_batch < 1:
            raise ValueError(f"cpu_micro_batch must be >= 1, got {cpu_micro_batch}")
        self.cpu_micro_batch = int(cpu_micro_batch)
        # CPU parallelism: None -> one forward thread per torch intra-op thread (see cpu_pool); 1 -> plain torch.
        self.cpu_threads = int(cpu_threads) if cpu_threads is not None else torch.get_num_threads()
        if self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {cpu_threads}")
        self._cpu_pool: Any = None
        self._cpu_pool_ready = False
        self._pool_lock = threading.Lock()
        if len(backbones) == 1:
            self.weights_sha256 = first.weights_sha256
        else:
            joined = "+".join(b.weights_sha256 for b in backbones)
            self.weights_sha256 = hashlib.sha256(joined.encode()).hexdigest()
        self.encoder_id = self._make_encoder_id()
        # Per-backbone affine conversion from this encoder's normalisation to the backbone's own one.
        self._renorm = [self._renorm_for(b) for b in self.backbones]

    # ------------------------------------------------------------------ identity
    def options(self) -> dict[str, Any]:
        """Every option that changes the embedding (part of the identity and the encoder_id)."""
        opts: dict[str, Any] = {"views": self.views, "input_size": self.input_size, "crop_pct": self.crop_pct}
        if self.layers:  # only when set, so identities (and cached tables) of plain encoders are unchanged
            opts["layers"] = self.layers
        opts.update(self.extra_options)
        return opts

    def _non_default_options(self) -> dict[str, Any]:
        first = self.backbones[0]
        defaults = {
            "views": "center",
            "input_size": max(b.default_input_size for b in self.backbones),
            "crop_pct": first.crop_pct,
            "layers": 0,
        }
        return {k: v for k, v in self.options().items() if defaults.get(k, object()) != v}

    def _make_encoder_id(self) -> str:
        extra = self._non_default_options()
        suffix = ""
        if extra:
            suffix = "[" + ",".join(f"{k}={extra[k]}" for k in sorted(extra)) + "]"
        return f"{self.name}{suffix}@{self.weights_sha256[:16]}"

    def identity(self) -> dict[str, Any]:
        """JSON-able description stored next to every embedding table (what produced these vectors)."""
        ident = {
            "name": self.name,
            "encoder_id": self.encoder_id,
            "weights_sha256": self.weights_sha256,
            "pretrained": self.pretrained,
            "dim": self.dim,
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "options": self.options(),
            "source": self.backbones[0].source if len(self.backbones) == 1 else {"kind": "combined"},
            "parts": [
                {
                    "name": b.name,
                    "dim": b.dim,
                    "weights_sha256": b.weights_sha256,
                    "pretrained": b.pretrained,
                    "mean": list(b.mean),
                    "std": list(b.std),
                    "source": b.source,
                }
                for b in self.backbones
            ],
        }
        if self.layers:  # per-backbone widths: [pooled, stage_-layers, ..., stage_-1]
            ident["part_dims"] = [list(d) for d in self._part_dims]
        json.dumps(ident)  # fail here, not in the cache writer, if something is not JSON-able
        return ident

    def __repr__(self) -> str:
        return f"FrozenEncoder({self.encoder_id!r}, dim={self.dim}, pretrained={self.pretrained}, device={self.device})"

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised ``(3, input_size, input_size)`` float32 tensor.

        Resize the shorter side to ``resize_size`` (timm's crop_pct convention), centre crop, scale to [0, 1] and
        normalise with ``mean``/``std``. Pure numpy/PIL (no torch intra-op threads) so it runs well in decode threads.
        """
        if not isinstance(img, Image.Image):
            raise TypeError(f"preprocess expects a PIL image, got {type(img).__name__}")
        if img.mode != "RGB":
            raise ValueError(
                f"preprocess expects an RGB image, got mode {img.mode!r}; decode with skurec.images.decode_rgb"
            )
        out = crop_normalize(img, self.resize_size, self.input_size, self.interpolation, self.mean, self.std)
        return torch.from_numpy(out)

    # ------------------------------------------------------------------ inference
    def _renorm_for(self, b: Backbone) -> tuple[torch.Tensor, torch.Tensor] | None:
        """x_b = x * scale + shift converts this encoder's normalisation to backbone ``b``'s; None if identical."""
        if tuple(b.mean) == tuple(self.mean) and tuple(b.std) == tuple(self.std):
            return None
        m_e, s_e = torch.tensor(self.mean), torch.tensor(self.std)
        m_b, s_b = torch.tensor(b.mean), torch.tensor(b.std)
        scale = (s_e / s_b).view(1, 3, 1, 1).to(self.device)
        shift = ((m_e - m_b) / s_b).view(1, 3, 1, 1).to(self.device)
        return scale, shift

    def _check_batch(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"forward_batch expects a torch.Tensor, got {type(x).__name__}")
        expected = (3, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"forward_batch expects shape (B, {expected[0]}, {expected[1]}, {expected[2]}) from "
                f"{self.name}.preprocess, got {tuple(x.shape)}"
            )

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` preprocessed batch -> ``(B, dim)`` float32 CPU tensor, L2-normalised."""
        self._check_batch(x)
        if x.shape[0] == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        if self.device.type != "cpu":
            return self._forward_chunk(x)
        chunks = list(torch.split(x, self.cpu_micro_batch))
        pool = self._get_cpu_pool()
        if pool is None:
            return torch.cat([self._forward_chunk(c) for c in chunks])
        # Even a single chunk goes to a pool thread: the calling thread's multi-threaded OpenMP path is the one that
        # collapses when the cores are busy (measured 570 CPU-ms/image for batch-1 calls under load).
        return torch.cat(list(pool.map(self._forward_chunk, chunks)))

    def _forward_chunk(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = x.to(self.device, dtype=torch.float32, non_blocking=True).contiguous(memory_format=torch.channels_last)
            parts = [self._forward_backbone(b, r, x) for b, r in zip(self.backbones, self._renorm)]
            out = parts[0] if len(parts) == 1 else _l2n(torch.cat(parts, dim=1))
            return out.float().cpu()

    def _get_cpu_pool(self) -> Any:
        """The per-encoder CPU forward pool (created on first use; None -> plain intra-op parallelism)."""
        if not self._cpu_pool_ready:
            with self._pool_lock:
                if not self._cpu_pool_ready:
                    from .cpu_pool import make_cpu_pool

                    self._cpu_pool = make_cpu_pool(self.cpu_threads)
                    self._cpu_pool_ready = True
        return self._cpu_pool

    def _probe_part_dims(self, b: Backbone) -> list[int]:
        if not self.layers:
            return [int(b.dim)]
        if not hasattr(b.module, "forward_intermediates"):
            raise ValueError(f"layers={self.layers} needs a timm model with forward_intermediates; {b.name} has none")
        x = torch.zeros((1, 3, self.input_size, self.input_size), device=self.device)
        with torch.inference_mode():
            pooled, inter = self._features(b, x)
        if pooled.shape[1] != b.dim:
            raise RuntimeError(f"backbone {b.name}: forward_head gave {pooled.shape[1]} dims, expected {b.dim}")
        return [int(b.dim)] + [int(t.shape[1]) for t in inter]

    def _features(self, b: Backbone, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pooled embedding ``(B, dim)`` and, with ``layers``, the GeM-pooled last ``layers`` stages ``(B, C_k)``."""
        if not self.layers:
            return b.module(x), []
        final, inter = b.module.forward_intermediates(x, indices=self.layers)
        pooled = b.module.forward_head(final, pre_logits=True)
        return pooled, [gem(t) for t in inter]

    def _view_batch(self, x: torch.Tensor) -> torch.Tensor:
        """The recipe's views of ``x`` stacked view-major: ``(V * B, 3, H, W)``."""
        out = []
        for v in self.view_names:
            if v == "center":
                out.append(x)
            elif v == "flip":
                out.append(x.flip(3))
            elif v == "zoom":
                out.append(zoom_center(x, ZOOM_FRACTION))
            else:  # pragma: no cover - VIEW_RECIPES only names the three above
                raise ValueError(f"unknown view {v!r}")
        return out[0] if len(out) == 1 else torch.cat(out, dim=0)

    def _forward_backbone(
        self, b: Backbone, renorm: tuple[torch.Tensor, torch.Tensor] | None, x: torch.Tensor
    ) -> torch.Tensor:
        if renorm is not None:
            x = x * renorm[0] + renorm[1]
        n = x.shape[0]
        # One forward over all views (better batching); every part L2-normalised, parts concatenated and
        # re-normalised per view; views averaged and re-normalised.
        pooled, inter = self._features(b, self._view_batch(x))
        parts = [_l2n(pooled)] + [_l2n(t) for t in inter]
        feats = parts[0] if len(parts) == 1 else _l2n(torch.cat(parts, dim=1))
        n_views = len(self.view_names)
        if n_views > 1:
            feats = _l2n(feats.reshape(n_views, n, -1).sum(dim=0))
        expected = sum(self._part_dims[self.backbones.index(b)])
        if feats.ndim != 2 or feats.shape != (n, expected):
            raise RuntimeError(f"backbone {b.name} returned shape {tuple(feats.shape)}, expected ({n}, {expected})")
        return feats

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Convenience: list of RGB PIL images -> ``(n, dim)`` float32 array (sequential; see skurec.embeddings.encode)."""
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + batch_size]])
            out.append(self.forward_batch(batch).numpy())
        return np.concatenate(out, axis=0)


def gem(x: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a ``(B, C, H, W)`` map over H, W: ``mean(clamp(x, eps) ** p) ** (1 / p)``."""
    return x.float().clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def zoom_center(x: torch.Tensor, fraction: float = ZOOM_FRACTION) -> torch.Tensor:
    """The central ``fraction`` of each ``(B, 3, H, W)`` crop, resized back to ``(H, W)`` (bilinear, antialiased)."""
    h, w = x.shape[2], x.shape[3]
    ch, cw = max(1, int(round(h * fraction))), max(1, int(round(w * fraction)))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[:, :, top : top + ch, left : left + cw]
    return torch.nn.functional.interpolate(
        crop.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )


def _l2n(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), p=2.0, dim=1, eps=1e-12)
