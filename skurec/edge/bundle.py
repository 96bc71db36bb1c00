"""The edge bundle on disk, and the checks that refuse a corrupted or mismatched one (standard library + numpy).

Layout of a bundle directory (every name in :data:`BUNDLE_FILES`)::

    manifest.json      format, model id, opsets, precision, the encoder identity, the parity report, and the
                       SHA-256 of every other file (written last: a directory without it is not a bundle)
    encoder.onnx       pixels (n, 3, S, S) float32 -> embedding (n, d): the encoder with its view recipe and layers
    classifier.onnx    embedding (n, d) -> log_scores (n, C), log_posterior (n, C), energy (n,), distance (n,)
    preprocess.json    resize / crop / normalisation (what skurec.images.crop_normalize needs) and the decode size
    labels.json        classes (C), their names, the superclass of each (hierarchical models), score units
    thresholds.json    the model card's calibration: temperature, unknown score and its threshold
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = "skurec-edge-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_ONNX = "encoder.onnx"
CLASSIFIER_ONNX = "classifier.onnx"
PREPROCESS = "preprocess.json"
LABELS = "labels.json"
THRESHOLDS = "thresholds.json"
BUNDLE_FILES = (ENCODER_ONNX, CLASSIFIER_ONNX, PREPROCESS, LABELS, THRESHOLDS)


class BundleError(RuntimeError):
    """The bundle cannot be used: missing or altered files, another format, or parts that do not fit together."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class EdgeBundle:
    """A verified bundle: its directory and parsed JSON parts (the ONNX files are opened by the runner)."""

    root: Path
    manifest: dict[str, Any]
    preprocess: dict[str, Any]
    labels: dict[str, Any]
    thresholds: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.manifest.get("model_id", ""))

    @property
    def classes(self) -> list[str]:
        return list(self.labels["classes"])

    def path(self, name: str) -> str:
        return str(self.root / name)


def _read_json(root: Path, name: str) -> dict[str, Any]:
    try:
        doc = json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{root}: {name} is unreadable ({exc})") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{root}: {name} is not a JSON object")
    return doc


def load_bundle(path: str | os.PathLike) -> EdgeBundle:
    """Open a bundle directory and verify it: the manifest's format, every file's SHA-256, and that the labels, the
    preprocessing and the thresholds agree with each other. Raises :class:`BundleError` naming what is wrong."""
    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise BundleError(f"{root} is not an edge bundle: no {MANIFEST} (export one with `skurec export --out DIR`)")
    manifest = _read_json(root, MANIFEST)
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{root}: {MANIFEST} is not a {FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{root}: bundle format version {manifest.get('format_version')} is not supported (this runner reads "
            f"version {FORMAT_VERSION}); export the bundle again with this version of skurec"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{root}: {MANIFEST} lists no files")
    missing = [n for n in BUNDLE_FILES if n not in files]
    if missing:
        raise BundleError(f"{root}: {MANIFEST} does not list {missing}")
    for name, want in sorted(files.items()):
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{root}: {MANIFEST} names a file outside the bundle: {name!r}")
        p = root / name
        if not p.is_file():
            raise BundleError(f"{root}: {name} is missing (the manifest lists it)")
        got = sha256_file(p)
        if got != want:
            raise BundleError(
                f"{root}: {name} is corrupted or was altered: SHA-256 {got[:16]}... but the manifest says "
                f"{str(want)[:16]}...; export the bundle again"
            )
    bundle = EdgeBundle(
        root, manifest, _read_json(root, PREPROCESS), _read_json(root, LABELS), _read_json(root, THRESHOLDS)
    )
    classes = bundle.labels.get("classes")
    if not isinstance(classes, list) or not classes:
        raise BundleError(f"{root}: {LABELS} has no class list")
    sc = bundle.labels.get("superclass_of_class")
    if sc is not None and len(sc) != len(classes):
        raise BundleError(f"{root}: {LABELS} has {len(classes)} classes but {len(sc)} superclass ids")
    if int(manifest.get("n_classes", len(classes))) != len(classes):
        raise BundleError(f"{root}: the manifest says {manifest.get('n_classes')} classes, {LABELS} has {len(classes)}")
    for key in ("resize_size", "input_size", "interpolation", "mean", "std", "min_decode_side"):
        if key not in bundle.preprocess:
            raise BundleError(f"{root}: {PREPROCESS} lacks {key!r}")
    if "threshold" not in bundle.thresholds:
        raise BundleError(f"{root}: {THRESHOLDS} has no threshold")
    return bundle


__all__ = [
    "BUNDLE_FILES",
    "BundleError",
    "CLASSIFIER_ONNX",
    "ENCODER_ONNX",
    "EdgeBundle",
    "FORMAT",
    "FORMAT_VERSION",
    "LABELS",
    "MANIFEST",
    "PREPROCESS",
    "THRESHOLDS",
    "load_bundle",
    "sha256_file",
]
