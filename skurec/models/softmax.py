"""The strong flat softmax: one linear layer over all SKUs, regularisation and stopping chosen on validation.

It is THE flat baseline of skurec (pipeline ``flat_baselines``, reports, benchmarks) and one of the global scorers
the hierarchy chooses from (:mod:`.specialist_hierarchy`). Training (:func:`fit_flat_softmax`):

* features standardised per dimension (train mean / std), as a linear probe on frozen embeddings is usually trained;
* minibatch Adam on the mean cross-entropy + ``lam / 2 |W|^2`` (``lam`` = weight decay, the bias is not penalised),
  several weight decays trained side by side in ONE matrix product per
  batch (the heads share the input rows, so a grid of ``K`` values costs one wider output, not ``K`` passes over the
  data), a cosine learning-rate decay over ``max_epochs``;
* after every epoch each head is scored on the validation rows of ALL SKUs (top-1, ties: lower NLL); the best
  (weight decay, epoch) snapshot wins, and training stops once no head improved for ``patience`` epochs;
* the matrix products run in bfloat16 (fp32 master weights and softmax) where the CPU has native bf16 matrix units
  (``bf16=None``: auto), which is about 4x faster than float32 on such CPUs;
* a temperature fitted on validation NLL calibrates the probabilities (used to mix it with other scorers).

The stored model is raw-space rows ``W`` (C, d), ``b`` (C,) (the standardisation folded in) and the temperature,
safetensors + JSON; scoring is one torch matmul (:meth:`FlatSoftmax.class_logits`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
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
    jsonable,
    labels_from_indices,
    report,
    resolve_device,
    topk_stable,
)
from .lda import linear_scores
from .lda_router import fit_temperature
from .serialization import ModelFormatError, pack, read_config, require, unpack


@dataclass(frozen=True)
class SoftmaxConfig:
    """Hyper-parameters of :func:`fit_flat_softmax` (defaults chosen on validation splits, see benchmarks/README).

    ``weight_decays``: L2 strengths (on the mean loss of standardised features) trained side by side, validation picks one (with the epoch);
    ``max_epochs`` / ``patience``: the schedule length in rounds (a round = an epoch, or more passes
    when an epoch has fewer than ``min_steps / max_epochs`` batches) and the early stop (validation after each round); ``lr``: Adam's peak learning rate (cosine
    decay to 0 over ``max_epochs``); ``bf16``: bfloat16 matrix products (None: when the CPU has native bf16 units).
    """

    weight_decays: tuple[float, ...] = (1e-4, 1e-3)
    max_epochs: int = 30
    min_steps: int = 1000
    patience: int = 4
    batch_size: int = 1024
    lr: float = 4e-3
    seed: int = 0
    bf16: bool | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SoftmaxConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})


def _topk(scores: torch.Tensor, k: int, classes: list[str]) -> Predictions:
    kk = min(k, len(classes))
    vals, idx = topk_stable(scores, kk)
    labels = labels_from_indices(idx.numpy(), np.ones(idx.shape, dtype=bool), classes)
    vals_np = vals.numpy().astype(np.float32)
    if kk < k:  # pad so every model returns (n, k)
        labels = np.concatenate([labels, np.full((labels.shape[0], k - kk), "", dtype=labels.dtype)], axis=1)
        vals_np = np.concatenate([vals_np, np.zeros((vals_np.shape[0], k - kk), np.float32)], axis=1)
    return Predictions(labels=labels, scores=vals_np, superclass=np.full(labels.shape[0], -1, dtype=np.int64))


class FlatSoftmax:
    """Linear softmax over every SKU: ``p(c | x) = softmax((W x + b) / T)`` (module docstring)."""

    KIND = "flat_softmax"

    def __init__(
        self,
        classes: Sequence[str],
        W: np.ndarray,
        b: np.ndarray,
        temperature: float = 1.0,
        config: SoftmaxConfig | None = None,
        metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ):
        self.classes = [str(c) for c in classes]
        self.W = np.ascontiguousarray(W, dtype=np.float32)
        self.b = np.ascontiguousarray(b, dtype=np.float32)
        C = len(self.classes)
        if self.W.ndim != 2 or self.W.shape[0] != C or self.b.shape != (C,):
            raise EmbeddingInputError(f"FlatSoftmax: {C} classes but W {self.W.shape}, b {self.b.shape}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.dim = int(self.W.shape[1])
        self.temperature = float(temperature)
        self.config = config or SoftmaxConfig()
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.device = resolve_device(device)

    def class_logits(self, X: np.ndarray) -> torch.Tensor:
        """Raw scores ``W x + b`` (n, C), CPU float32 (divide by ``temperature`` for calibrated log-odds)."""
        return linear_scores(check_embeddings(X, dim=self.dim), self.W, self.b)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (n, C) in ``classes`` order."""
        return torch.softmax(self.class_logits(X).double() / self.temperature, dim=1).float().numpy()

    def predict_topk(self, X: np.ndarray, k: int = 3) -> Predictions:
        """Top-k SKUs by calibrated probability."""
        return _topk(torch.softmax(self.class_logits(X).double() / self.temperature, dim=1), k, self.classes)

    def to_files(self) -> dict[str, bytes]:
        config = {
            "dim": self.dim,
            "classes": self.classes,
            "temperature": self.temperature,
            "hyper_params": asdict(self.config),
            "metrics": jsonable(self.metrics),
        }
        return pack(self.KIND, config, {"W": self.W, "b": self.b})

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FlatSoftmax:
        raw = read_config(files, kind=cls.KIND)
        where = f"{cls.KIND} config.json"
        classes = require(raw, "classes", list, where)
        d = require(raw, "dim", int, where)
        config, t = unpack(files, cls.KIND, expected_shapes={"W": (len(classes), d), "b": (len(classes),)})
        T = require(config, "temperature", (int, float), where)
        if not T > 0:
            raise ModelFormatError(f"{where}: temperature must be > 0, got {T}")
        hp = SoftmaxConfig.from_dict(config.get("hyper_params") or {})
        return cls(classes, t["W"].numpy(), t["b"].numpy(), float(T), hp, config.get("metrics"), device)


