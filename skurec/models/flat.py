"""Flat baselines on the same embeddings: linear softmax, nearest class prototype, and cosine k-NN.

They answer "does the hierarchy help?": each scores every SKU of the catalogue at once, with the same
``predict_topk(X, k) -> Predictions`` interface as :class:`~skurec.models.hierarchical.HierarchicalClassifier`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from ._common import (
    INFER_ROWS,
    EmbeddingInputError,
    Predictions,
    ProgressFn,
    batched_rows,
    check_embeddings,
    check_xy,
    encode_labels,
    jsonable,
    labels_from_indices,
    report,
    resolve_device,
    topk_stable,
)
from .dense import DenseConfig, DenseNet, dense_predict_logits, load_dense
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


class FlatLinear:
    """Multinomial logistic regression over all SKUs: standardisation + one linear layer (a :class:`DenseNet` with
    ``hidden=0``), fitted by :func:`fit_flat_logreg`; ``metrics`` records the trainer, the chosen ``C`` and the
    validation path."""

    KIND = "flat_linear"

    def __init__(
        self,
        module: DenseNet,
        classes: list[str],
        config: DenseConfig,
        metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ):
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
        config = {
            "dim": self.dim,
            "classes": self.classes,
            "hyper_params": asdict(self.config),
            "metrics": jsonable(self.metrics),
        }
        return pack(self.KIND, config, self.module.state_dict())

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FlatLinear:
        config, tensors = load_dense(files, cls.KIND, "classes")
        hp = DenseConfig.from_dict(config["hyper_params"])
        module = DenseNet(config["dim"], len(config["classes"]), hp.hidden, hp.dropout)
        module.load_state_dict(tensors)
        return cls(module, [str(c) for c in config["classes"]], hp, config.get("metrics"), device)


def train_flat_linear(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: DenseConfig | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> FlatLinear:
    """Deprecated alias of :func:`fit_flat_logreg` (kept so old callers get the one flat baseline).

    ``config`` (the mini-batch trainer's :class:`DenseConfig`) is ignored: the flat linear baseline is always the
    full-batch L-BFGS logistic regression with its regularisation chosen on ``X_val`` / ``y_val``.
    """
    del config
    return fit_flat_logreg(X, y, X_val, y_val, device=device, progress=progress)


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


#: Regularisation grid of :func:`fit_flat_logreg` (scikit-learn's ``C``: inverse L2 strength on the summed loss of
#: standardised features). Chosen on the Grocery Store validation lists of both packaged encoders, where the best
#: values were 0.03-0.3; the grid spans a factor 100 around them.
DEFAULT_CS: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3)
#: ``C`` used when no validation set is given.
DEFAULT_C = 0.03
#: Above this many SKUs, ``C`` is chosen on a class subset of this size (see :func:`fit_flat_logreg`).
SELECT_MAX_CLASSES = 256


def _logreg_loss_grad(
    Z: torch.Tensor, codes: torch.Tensor, W: torch.Tensor, b: torch.Tensor, lam: float, chunk: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy + ``lam/2 |W|^2`` and its gradient, computed in row chunks (bounded memory, no autograd)."""
    n = Z.shape[0]
    loss = 0.0
    gW = torch.zeros_like(W)
    gb = torch.zeros_like(b)
    for sl in batched_rows(n, chunk):
        z, t = Z[sl], codes[sl]
        logits = torch.addmm(b, z, W.T)
        lse = torch.logsumexp(logits, dim=1)
        loss += float((lse - logits.gather(1, t[:, None])[:, 0]).sum(dtype=torch.float64))
        P = torch.exp_(logits.sub_(lse[:, None]))  # softmax, in place
        P[torch.arange(t.numel(), device=P.device), t] -= 1.0
        gW.addmm_(P.T, z)
        gb += P.sum(dim=0)
    loss = loss / n + 0.5 * lam * float((W * W).sum(dtype=torch.float64))
    return loss, gW.div_(n).add_(W, alpha=lam), gb.div_(n)


def _lbfgs_logreg(
    Z: torch.Tensor, codes: torch.Tensor, W0: torch.Tensor, b0: torch.Tensor, C: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Minimise ``C * sum_i CE_i + |W|^2 / 2`` (scikit-learn's objective; scaled by ``1/(C n)``) from ``W0, b0``."""
    n, _ = Z.shape
    lam = 1.0 / (C * n)
    W = W0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    chunk = max(512, (1 << 23) // max(1, W.shape[0]))
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.25),
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=tol,
        tolerance_change=1e-9,
    )
    state = {"evals": 0, "loss": math.nan}

    def closure() -> torch.Tensor:
        state["evals"] += 1
        with torch.no_grad():
            f, gW, gb = _logreg_loss_grad(Z, codes, W, b, lam, chunk)
        W.grad, b.grad = gW, gb
        state["loss"] = f
        return torch.tensor(f, dtype=torch.float64)

    opt.step(closure)
    return W.detach(), b.detach(), {"evals": state["evals"], "objective": state["loss"]}


def _val_metrics(Z: torch.Tensor, codes: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    loss, top1 = 0.0, 0
    with torch.no_grad():
        for sl in batched_rows(Z.shape[0], INFER_ROWS):
            logits = torch.addmm(b, Z[sl], W.T)
            loss += float(torch.nn.functional.cross_entropy(logits, codes[sl], reduction="sum"))
            top1 += int((logits.argmax(dim=1) == codes[sl]).sum())
    return {"val_top1": top1 / Z.shape[0], "val_loss": loss / Z.shape[0]}


def fit_flat_logreg(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    C: float | None = None,
    max_iter: int = 300,
    tol: float = 1e-4,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    select_max_classes: int = SELECT_MAX_CLASSES,
) -> FlatLinear:
    """Full-batch L-BFGS logistic regression over all SKUs, ``C`` chosen on validation (on a class subset above
    ``select_max_classes`` SKUs). NOT the flat baseline any more: the pipeline, the reports and the benchmarks use
    :func:`~skurec.models.softmax.fit_flat_softmax` (stronger at every scale, regularisation chosen on all SKUs,
    minutes at 2000 SKUs); this one remains for the generator calibration of ``benchmarks/calibrated_catalogue.py``
    and for :class:`FlatLinear` artifacts written before it.

    On catalogues of more than ``select_max_classes`` SKUs, ``C`` is chosen on a seeded subset of that many classes
    (their train and validation rows), then the model is fitted once on every SKU with that ``C``: the objective sums
    the loss over images and the penalty over class rows, so a class subset keeps their ratio, and the cost of the
    search stays constant instead of growing with the catalogue (0 = search on every class).

    Features are standardised per dimension (train mean / std, kept as the model's ``shift`` / ``scale`` buffers).
    The objective is scikit-learn's ``C * sum_i CE_i + |W|^2 / 2`` (intercept not penalised), minimised by
    full-batch L-BFGS (strong-Wolfe line search) in torch with hand-written chunked gradients: two matrix products per
    evaluation, bounded memory, CPU or GPU. With ``X_val`` / ``y_val`` and ``C=None``, the ``Cs`` grid is walked from
    the strongest regularisation up, each fit warm-started from the previous one; the ``C`` with the best validation
    top-1 (ties: lower validation loss) wins, and the walk stops once two grid points in a row did not improve on it.
    Validation rows of SKUs absent from training are ignored. Without validation data (or with ``C`` given) one fit
    with ``C`` (default :data:`DEFAULT_C`). ``max_iter`` / ``tol``: L-BFGS iterations per grid point / max-abs
    gradient tolerance of the scaled objective.

    The chosen ``C``, the validation path, L-BFGS evaluations and seconds are in ``model.metrics``; the model is a
    :class:`FlatLinear` (safetensors + JSON, same loader as ever).
    """
    t0 = time.perf_counter()
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    if len(classes) < 2:
        raise EmbeddingInputError("a flat classifier needs at least 2 classes")
    codes = encode_labels(y, classes)
    have_val = X_val is not None or y_val is not None
    if have_val and (X_val is None or y_val is None):
        raise EmbeddingInputError("give both X_val and y_val, or neither")
    dev = resolve_device(device)
    module = DenseNet(X.shape[1], len(classes), hidden=0)
    Xt = torch.from_numpy(X).to(dev)
    module.to(dev)
    with torch.no_grad():  # population std (scikit-learn's StandardScaler), floored like DenseNet's
        std = Xt.std(dim=0, unbiased=False)
        module.shift.copy_(Xt.mean(dim=0))
        module.scale.copy_(std.clamp(min=float(std.mean()) * 1e-3))
        Z = module.standardize(Xt)
    del Xt
    ct = torch.from_numpy(codes).to(dev)
    Zv = cv = None
    if have_val:
        X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
        known = np.isin(y_val, classes)
        if known.any():
            with torch.no_grad():
                Zv = module.standardize(torch.from_numpy(X_val[known]).to(dev))
            cv = torch.from_numpy(encode_labels(y_val[known], classes, name="y_val")).to(dev)
    subset_note = None
    if C is None and Zv is not None and len(Cs) > 1 and 0 < select_max_classes < len(classes):
        pick = set(np.random.default_rng(0).choice(classes, size=select_max_classes, replace=False).tolist())
        tr_keep, va_keep = np.isin(y, list(pick)), np.isin(y_val, list(pick))
        if va_keep.any():
            probe = fit_flat_logreg(
                X[tr_keep],
                y[tr_keep],
                X_val[va_keep],
                y_val[va_keep],
                Cs=Cs,
                max_iter=max_iter,
                tol=tol,
                device=device,
                select_max_classes=0,
            )
            C = float(probe.metrics["C"])
            subset_note = {"n_classes": select_max_classes, "path": probe.metrics.get("path")}
    if C is not None:
        grid = [float(C)]
    elif Zv is not None:
        grid = sorted(float(c) for c in Cs)
    else:
        grid = [DEFAULT_C]
    if not grid or min(grid) <= 0:
        raise ValueError(f"C values must be > 0, got {grid}")
    prior = torch.bincount(ct, minlength=len(classes)).double() / len(codes)
    W = torch.zeros(len(classes), X.shape[1], device=dev)
    b = torch.log(prior).float().to(dev)  # the intercept-only optimum: a warm start that costs nothing
    path: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], float, torch.Tensor, torch.Tensor] | None = None
    since_best = 0
    for i, c in enumerate(grid):
        t = time.perf_counter()
        W, b, info = _lbfgs_logreg(Z, ct, W, b, c, max_iter, tol)
        entry: dict[str, Any] = {"C": c, **info, "seconds": round(time.perf_counter() - t, 3)}
        key = (0.0, 0.0)
        if Zv is not None and cv is not None:
            entry.update(_val_metrics(Zv, cv, W, b))
            key = (round(entry["val_top1"], 6), -entry["val_loss"])
        path.append(entry)
        report(progress, "flat_logreg", i + 1, len(grid), {k: v for k, v in entry.items() if k != "C"} | {"C": c})
        if best is None or key > best[0]:
            best, since_best = (key, c, W.clone(), b.clone()), 0
        else:
            since_best += 1
            if since_best >= 2:
                break
    assert best is not None
    _, best_c, W, b = best
    with torch.no_grad():
        module.net[0].weight.copy_(W)
        module.net[0].bias.copy_(b)
    chosen = next(e for e in path if e["C"] == best_c)
    metrics: dict[str, Any] = {
        "trainer": "lbfgs_logreg",
        "C": best_c,
        "C_selected_on": (
            "val"
            if len(grid) > 1
            else (
                f"val, {select_max_classes}-class subset" if subset_note else ("given" if C is not None else "default")
            )
        ),
        **({"C_selection_subset": subset_note} if subset_note else {}),
        "Cs": grid,
        "path": path,
        "evals": sum(e["evals"] for e in path),
        "max_iter": max_iter,
        "tol": tol,
        "train_seconds": round(time.perf_counter() - t0, 3),
    }
    for k in ("val_top1", "val_loss"):
        if k in chosen:
            metrics[k] = chosen[k]
    return FlatLinear(module.cpu(), classes, DenseConfig(hidden=0, dropout=0.0, standardize=True), metrics, dev)
