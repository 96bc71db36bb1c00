"""PCA whitening of embeddings, fitted on TRAINING rows only and stored as tensors (safetensors + JSON).

``PCAWhitening.fit(X_train, dim=...)`` keeps the mean, the top ``dim`` principal directions and their scales;
``transform`` centres, projects, divides by ``sqrt(eigenvalue + eps)`` and L2-normalises (so heads that expect
L2-normalised inputs still get them). ``fingerprint`` (SHA-256 of the tensors) goes into lineage next to the
encoder id. ``to_files(stem)`` writes ``stem.safetensors`` + ``stem.json``; ``from_files(stem)`` reads them back
(no pickle anywhere).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

__all__ = ["PCAWhitening"]


class PCAWhitening:
    def __init__(self, mean: np.ndarray, components: np.ndarray, scale: np.ndarray, eps: float = 1e-6) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)  # (dim_out, dim_in), rows orthonormal
        self.scale = np.asarray(scale, dtype=np.float32)  # (dim_out,) = 1 / sqrt(eigenvalue + eps)
        self.eps = float(eps)
        if (
            self.components.ndim != 2
            or self.mean.shape != (self.components.shape[1],)
            or self.scale.shape != (self.components.shape[0],)
        ):
            raise ValueError("inconsistent PCA whitening shapes")

    @property
    def dim_in(self) -> int:
        return int(self.components.shape[1])

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, X_train: np.ndarray, dim: int | None = None, eps: float = 1e-6) -> PCAWhitening:
        """Fit on training rows ``(n, d)``; ``dim`` defaults to ``min(n - 1, d)``."""
        X = np.asarray(X_train, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] < 2:
            raise ValueError(f"PCA whitening needs a (n >= 2, d) array, got shape {X.shape}")
        n, d = X.shape
        k = int(dim or min(n - 1, d))
        if not 1 <= k <= min(n - 1, d):
            raise ValueError(f"dim must be in [1, {min(n - 1, d)}], got {dim}")
        mean = X.mean(axis=0)
        _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
        var = (s[:k] ** 2) / (n - 1)
        # deterministic sign: largest-magnitude coordinate of every direction positive
        comps = vt[:k]
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        return cls(mean, comps, 1.0 / np.sqrt(var + eps), eps=eps)

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.dim_in:
            raise ValueError(f"expected (n, {self.dim_in}) embeddings, got {X.shape}")
        Z = ((X - self.mean) @ self.components.T) * self.scale
        return (Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "scale": self.scale}

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for key, arr in sorted(self.tensors().items()):
            h.update(f"{key}|{arr.dtype}|{arr.shape}|".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(f"eps={self.eps}".encode())
        return h.hexdigest()

    def to_files(self, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
        from safetensors.numpy import save_file

        stem = Path(stem)
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors_path, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        save_file({k: np.ascontiguousarray(v) for k, v in self.tensors().items()}, str(tensors_path))
        meta = {
            "kind": "pca_whitening",
            "eps": self.eps,
            "dim_in": self.dim_in,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
        }
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return tensors_path, meta_path

    @classmethod
    def from_files(cls, stem: str | os.PathLike[str]) -> PCAWhitening:
        from safetensors.numpy import load_file

        stem = Path(stem)
        meta = json.loads(stem.with_suffix(".json").read_text())
        if meta.get("kind") != "pca_whitening":
            raise ValueError(f"{stem}.json is not a PCA whitening description")
        t = load_file(str(stem.with_suffix(".safetensors")))
        out = cls(t["mean"], t["components"], t["scale"], eps=float(meta["eps"]))
        if out.fingerprint != meta.get("fingerprint"):
            raise ValueError(f"{stem}: tensors do not match the recorded fingerprint")
        return out