def bf16_matmul_is_fast() -> bool:
    """True where the CPU has native bfloat16 matrix units (AMX / AVX512-BF16): bf16 products beat float32 there."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and torch.backends.cpu.get_cpu_capability() in (
            "AVX512",
            "AMX",
        )
    except (AttributeError, RuntimeError):  # pragma: no cover - torch builds without mkldnn
        return False


def _val_scores(Zv: torch.Tensor, cv: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per head ``(top-1 (K,), mean NLL (K,))`` on the validation rows (float32)."""
    K, C, _ = W.shape
    hits = torch.zeros(K, dtype=torch.float64)
    nll = torch.zeros(K, dtype=torch.float64)
    Wf = W.reshape(K * C, -1)
    for sl in batched_rows(Zv.shape[0], 2048):
        logits = torch.addmm(b.reshape(-1), Zv[sl], Wf.T).reshape(-1, K, C)
        t = cv[sl]
        hits += (logits.argmax(2) == t[:, None]).sum(0).double()
        lse = torch.logsumexp(logits, dim=2)
        nll += (lse - logits.gather(2, t[:, None, None].expand(-1, K, 1))[:, :, 0]).sum(0).double()
    n = max(1, Zv.shape[0])
    return (hits / n).numpy(), (nll / n).numpy()


@dataclass
class _Rows:
    """Step 1's output: training rows standardised per dimension (``Z``, in the matmul dtype) with their class
    ``codes``, the standardisation (``shift`` / ``scale``), and the validation rows of known SKUs (``Zv`` / ``cv``;
    None without any; ``known`` marks them in ``X_val``)."""

    Z: torch.Tensor
    codes: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    Zv: torch.Tensor | None = None
    cv: torch.Tensor | None = None
    known: np.ndarray | None = None


@dataclass
class _Heads:
    """Step 2's output: per head (weight decay) its best validation key ``(top-1, -NLL)`` and state ``(W, b,
    epoch)``, the last weights ``W`` / ``b`` and the per-round ``path``."""

    best_key: list[tuple[float, float]]
    best_state: list[tuple[torch.Tensor, torch.Tensor, int] | None]
    W: torch.Tensor
    b: torch.Tensor
    path: list[dict[str, Any]]


