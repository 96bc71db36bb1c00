"""Storage-agnostic (de)serialisation of every classifier: ``dict[str, bytes]`` of safetensors + JSON, no pickle.

A model serialises to two files (composite models nest their parts under ``"<part>/"`` prefixes):

* ``config.json``: ``kind``, ``format_version``, class names, dimensions, hyper-parameters, the superclass
  assignment..., plus ``tensors`` (name -> shape and dtype) and ``tensors_sha256`` of the tensor file;
* ``tensors.safetensors``: the weights, written with :func:`safetensors.torch.save`.

Loading checks, in order: both files present, JSON parses, ``kind`` and ``format_version`` match, the SHA-256 of the
tensor bytes equals the recorded one (detects bit rot / truncated uploads), the safetensors header parses, the tensor
names, dtypes and shapes equal those in the config *and* those implied by its semantic fields (e.g. ``len(classes)``),
and every value is finite. Any failure raises :class:`ModelFormatError` naming the file and the problem.
The storage layer (local disk or S3) only moves these bytes and records their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
TENSORS_FILE = "tensors.safetensors"


class ModelFormatError(ValueError):
    """Serialized model files are missing, corrupted, or inconsistent with their config."""


def _as_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
    return t.detach().to("cpu").contiguous()


def pack(
    kind: str, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray | torch.Tensor], prefix: str = ""
) -> dict[str, bytes]:
    """Serialise one model part: ``{prefix+"config.json": ..., prefix+"tensors.safetensors": ...}``."""
    tensors_t = {name: _as_tensor(v) for name, v in tensors.items()}
    blob = st_save(tensors_t, metadata={"kind": kind, "format_version": str(FORMAT_VERSION)})
    full = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        **dict(config),
        "tensors": {
            n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            for n, t in sorted(tensors_t.items())
        },
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    text = json.dumps(full, indent=1, sort_keys=True, allow_nan=False)
    return {prefix + CONFIG_FILE: text.encode("utf-8"), prefix + TENSORS_FILE: blob}


def read_config(files: Mapping[str, bytes], prefix: str = "", kind: str | None = None) -> dict[str, Any]:
    """Parse ``prefix + config.json`` (clear error when absent, not JSON, or - given ``kind`` - another kind)."""
    name = prefix + CONFIG_FILE
    if name not in files:
        raise ModelFormatError(f"missing {name!r} in the model files (present: {sorted(files)[:10]})")
    try:
        config = json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{name} is not valid UTF-8 JSON ({exc}); the file is corrupted") from exc
    if not isinstance(config, dict) or "kind" not in config:
        raise ModelFormatError(f"{name} has no 'kind' field; this is not a skurec model config")
    if kind is not None and config["kind"] != kind:
        raise ModelFormatError(f"{name} describes a {config['kind']!r} model, expected {kind!r}")
    return config


def unpack(
    files: Mapping[str, bytes],
    kind: str,
    prefix: str = "",
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
    required_keys: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate one model part written by :func:`pack`; return ``(config, tensors)``.

    ``expected_shapes`` are the shapes implied by the config's semantic fields (the caller derives them, e.g.
    ``{"prototypes": (len(classes), dim)}``); a tensor that disagrees, is missing or is not expected raises
    :class:`ModelFormatError`.
    """
    cname, tname = prefix + CONFIG_FILE, prefix + TENSORS_FILE
    config = read_config(files, prefix)
    if config["kind"] != kind:
        raise ModelFormatError(f"{cname} describes a {config['kind']!r} model, expected {kind!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{cname} has format_version {config.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    missing = [k for k in required_keys if k not in config]
    if missing:
        raise ModelFormatError(f"{cname} lacks required fields {missing}")
    if tname not in files:
        raise ModelFormatError(f"missing {tname!r} in the model files (present: {sorted(files)[:10]})")
    blob = files[tname]
    digest = hashlib.sha256(blob).hexdigest()
    if digest != config.get("tensors_sha256"):
        raise ModelFormatError(
            f"{tname} is corrupted or belongs to another model: its SHA-256 {digest[:12]}... differs from "
            f"{str(config.get('tensors_sha256'))[:12]}... recorded in {cname}"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"{tname} is not a readable safetensors file: {exc}") from exc
    declared = config.get("tensors", {})
    if set(declared) != set(tensors):
        raise ModelFormatError(f"{tname} holds tensors {sorted(tensors)} but {cname} declares {sorted(declared)}")
    for name, t in tensors.items():
        want = declared[name]
        if list(t.shape) != list(want["shape"]) or str(t.dtype).replace("torch.", "") != want["dtype"]:
            raise ModelFormatError(
                f"tensor {name!r} in {tname} has shape {tuple(t.shape)} / {t.dtype}, "
                f"{cname} declares {tuple(want['shape'])} / {want['dtype']}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFormatError(f"tensor {name!r} in {tname} contains NaN or inf values")
    if expected_shapes is not None and set(tensors) != set(expected_shapes):
        raise ModelFormatError(f"{kind} tensors {sorted(tensors)} differ from the expected {sorted(expected_shapes)}")
    for name, shape in (expected_shapes or {}).items():
        if name not in tensors:
            raise ModelFormatError(f"{tname} lacks tensor {name!r}")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ModelFormatError(
                f"tensor {name!r} in {tname} has shape {tuple(tensors[name].shape)} but the config implies "
                f"{tuple(shape)} (class list / dimensions in {cname} disagree with the weights)"
            )
    return config, tensors


def nest(prefix: str, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """Prefix every file name (used by composite models to store their parts)."""
    return {prefix + name: data for name, data in files.items()}


def sub(files: Mapping[str, bytes], prefix: str) -> dict[str, bytes]:
    """The files under ``prefix``, with the prefix removed."""
    return {name[len(prefix) :]: data for name, data in files.items() if name.startswith(prefix)}


def require(config: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """Fetch a config field with a type check and a clear error."""
    if key not in config:
        raise ModelFormatError(f"{where} lacks field {key!r}")
    value = config[key]
    if not isinstance(value, typ):
        raise ModelFormatError(f"{where} field {key!r} has type {type(value).__name__}, expected {typ}")
    return value
