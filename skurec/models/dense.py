"""The dense softmax head and its trainer: the case_study recipe's coarse router (:class:`~skurec.models.coarse.
CoarseHead`).

:class:`DenseNet` is standardisation + a linear or one-hidden-layer MLP head; :func:`fit_dense` is the mini-batch
AdamW + label-smoothing trainer with early stopping on validation top-1; :func:`load_dense` reads and validates its
files.

The linear head starts as a nearest-centroid cosine classifier (weights = scaled normalised class centroids, bias
0): on unit-norm embeddings that is already a good classifier, so AdamW only has to refine it and converges in a
few epochs (the training-speed target is 2000 classes x 60 images in well under a minute on 2 CPU cores).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._common import INFER_ROWS, ProgressFn, batched_rows, report, seeded
from .serialization import ModelFormatError, read_config, require, unpack


@dataclass(frozen=True)
class DenseConfig:
    """Hyper-parameters of a dense softmax head and its trainer.

    ``hidden=0`` -> linear head, else Linear-GELU-Dropout-Linear. ``init="centroid"`` (linear only) starts from the
    nearest-centroid classifier scaled by ``init_scale``. ``standardize`` centres/scales features first (see
    :class:`DenseNet`). Early stopping watches validation top-1 (ties: loss) with
    ``patience`` epochs; without a validation set the head trains ``max_epochs`` epochs.
    """

    hidden: int = 0
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 3
    init: str = "centroid"
    init_scale: float = 10.0
    standardize: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DenseConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class DenseNet(nn.Module):
    """Standardisation + linear or one-hidden-layer MLP head.

    ``shift`` / ``scale`` (d,) buffers standardise the inputs per feature (``(x - shift) / scale``, set from the
    training data). Frozen CNN embeddings share a large common component (all features are non-negative), which
    makes the raw problem badly conditioned: without standardisation AdamW needs several times more epochs.
    Parameter names are ``net.<i>.weight|bias``.
    """

    def __init__(self, dim: int, n_out: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out))
        else:
            self.net = nn.Sequential(nn.Linear(dim, n_out))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))

    def fit_standardization(self, X: torch.Tensor, eps: float = 1e-3) -> None:
        """Set ``shift``/``scale`` to the per-feature mean and std (floored at ``eps`` times the mean std)."""
        with torch.no_grad():
            mean = X.mean(dim=0)
            std = X.std(dim=0)
            self.shift.copy_(mean)
            self.scale.copy_(std.clamp(min=float(std.mean()) * eps))


def _centroid_init(module: DenseNet, X: torch.Tensor, codes: torch.Tensor, n_out: int, scale: float) -> None:
    """Set a linear head to ``scale * normalised class centroid`` weights (standardised space) and zero bias."""
    lin = module.net[0]
    sums = torch.zeros(n_out, X.shape[1], dtype=X.dtype, device=X.device)
    norm_sum = 0.0
    with torch.no_grad():
        for sl in batched_rows(X.shape[0], INFER_ROWS):
            z = module.standardize(X[sl])
            norm_sum += float(z.norm(dim=1).sum())
            sums.index_add_(0, codes[sl], F.normalize(z, dim=1))
        cent = F.normalize(sums, dim=1)
        # logits start as ~scale * cosine: divide by the typical norm of a standardised row
        lin.weight.copy_(cent * scale / max(norm_sum / X.shape[0], 1e-6))
        lin.bias.zero_()


def _evaluate(module: DenseNet, X: torch.Tensor, codes: torch.Tensor, smoothing: float) -> dict[str, float]:
    module.eval()
    loss_sum, top1, top3 = 0.0, 0, 0
    with torch.no_grad():
        for sl in batched_rows(X.shape[0], INFER_ROWS):
            logits = module(X[sl])
            t = codes[sl]
            loss_sum += float(F.cross_entropy(logits, t, label_smoothing=smoothing, reduction="sum"))
            top = torch.topk(logits, min(3, logits.shape[1]), dim=1).indices
            top1 += int((top[:, 0] == t).sum())
            top3 += int((top == t[:, None]).any(dim=1).sum())
    n = X.shape[0]
    return {"loss": loss_sum / n, "top1": top1 / n, "top3": top3 / n}


def fit_dense(
    X: np.ndarray,
    codes: np.ndarray,
    n_out: int,
    X_val: np.ndarray | None,
    codes_val: np.ndarray | None,
    config: DenseConfig,
    device: torch.device,
    progress: ProgressFn | None = None,
    stage: str = "dense",
) -> tuple[DenseNet, dict[str, Any]]:
    """Train a :class:`DenseNet` on integer targets; return the best module (by validation) and a summary."""
    t0 = time.perf_counter()
    with seeded(config.seed):
        gen = torch.Generator().manual_seed(config.seed)
        Xt = torch.from_numpy(X).to(device)
        ct = torch.from_numpy(codes).to(device)
        module = DenseNet(X.shape[1], n_out, config.hidden, config.dropout).to(device)
        if config.standardize:
            module.fit_standardization(Xt)
        if config.init == "centroid" and config.hidden == 0:
            _centroid_init(module, Xt, ct, n_out, config.init_scale)
        elif config.init not in ("centroid", "default"):
            raise ValueError(f"unknown init {config.init!r}; use 'centroid' or 'default'")
        opt = torch.optim.AdamW(module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        n = X.shape[0]
        steps_per_epoch = max(1, math.ceil(n / config.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.max_epochs * steps_per_epoch)
        Xv = torch.from_numpy(X_val).to(device) if X_val is not None else None
        cv = torch.from_numpy(codes_val).to(device) if codes_val is not None else None
        best: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, bad, history = 0, 0, []
        for epoch in range(1, config.max_epochs + 1):
            module.train()
            perm = torch.randperm(n, generator=gen).to(device)
            total = 0.0
            for start in range(0, n, config.batch_size):
                idx = perm[start : start + config.batch_size]
                loss = F.cross_entropy(module(Xt[idx]), ct[idx], label_smoothing=config.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
            metrics = {"train_loss": total / n}
            if Xv is not None and cv is not None:
                val = _evaluate(module, Xv, cv, config.label_smoothing)
                metrics.update({f"val_{k}": v for k, v in val.items()})
                key = (val["top1"], -val["loss"])
                if best is None or key > best:
                    best, best_epoch, bad = key, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
            history.append(metrics)
            report(progress, stage, epoch, config.max_epochs, metrics)
            if Xv is not None and bad >= config.patience:
                break
        if best_state is not None:
            module.load_state_dict(best_state)
        else:
            best_epoch = len(history)
    module.eval()
    summary: dict[str, Any] = {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "train_seconds": round(time.perf_counter() - t0, 3),
        "final_train_loss": history[-1]["train_loss"],
    }
    if Xv is not None and cv is not None:
        val = _evaluate(module, Xv, cv, config.label_smoothing)
        summary.update({"val_top1": val["top1"], "val_top3": val["top3"], "val_loss": val["loss"]})
    return module, summary


def dense_state_shapes(dim: int, n_out: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes a :class:`DenseNet` with this config must have (used to validate loaded files)."""
    base = {"shift": (dim,), "scale": (dim,)}
    if hidden > 0:
        return {
            **base,
            "net.0.weight": (hidden, dim),
            "net.0.bias": (hidden,),
            "net.3.weight": (n_out, hidden),
            "net.3.bias": (n_out,),
        }
    return {**base, "net.0.weight": (n_out, dim), "net.0.bias": (n_out,)}


