"""Reference flat baselines on the same embeddings: nearest class prototype and cosine k-NN.

They answer "does the hierarchy help?" next to THE flat model, the strong softmax (:mod:`.softmax`): each scores
every SKU of the catalogue at once, with the same ``predict_topk(X, k) -> Predictions`` interface as
:class:`~skurec.models.hierarchical.HierarchicalClassifier`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ._common import (
    INFER_ROWS,
    EmbeddingInputError,
    Predictions,
    batched_rows,
    check_embeddings,
    check_xy,
    encode_labels,
    labels_from_indices,
    resolve_device,
    topk_stable,
)
from .prototypes import class_prototypes
from .serialization import ModelFormatError, pack, read_config, require, unpack


def _topk_predictions(scores: torch.Tensor, k: int, classes: list[str]) -> Predictions:
    kk = min(k, len(classes))
    vals, idx = topk_stable(scores, kk)
    labels = labels_from_indices(idx.numpy(), np.ones(idx.shape, dtype=bool), classes)
    vals_np = vals.numpy().astype(np.float32)
    if kk < k:  # pad so every model returns (n, k)
        pad = k - kk
        labels = np.concatenate([labels, np.full((labels.shape[0], pad), "", dtype=labels.dtype)], axis=1)
        vals_np = np.concatenate([vals_np, np.zeros((vals_np.shape[0], pad), np.float32)], axis=1)
    return Predictions(labels=labels, scores=vals_np, superclass=np.full(labels.shape[0], -1, dtype=np.int64))


class FlatPrototype:
    """Nearest class mean by cosine (no training); scores are cosine similarities."""

    KIND = "flat_prototype"

    def __init__(
        self,
        classes: list[str],
        vectors: np.ndarray,
        counts: np.ndarray | None = None,
        device: str | torch.device | None = None,
    ):
        self.classes = list(classes)
        self.vectors = check_embeddings(vectors, name="prototype vectors")
        if self.vectors.shape[0] != len(self.classes):
            raise EmbeddingInputError(f"{len(self.classes)} classes but {self.vectors.shape[0]} prototype vectors")
        self.counts = np.asarray(counts if counts is not None else np.zeros(len(classes)), dtype=np.int64)
        self.dim = int(self.vectors.shape[1])
        self.device = resolve_device(device)

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, device: str | torch.device | None = None) -> FlatPrototype:
        """Prototypes = re-normalised class means of the training embeddings."""
        p = class_prototypes(X, y)
        return cls(p.classes, p.vectors, p.counts, device)

    def similarities(self, X: np.ndarray) -> torch.Tensor:
        """Cosine similarity (n, C) to every prototype (CPU tensor)."""
        X = check_embeddings(X, dim=self.dim)
        P = torch.from_numpy(self.vectors).to(self.device)
        out = [(torch.from_numpy(X[sl]).to(self.device) @ P.T).cpu() for sl in batched_rows(len(X), INFER_ROWS)]
        return torch.cat(out, 0)

    def predict_topk(self, X: np.ndarray, k: int = 3) -> Predictions:
        """Top-k SKUs by cosine to their prototype."""
        return _topk_predictions(self.similarities(X), k, self.classes)

    def to_files(self) -> dict[str, bytes]:
        return pack(
            self.KIND, {"dim": self.dim, "classes": self.classes}, {"prototypes": self.vectors, "counts": self.counts}
        )

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FlatPrototype:
        raw = read_config(files, kind=cls.KIND)
        classes = require(raw, "classes", list, "flat_prototype config.json")
        dim = require(raw, "dim", int, "flat_prototype config.json")
        _, t = unpack(files, cls.KIND, expected_shapes={"prototypes": (len(classes), dim), "counts": (len(classes),)})
        return cls([str(c) for c in classes], t["prototypes"].numpy(), t["counts"].numpy(), device)


class FlatKNN:
    """Cosine k-nearest-neighbour vote over the stored training embeddings (memory grows with the train set).

    Class score = sum over the ``n_neighbors`` nearest training embeddings of that class of ``exp(cos / tau)``,
    normalised to sum to 1 over classes.
    """

    KIND = "flat_knn"

    def __init__(
        self,
        X: np.ndarray,
        y: np.ndarray,
        n_neighbors: int = 10,
        tau: float = 0.05,
        device: str | torch.device | None = None,
    ):
        self.X, y = check_xy(X, y)
        self.classes = sorted(np.unique(y).tolist())
        self.codes = encode_labels(y, self.classes)
        self.n_neighbors = int(n_neighbors)
        self.tau = float(tau)
        self.dim = int(self.X.shape[1])
        self.device = resolve_device(device)

    def predict_topk(self, X: np.ndarray, k: int = 3) -> Predictions:
        X = check_embeddings(X, dim=self.dim)
        train = torch.from_numpy(self.X).to(self.device)
        codes = torch.from_numpy(self.codes).to(self.device)
        nn_k = min(self.n_neighbors, train.shape[0])
        scores = []
        for sl in batched_rows(len(X), 1024):
            sims = torch.from_numpy(X[sl]).to(self.device) @ train.T
            vals, idx = torch.topk(sims, nn_k, dim=1)
            w = torch.exp((vals - vals[:, :1]) / self.tau)
            s = torch.zeros(vals.shape[0], len(self.classes), device=self.device).scatter_add_(1, codes[idx], w)
            scores.append((s / s.sum(dim=1, keepdim=True)).cpu())
        return _topk_predictions(torch.cat(scores, 0), k, self.classes)

    def to_files(self) -> dict[str, bytes]:
        return pack(
            self.KIND,
            {"dim": self.dim, "classes": self.classes, "n_neighbors": self.n_neighbors, "tau": self.tau},
            {"X": self.X, "codes": self.codes},
        )

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FlatKNN:
        raw = read_config(files, kind=cls.KIND)
        classes = require(raw, "classes", list, "flat_knn config.json")
        config, t = unpack(files, cls.KIND)
        X, codes = t["X"].numpy(), t["codes"].numpy()
        if X.shape[1] != config["dim"] or codes.shape != (X.shape[0],) or codes.max() >= len(classes):
            raise ModelFormatError("flat_knn files: stored embeddings/codes disagree with the config")
        return cls(X, np.asarray(classes)[codes], config["n_neighbors"], config["tau"], device)


__all__ = ["FlatKNN", "FlatPrototype"]