def _check_config(cfg: SoftmaxConfig) -> None:
    if cfg.max_epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0 or not cfg.weight_decays:
        raise ValueError(f"bad SoftmaxConfig {cfg}")
    if any(w < 0 for w in cfg.weight_decays):
        raise ValueError(f"weight decays must be >= 0, got {cfg.weight_decays}")


def _standardize(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None,
    y_val: np.ndarray | None,
    classes: list[str],
    dev: torch.device,
    mm_dtype: torch.dtype,
) -> _Rows:
    """Step 1: features standardised by the train mean / std (the std floored at 1e-3 of its mean)."""
    Xt = torch.from_numpy(X).to(dev)
    shift = Xt.mean(dim=0)
    std = Xt.std(dim=0, unbiased=False)
    scale = std.clamp(min=float(std.mean()) * 1e-3)
    rows = _Rows(((Xt - shift) / scale).to(mm_dtype), torch.from_numpy(encode_labels(y, classes)).to(dev), shift, scale)
    del Xt
    if X_val is not None and y_val is not None:
        rows.known = np.isin(y_val, classes)
        if rows.known.any():
            rows.Zv = (torch.from_numpy(X_val[rows.known]).to(dev) - shift) / scale
            rows.cv = torch.from_numpy(encode_labels(y_val[rows.known], classes, "y_val")).to(dev)
    return rows


def _train_heads(
    rows: _Rows,
    n_classes: int,
    wds: list[float],
    cfg: SoftmaxConfig,
    mm_dtype: torch.dtype,
    progress: ProgressFn | None,
) -> _Heads:
    """Step 2: minibatch Adam on one head per weight decay side by side (one wide matmul per batch), cosine learning
    rate; after every round each head is scored on the validation rows (best state kept) and training stops once no
    head improved for ``patience`` rounds."""
    Z, codes, Zv, cv = rows.Z, rows.codes, rows.Zv, rows.cv
    dev = Z.device
    n, d = Z.shape
    C, K = n_classes, len(wds)
    wd = torch.tensor(wds, device=dev)[:, None, None]
    gen = torch.Generator().manual_seed(cfg.seed)
    W = torch.zeros((K, C, d), device=dev)
    prior = torch.bincount(codes, minlength=C).double() / n
    b = torch.log(prior.clamp(min=1e-12)).float().to(dev).repeat(K, 1)  # the intercept-only optimum
    mW, vW = torch.zeros_like(W), torch.zeros_like(W)
    mb, vb = torch.zeros_like(b), torch.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    # a "round" is one epoch, or more passes on small data sets: at least min_steps Adam steps in all
    steps_per_round = max(math.ceil(n / cfg.batch_size), math.ceil(cfg.min_steps / cfg.max_epochs))
    total = cfg.max_epochs * steps_per_round

    def batches():
        while True:
            yield from torch.split(torch.randperm(n, generator=gen).to(dev), cfg.batch_size)

    stream = batches()
    heads = _Heads([(-1.0, -math.inf)] * K, [None] * K, W, b, [])
    stale, step = 0, 0
    ar = torch.arange(cfg.batch_size, device=dev)
    for epoch in range(cfg.max_epochs):
        t_ep = time.perf_counter()
        for _ in range(steps_per_round):
            idx = next(stream)
            z, t = Z[idx], codes[idx]
            B = z.shape[0]
            Wm = W.reshape(K * C, d).to(mm_dtype)
            logits = torch.mm(z, Wm.T).float().reshape(B, K, C) + b[None]
            P = torch.softmax(logits, dim=2)
            P[ar[:B], :, t] -= 1.0
            P /= B
            gW = torch.mm(P.reshape(B, K * C).T.to(mm_dtype), z).float().reshape(K, C, d)
            gW.addcmul_(wd, W)  # L2 penalty lam/2 |W|^2 on the mean loss, per head
            gb = P.sum(0)
            step += 1
            lr = 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (step - 1) / total))
            c1, c2 = 1.0 - beta1**step, 1.0 - beta2**step
            for p, g, m, v in ((W, gW, mW, vW), (b, gb, mb, vb)):
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-lr / c1)
        entry: dict[str, Any] = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - t_ep, 2)}
        if Zv is not None and cv is not None:
            top1, nll = _val_scores(Zv, cv, W, b)
            improved = False
            for k in range(K):
                key = (round(float(top1[k]), 6), -float(nll[k]))
                if key > heads.best_key[k]:
                    heads.best_key[k], heads.best_state[k], improved = (
                        key,
                        (W[k].clone(), b[k].clone(), epoch + 1),
                        True,
                    )
            entry.update({"val_top1": [round(float(a), 4) for a in top1], "val_nll": [round(float(a), 4) for a in nll]})
            stale = 0 if improved else stale + 1
        heads.path.append(entry)
        report(progress, "flat_softmax", epoch + 1, cfg.max_epochs, {"seconds": entry["seconds"]})
        if Zv is not None and stale >= cfg.patience:
            break
    return heads


