"""Coarse head: a dense softmax head (linear or one-hidden-layer MLP, :mod:`.dense`) from embedding to superclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ._common import (
    EmbeddingInputError,
    ProgressFn,
    check_embeddings,
    check_xy,
    jsonable,
    resolve_device,
    superclass_targets,
    topk_stable,
)
from .dense import DenseConfig, DenseNet, dense_predict_logits, fit_dense, load_dense
from .serialization import pack


class CoarseHead:
    """Trained superclass router: ``predict_proba(X) -> (n, S)`` superclass probabilities."""

    KIND = "coarse_head"

    def __init__(
        self,
        module: DenseNet,
        dim: int,
        n_superclasses: int,
        config: DenseConfig,
        metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ):
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.dim = int(dim)
        self.n_superclasses = int(n_superclasses)
        self.config = config
        self.metrics: dict[str, Any] = dict(metrics or {})

    def logits(self, X: np.ndarray) -> torch.Tensor:
        """Raw superclass logits (n, S) on CPU."""
        X = check_embeddings(X, dim=self.dim)
        return dense_predict_logits(self.module, X, self.device)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Superclass probabilities (n, S) float32."""
        return torch.softmax(self.logits(X), dim=1).numpy()

    def predict_topk(self, X: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Top-k superclass ids (n, k) and their probabilities (n, k)."""
        proba = torch.from_numpy(self.predict_proba(X))
        vals, idx = topk_stable(proba, min(k, self.n_superclasses))
        return idx.numpy(), vals.numpy()

    def to_files(self) -> dict[str, bytes]:
        config = {
            "dim": self.dim,
            "n_superclasses": self.n_superclasses,
            "hyper_params": asdict(self.config),
            "metrics": jsonable(self.metrics),
        }
        return pack(self.KIND, config, self.module.state_dict())

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> CoarseHead:
        config, tensors = load_dense(files, cls.KIND, "n_superclasses")
        hp = DenseConfig.from_dict(config["hyper_params"])
        module = DenseNet(config["dim"], config["n_superclasses"], hp.hidden, hp.dropout)
        module.load_state_dict(tensors)
        return cls(module, config["dim"], config["n_superclasses"], hp, config.get("metrics"), device)


def train_coarse(
    X: np.ndarray,
    y: np.ndarray,
    superclass_of_class: Mapping[str, int],
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: DenseConfig | None = None,
    n_superclasses: int | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> CoarseHead:
    """Train the coarse head on SKU-labelled embeddings; targets are ``superclass_of_class[y]``.

    ``metrics`` of the result hold ``val_top1`` / ``val_top3`` superclass accuracy on the validation set (when
    given), epochs run and training seconds.
    """
    X, y = check_xy(X, y)
    config = config or DenseConfig()
    S = int(n_superclasses if n_superclasses is not None else max(superclass_of_class.values()) + 1)
    targets = superclass_targets(y, superclass_of_class)
    if targets.max() >= S or targets.min() < 0:
        raise EmbeddingInputError(f"superclass ids must be in 0..{S - 1}")
    val_t = None
    if X_val is not None or y_val is not None:
        if X_val is None or y_val is None:
            raise EmbeddingInputError("give both X_val and y_val, or neither")
        X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
        val_t = superclass_targets(y_val, superclass_of_class, name="y_val")
    dev = resolve_device(device)
    module, summary = fit_dense(X, targets, S, X_val, val_t, config, dev, progress, stage="coarse")
    return CoarseHead(module, X.shape[1], S, config, summary, dev)


__all__ = ["CoarseHead", "train_coarse"]
