"""Flat baselines on the same embeddings: linear softmax, nearest class prototype, and cosine k-NN.

They answer "does the hierarchy help?": each scores every SKU of the catalogue at once, with the same
``predict_topk(X, k) -> Predictions`` interface as :class:`~skurec.models.hierarchical.HierarchicalClassifier`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ._common import (
    EmbeddingInputError,
    Predictions,
    ProgressFn,
    batched_rows,
    check_embeddings,
    check_xy,
    encode_labels,
    labels_from_indices,
    resolve_device,
    topk_stable,
)
from .coarse import DenseConfig, DenseNet, _jsonable, _load_dense, dense_predict_logits, fit_dense
from .prototypes import class_prototypes
from .serialization import ModelFormatError, pack, read_config, require, unpack

INFER_BATCH = 4096


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


class FlatLinear:
    """Multinomial logistic regression over all SKUs (torch, mini-batch AdamW, label smoothing)."""

    KIND = "flat_linear"

    def __init__(self, module: DenseNet, classes: list[str], config: DenseConfig,
                 metrics: Mapping[str, Any] | None = None, device: str | torch.device | None = None):
        self.device = resolve_device(device)
        self.module = module.to(self.device).eval()
        self.classes = list(classes)
        self.dim = int(module.net[0].weight.shape[1])
        self.config = config
        self.metrics: dict[str, Any] = dict(metrics or {})

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, C) in ``classes`` order."""
        X = check_embeddings(X, dim=self.dim)
        return torch.softmax(dense_predict_logits(self.module, X, self.device), dim=1).numpy()

    def predict_topk(self, X: np.ndarray, k: int = 3) -> Predictions:
        """Top-k SKUs by softmax probability."""
        return _topk_predictions(torch.from_numpy(self.predict_proba(X)), k, self.classes)

    def to_files(self) -> dict[str, bytes]:
        config = {"dim": self.dim, "classes": self.classes, "hyper_params": asdict(self.config),
                  "metrics": _jsonable(self.metrics)}
        return pack(self.KIND, config, self.module.state_dict())

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FlatLinear:
        config, tensors = _load_dense(files, cls.KIND, "classes")
        hp = DenseConfig.from_dict(config["hyper_params"])
        module = DenseNet(config["dim"], len(config["classes"]), hp.hidden, hp.dropout)
        module.load_state_dict(tensors)
        return cls(module, [str(c) for c in config["classes"]], hp, config.get("metrics"), device)


def train_flat_linear(X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None,
                      y_val: np.ndarray | None = None, config: DenseConfig | None = None,
                      device: str | torch.device | None = None, progress: ProgressFn | None = None) -> FlatLinear:
    """Train the flat softmax baseline with the same trainer as the coarse head (:func:`fit_dense`)."""
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    codes = encode_labels(y, classes)
    codes_val = None
    if X_val is not None or y_val is not None:
        if X_val is None or y_val is None:
            raise EmbeddingInputError("give both X_val and y_val, or neither")
        X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
        codes_val = encode_labels(y_val, classes, name="y_val")
    config = config or DenseConfig()
    dev = resolve_device(device)
    module, summary = fit_dense(X, codes, len(classes), X_val, codes_val, config, dev, progress, stage="flat_linear")
    return FlatLinear(module, classes, config, summary, dev)


class FlatPrototype:
    """Nearest class mean by cosine (no training); scores are cosine similarities."""

    KIND = "flat_prototype"

    def __init__(self, classes: list[str], vectors: np.ndarray, counts: np.ndarray | None = None,
                 device: str | torch.device | None = None):
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
        out = [(torch.from_numpy(X[sl]).to(self.device) @ P.T).cpu() for sl in batched_rows(len(X), INFER_BATCH)]
        return torch.cat(out, 0)

    def predict_topk(self, X: np.ndarray, k: int = 3) -> Predictions:
        """Top-k SKUs by cosine to their prototype."""
        return _topk_predictions(self.similarities(X), k, self.classes)

    def to_files(self) -> dict[str, bytes]:
        return pack(self.KIND, {"dim": self.dim, "classes": self.classes},
                    {"prototypes": self.vectors, "counts": self.counts})

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

    def __init__(self, X: np.ndarray, y: np.ndarray, n_neighbors: int = 10, tau: float = 0.05,
                 device: str | torch.device | None = None):
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
        return pack(self.KIND, {"dim": self.dim, "classes": self.classes, "n_neighbors": self.n_neighbors,
                                "tau": self.tau}, {"X": self.X, "codes": self.codes})

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FlatKNN:
        raw = read_config(files, kind=cls.KIND)
        classes = require(raw, "classes", list, "flat_knn config.json")
        config, t = unpack(files, cls.KIND)
        X, codes = t["X"].numpy(), t["codes"].numpy()
        if X.shape[1] != config["dim"] or codes.shape != (X.shape[0],) or codes.max() >= len(classes):
            raise ModelFormatError("flat_knn files: stored embeddings/codes disagree with the config")
        return cls(X, np.asarray(classes)[codes], config["n_neighbors"], config["tau"], device)


def fit_flat_logreg(X: np.ndarray, y: np.ndarray, C: float = 1.0, max_iter: int = 300,
                    device: str | torch.device | None = None) -> FlatLinear:
    """The standard flat baseline: L2-regularised multinomial logistic regression (scikit-learn, lbfgs) on
    standardised features, stored as a :class:`FlatLinear` (same tensors, same loader; no pickle).

    Why beside :func:`train_flat_linear`: a strongly regularised full-batch fit is the baseline the literature
    reports for frozen features (e.g. 0.76-0.80 top-1 on the Grocery Store test list); the mini-batch trainer with
    early stopping is a weaker baseline under train/test capture-session shift, and an honest comparison needs the
    strong one.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    if len(classes) < 2:
        raise EmbeddingInputError("a flat classifier needs at least 2 classes")
    codes = encode_labels(y, classes)
    scaler = StandardScaler().fit(X)
    clf = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(X), codes)
    module = DenseNet(X.shape[1], len(classes), hidden=0)
    with torch.no_grad():
        module.shift.copy_(torch.from_numpy(scaler.mean_.astype(np.float32)))
        module.scale.copy_(torch.from_numpy(np.maximum(scaler.scale_, 1e-12).astype(np.float32)))
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row; softmax over (-z/2, z/2) gives the same probabilities
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        module.net[0].weight.copy_(torch.from_numpy(coef.astype(np.float32)))
        module.net[0].bias.copy_(torch.from_numpy(intercept.astype(np.float32)))
    metrics = {"trainer": "sklearn-lbfgs", "C": C, "n_iter": int(np.max(clf.n_iter_))}
    return FlatLinear(module, classes, DenseConfig(hidden=0, standardize=True), metrics, device)