def dense_predict_logits(module: DenseNet, X: np.ndarray, device: torch.device) -> torch.Tensor:
    """Logits for ``X`` computed in bounded-memory batches; returned on CPU."""
    out = []
    module.eval()
    with torch.no_grad():
        for sl in batched_rows(X.shape[0], INFER_ROWS):
            out.append(module(torch.from_numpy(X[sl]).to(device)).float().cpu())
    return torch.cat(out, 0)


def load_dense(files: Mapping[str, bytes], kind: str, out_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a dense head's files and check the weights against ``dim`` / ``out_key`` / ``hidden``."""
    raw = read_config(files, kind=kind)
    where = f"{kind} config.json"
    dim = require(raw, "dim", int, where)
    n_out = require(raw, out_key, int, where) if out_key != "classes" else len(require(raw, "classes", list, where))
    hp = require(raw, "hyper_params", dict, where)
    hidden = int(hp.get("hidden", 0))
    config, tensors = unpack(files, kind, expected_shapes=dense_state_shapes(dim, n_out, hidden))
    if set(tensors) != set(dense_state_shapes(dim, n_out, hidden)):
        raise ModelFormatError(f"{kind} tensors {sorted(tensors)} do not match a head with hidden={hidden}")
    return config, tensors


__all__ = ["DenseConfig", "DenseNet", "dense_predict_logits", "dense_state_shapes", "fit_dense", "load_dense"]