def fit_flat_softmax(
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: SoftmaxConfig | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> FlatSoftmax:
    """Train the strong flat softmax on ``(X, y)``, choosing weight decay, stopping epoch and temperature on
    ``(X_val, y_val)`` over every SKU (module docstring). Without validation rows: the first weight decay of the
    config, the full schedule, temperature 1. Validation rows of SKUs absent from training are ignored."""
    t0 = time.perf_counter()
    cfg = config or SoftmaxConfig()
    _check_config(cfg)
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    if len(classes) < 2:
        raise EmbeddingInputError("a flat classifier needs at least 2 classes")
    if (X_val is None) != (y_val is None):
        raise EmbeddingInputError("give both X_val and y_val, or neither")
    dev = resolve_device(device)
    if X_val is not None and y_val is not None:
        X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
    use_bf16 = (dev.type == "cpu" and bf16_matmul_is_fast()) if cfg.bf16 is None else bool(cfg.bf16)
    mm_dtype = torch.bfloat16 if use_bf16 else torch.float32
    rows = _standardize(X, y, X_val, y_val, classes, dev, mm_dtype)  # step 1
    has_val = rows.Zv is not None and rows.cv is not None
    wds = [float(w) for w in cfg.weight_decays] if has_val else [float(cfg.weight_decays[0])]
    heads = _train_heads(rows, len(classes), wds, cfg, mm_dtype, progress)  # step 2
    # step 3: the best (weight decay, epoch) on validation
    if has_val:
        k_best = max(range(len(wds)), key=lambda k: (heads.best_key[k], -k))
        state = heads.best_state[k_best]
        assert state is not None
        Wk, bk, best_epoch = state
    else:
        k_best, Wk, bk, best_epoch = 0, heads.W[0], heads.b[0], len(heads.path)
    # step 4: fold the standardisation into raw-space rows: (x - shift) / scale . w + b = x . (w / scale) + (b - w/scale . shift)
    W_raw = (Wk / rows.scale[None, :]).cpu()
    b_raw = (bk - W_raw.to(dev) @ rows.shift).cpu()
    model = FlatSoftmax(classes, W_raw.numpy(), b_raw.numpy(), 1.0, cfg, device=dev)
    metrics: dict[str, Any] = {
        "trainer": "adam_minibatch_l2",
        "weight_decay": wds[k_best],
        "epoch": best_epoch,
        "epochs_run": len(heads.path),
        "bf16": use_bf16,
        "weight_decays": wds,
        "selected_on": "val" if has_val else "default (no validation rows)",
    }
    if has_val and X_val is not None and rows.cv is not None:  # step 5: temperature on validation NLL
        L = model.class_logits(X_val[rows.known])
        model.temperature = fit_temperature(L, rows.cv.cpu().numpy())
        metrics.update(
            {
                "val_top1": heads.best_key[k_best][0],
                "val_nll": -heads.best_key[k_best][1],
                "temperature": model.temperature,
            }
        )
    metrics.update({"path": heads.path, "train_seconds": round(time.perf_counter() - t0, 3)})
    model.metrics = metrics
    return model


__all__ = ["FlatSoftmax", "SoftmaxConfig", "bf16_matmul_is_fast", "fit_flat_softmax"]
