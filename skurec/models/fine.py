"""Fine head: a few-shot metric learned episodically *inside* superclasses (prototypical networks).

Model: ``z = normalize(W x + b)`` (linear ``d -> k``, or a small MLP) and a learnable temperature ``s``; a class is
represented by its prototype ``normalize(mean z)`` over all its training embeddings (computed after training), and
``p(SKU | superclass) = softmax_{c in superclass}(s * cos(z, proto_c))`` - only the superclass's own SKUs compete.

Training is episodic: every step samples ``episodes_per_step`` superclasses; in each, the ways are its classes (at
most ``max_ways``), with ``n_support`` + ``n_query`` images each; the loss is the prototypical cross-entropy of
queries against the support prototypes of *their own episode*. All episodes of a step are evaluated with one
batched matmul plus an episode mask (no Python loop per sample). Because episodes only contain SKUs of one
superclass, the metric concentrates on the hard, within-superclass distinctions the coarse head cannot make.

The linear projection is initialised with a superclass-local LDA: directions maximising the spread of class means
*around their superclass mean* relative to the pooled within-class scatter (shrinkage-regularised), which is already
a strong metric for near-duplicates; episodic training then refines it, and with a validation set the best validated
state is kept - which can be the initialisation itself (on the Grocery Store embeddings, ~33 images per class, the
episodes over-fit and the LDA start was kept; from an orthogonal start they do learn). New SKUs need no retraining:
their prototype is just the mean projected embedding (see :meth:`FineHead.with_images`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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
    seeded,
    superclass_targets,
    topk_stable,
)
from .prototypes import class_sums
from .serialization import pack, read_config, require, unpack

MAX_LOG_SCALE = math.log(100.0)


@dataclass(frozen=True)
class FineConfig:
    """Hyper-parameters of the fine head and its episodic trainer.

    ``proj_dim`` output dim k (clamped to d); ``hidden`` 0 = linear projection, else d->hidden->k MLP;
    ``init`` ``"lda"`` (linear only) or ``"orthogonal"``; ``steps`` optimisation steps of ``episodes_per_step``
    episodes; ``eval_every`` steps between validation checks (best state kept) when a validation set is given.
    """

    proj_dim: int = 256
    hidden: int = 0
    init: str = "lda"
    steps: int = 300
    episodes_per_step: int = 16
    max_ways: int = 20
    n_support: int = 5
    n_query: int = 5
    lr: float = 5e-4
    weight_decay: float = 0.0
    init_scale: float = 10.0
    lda_samples: int = 20000
    lda_shrinkage: float = 0.1
    eval_every: int = 100
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FineConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class FineNet(nn.Module):
    """Projection to the metric space plus a learnable log-temperature."""

    def __init__(self, dim: int, proj_dim: int, hidden: int = 0, init_scale: float = 10.0):
        super().__init__()
        if hidden > 0:
            self.proj: nn.Module = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, proj_dim))
        else:
            self.proj = nn.Sequential(nn.Linear(dim, proj_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale), dtype=torch.float32))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm projected embeddings."""
        return F.normalize(self.proj(x), dim=-1)

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOG_SCALE).exp()


def fine_state_shapes(dim: int, proj_dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes implied by a fine-head config (validated on load)."""
    shapes: dict[str, tuple[int, ...]] = {"log_scale": ()}
    if hidden > 0:
        shapes.update(
            {
                "proj.0.weight": (hidden, dim),
                "proj.0.bias": (hidden,),
                "proj.2.weight": (proj_dim, hidden),
                "proj.2.bias": (proj_dim,),
            }
        )
    else:
        shapes.update({"proj.0.weight": (proj_dim, dim), "proj.0.bias": (proj_dim,)})
    return shapes


def _lda_init(
    X: np.ndarray, codes: np.ndarray, sc_of_code: np.ndarray, k: int, n_samples: int, shrinkage: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Superclass-local LDA: ``(W (k, d), b (k,))`` maximising within-superclass class separation.

    Solves ``Sb v = lambda Sw v`` with ``Sw`` the pooled within-class covariance (from at most ``n_samples`` rows,
    shrunk towards a scaled identity) and ``Sb`` the covariance of class means around their superclass mean, by
    Cholesky whitening + one symmetric eigendecomposition. ``b`` centres the data (``W (x - mean)``).
    """
    n, d = X.shape
    C = sc_of_code.size
    sums, counts = class_sums(X, codes, C)
    means = sums / np.maximum(counts, 1)[:, None]
    rng = np.random.default_rng(seed)
    sel = np.sort(rng.choice(n, size=n_samples, replace=False)) if n > n_samples else np.arange(n)
    Z = torch.from_numpy(X[sel] - means[codes[sel]].astype(np.float32))
    Sw = (Z.T @ Z).double() / max(1, len(sel))
    avg = float(torch.trace(Sw)) / d
    Sw = (1 - shrinkage) * Sw + shrinkage * max(avg, 1e-8) * torch.eye(d, dtype=torch.float64)
    S = int(sc_of_code.max()) + 1
    sc_sums = np.zeros((S, d))
    np.add.at(sc_sums, sc_of_code, means)
    sc_means = sc_sums / np.maximum(np.bincount(sc_of_code, minlength=S), 1)[:, None]
    D = means - sc_means[sc_of_code]
    if np.allclose(D, 0):  # every superclass holds one class: fall back to global class separation
        D = means - means.mean(axis=0, keepdims=True)
    Dt = torch.from_numpy(D)
    L = torch.linalg.cholesky(Sw)
    Dw = torch.linalg.solve_triangular(L, Dt.T, upper=False)  # L^-1 D^T: class offsets in whitened space
    Sb_w = (Dw @ Dw.T / C).float()
    _, U = torch.linalg.eigh(Sb_w)  # ascending eigenvalues
    top = U[:, -k:].flip(1).double()
    W = torch.linalg.solve_triangular(L.T, top, upper=True).T.numpy()  # (k, d) = (L^-T U)^T
    W = W / np.mean(np.linalg.norm(W, axis=1))  # the output is normalised: only directions/relative scale matter
    center = X.mean(axis=0).astype(np.float64)
    return W.astype(np.float32), (-(W @ center)).astype(np.float32)


class _EpisodeSampler:
    """Draws batches of episodes (superclass -> ways -> support/query indices) fully vectorised per step."""

    def __init__(self, codes: np.ndarray, sc_of_code: np.ndarray, config: FineConfig, seed: int):
        self.rng = np.random.default_rng(seed)
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes, minlength=sc_of_code.size)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        groups: dict[int, list[int]] = {}
        for c, s in enumerate(sc_of_code.tolist()):
            groups.setdefault(s, []).append(c)
        self.episodes = [np.asarray(v) for _, v in sorted(groups.items()) if len(v) >= 2]
        self.global_mode = not self.episodes
        if self.global_mode:  # no superclass has 2+ classes: episodes over random classes of the catalogue
            self.episodes = [np.arange(sc_of_code.size)]
        self.cfg = config

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns sample indices (N_c, S+Q) and the episode id of each of the N_c sampled classes."""
        cfg = self.cfg
        picks = self.rng.integers(0, len(self.episodes), size=cfg.episodes_per_step)
        cls_list, ep_list = [], []
        for e, p in enumerate(picks.tolist()):
            members = self.episodes[p]
            if members.size > cfg.max_ways:
                members = self.rng.choice(members, size=cfg.max_ways, replace=False)
            cls_list.append(members)
            ep_list.append(np.full(members.size, e))
        cls = np.concatenate(cls_list)
        ep = np.concatenate(ep_list)
        shots = cfg.n_support + cfg.n_query
        cnt = self.counts[cls]
        width = max(int(cnt.max()), shots)
        keys = self.rng.random((cls.size, width))
        keys[np.arange(width)[None, :] >= cnt[:, None]] = np.inf  # positions past a class's size sort last
        ranked = np.argsort(keys, axis=1)  # a random permutation of each class's rows
        # Classes with fewer than S+Q images wrap around (support and query may then share images).
        perm = np.take_along_axis(ranked, np.arange(shots)[None, :] % cnt[:, None], axis=1)
        return self.order[self.starts[cls][:, None] + perm], ep


def _episode_loss(
    net: FineNet, Xt: torch.Tensor, idx: torch.Tensor, ep: torch.Tensor, n_support: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypical loss of a batch of episodes; also returns query accuracy."""
    z = net.embed(Xt[idx])  # (N_c, S+Q, k)
    protos = F.normalize(z[:, :n_support].mean(dim=1), dim=-1)
    q = z[:, n_support:]
    n_c, n_q = q.shape[0], q.shape[1]
    logits = net.scale() * (q.reshape(n_c * n_q, -1) @ protos.T)
    q_class = torch.arange(n_c, device=Xt.device).repeat_interleave(n_q)
    logits = logits.masked_fill(ep[q_class][:, None] != ep[None, :], float("-inf"))
    loss = F.cross_entropy(logits, q_class)
    acc = (logits.argmax(dim=1) == q_class).float().mean()
    return loss, acc


class FineHead:
    """Trained fine head: projection + temperature + per-class mean projected embeddings.

    ``class_means`` (C, k) are *unnormalised* means of the unit projected train embeddings and ``counts`` (C,) how
    many embeddings they average, so prototypes can be refreshed incrementally when images are added.
    ``raw_means`` (C, d), optional, are the class means of the *input* embeddings over the same images (used to
    attach new SKUs to superclasses by raw-prototype similarity); they are updated exactly alongside.
    """

    KIND = "fine_head"

    def __init__(
        self,
        net: FineNet,
        classes: Sequence[str],
        class_means: np.ndarray,
        counts: np.ndarray,
        dim: int,
        config: FineConfig,
        metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        raw_means: np.ndarray | None = None,
    ):
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.classes = [str(c) for c in classes]
        self.class_means = np.asarray(class_means, dtype=np.float32)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.dim = int(dim)
        self.config = config
        self.metrics: dict[str, Any] = dict(metrics or {})
        if self.class_means.shape[0] != len(self.classes) or self.counts.shape != (len(self.classes),):
            raise EmbeddingInputError("FineHead: class_means / counts do not match the class list")
        self.raw_means = None if raw_means is None else np.asarray(raw_means, dtype=np.float32)
        if self.raw_means is not None and self.raw_means.shape != (len(self.classes), self.dim):
            raise EmbeddingInputError(f"FineHead: raw_means {self.raw_means.shape} != ({len(self.classes)}, {dim})")
        self._protos = F.normalize(torch.from_numpy(self.class_means), dim=1).to(self.device)

    @property
    def proj_dim(self) -> int:
        return int(self.class_means.shape[1])

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Unit projected embeddings (n, k) float32."""
        X = check_embeddings(X, dim=self.dim)
        with torch.no_grad():
            out = [
                self.net.embed(torch.from_numpy(X[sl]).to(self.device)).cpu() for sl in batched_rows(len(X), INFER_ROWS)
            ]
        return torch.cat(out, 0).numpy()

    def class_logits(self, X: np.ndarray) -> torch.Tensor:
        """``scale * cos(z, prototype)`` for every class (n, C), CPU tensor."""
        X = check_embeddings(X, dim=self.dim)
        out = []
        with torch.no_grad():
            s = self.net.scale()
            for sl in batched_rows(len(X), INFER_ROWS):
                z = self.net.embed(torch.from_numpy(X[sl]).to(self.device))
                out.append((s * z @ self._protos.T).float().cpu())
        return torch.cat(out, 0)

    def predict_within(self, X: np.ndarray, candidates: Sequence[str], k: int = 3) -> Predictions:
        """``p(SKU | candidates)``: softmax restricted to the given SKUs (e.g. one superclass); top-k of them."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in candidates if c not in index]
        if unknown:
            raise EmbeddingInputError(f"candidates not known to the fine head: {unknown[:5]}")
        cols = torch.as_tensor([index[c] for c in candidates], dtype=torch.long)
        proba = torch.softmax(self.class_logits(X)[:, cols], dim=1)
        kk = min(k, len(candidates))
        vals, pos = topk_stable(proba, kk)
        idx = cols[pos].numpy()
        labels = labels_from_indices(idx, np.ones(idx.shape, bool), self.classes)
        return Predictions(labels=labels, scores=vals.numpy())

    def with_images(self, X: np.ndarray, y: np.ndarray) -> tuple[FineHead, list[str], list[str]]:
        """A new head whose prototypes include these images: new SKUs are appended, known SKUs refreshed.

        Returns ``(head, new_skus, refreshed_skus)``. No parameter changes: the projection stays frozen.
        """
        X, y = check_xy(X, y, dim=self.dim)
        z = self.embed(X).astype(np.float64)
        present = sorted(np.unique(y).tolist())
        index = {c: i for i, c in enumerate(self.classes)}
        new = [c for c in present if c not in index]
        refreshed = [c for c in present if c in index]
        classes = self.classes + new
        codes = encode_labels(y, classes)
        means = _running_mean(self.class_means, self.counts, z, codes, len(classes))
        counts = np.bincount(codes, minlength=len(classes)).astype(np.int64)
        counts[: len(self.classes)] += self.counts
        raw = None if self.raw_means is None else _running_mean(self.raw_means, self.counts, X, codes, len(classes))
        head = FineHead(
            self.net,
            classes,
            means.astype(np.float32),
            counts,
            self.dim,
            self.config,
            {**self.metrics, "n_added_classes": self.metrics.get("n_added_classes", 0) + len(new)},
            self.device,
            raw,
        )
        return head, new, refreshed

    def to_files(self) -> dict[str, bytes]:
        config = {
            "dim": self.dim,
            "proj_dim": self.proj_dim,
            "classes": self.classes,
            "hyper_params": asdict(self.config),
            "metrics": jsonable(self.metrics),
        }
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors.update({"class_means": self.class_means, "counts": self.counts})
        if self.raw_means is not None:
            tensors["raw_means"] = self.raw_means
        config["has_raw_means"] = self.raw_means is not None
        return pack(self.KIND, config, tensors)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> FineHead:
        raw = read_config(files, kind=cls.KIND)
        where = "fine_head config.json"
        classes = require(raw, "classes", list, where)
        dim = require(raw, "dim", int, where)
        proj_dim = require(raw, "proj_dim", int, where)
        hp = FineConfig.from_dict(require(raw, "hyper_params", dict, where))
        expected = {f"net.{k}": v for k, v in fine_state_shapes(dim, proj_dim, hp.hidden).items()}
        expected.update({"class_means": (len(classes), proj_dim), "counts": (len(classes),)})
        if raw.get("has_raw_means"):
            expected["raw_means"] = (len(classes), dim)
        config, t = unpack(files, cls.KIND, expected_shapes=expected)
        net = FineNet(dim, proj_dim, hp.hidden, hp.init_scale)
        net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
        rm = t["raw_means"].numpy() if "raw_means" in t else None
        return cls(
            net,
            [str(c) for c in classes],
            t["class_means"].numpy(),
            t["counts"].numpy(),
            dim,
            hp,
            config.get("metrics"),
            device,
            rm,
        )


def _running_mean(
    old_means: np.ndarray, old_counts: np.ndarray, rows: np.ndarray, codes: np.ndarray, n_classes: int
) -> np.ndarray:
    """Exact class means after adding ``rows`` (codes index the extended class list; new classes are appended)."""
    sums, cnt = class_sums(np.asarray(rows, dtype=np.float64), codes, n_classes)
    tot = np.zeros((n_classes, old_means.shape[1]))
    tot[: old_means.shape[0]] = old_means.astype(np.float64) * old_counts[:, None]
    counts = cnt.copy()
    counts[: old_means.shape[0]] += old_counts
    return (tot + sums) / np.maximum(counts, 1)[:, None]


def _project_means(net: FineNet, Ft: torch.Tensor, codes_t: torch.Tensor, C: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean unit projected embedding of every class over all given feature rows (bounded memory)."""
    k = net.proj[-1].out_features
    sums = torch.zeros(C, k, dtype=torch.float64, device=Ft.device)
    with torch.no_grad():
        for sl in batched_rows(Ft.shape[0], INFER_ROWS):
            sums.index_add_(0, codes_t[sl], net.embed(Ft[sl]).double())
    counts = torch.bincount(codes_t, minlength=C)
    means = sums / counts.clamp(min=1)[:, None]
    return means.float().cpu().numpy(), counts.cpu().numpy().astype(np.int64)


def _within_superclass_accuracy(
    net: FineNet, Ft: torch.Tensor, codes_t: torch.Tensor, Fv: torch.Tensor, cv: torch.Tensor, sc_of_code: torch.Tensor
) -> float:
    """Validation top-1 of ``p(SKU | true superclass)`` with prototypes from the training rows."""
    C = sc_of_code.numel()
    means, _ = _project_means(net, Ft, codes_t, C)
    protos = F.normalize(torch.from_numpy(means).to(Ft.device), dim=1)
    correct = 0
    with torch.no_grad():
        for sl in batched_rows(Fv.shape[0], INFER_ROWS):
            sims = net.embed(Fv[sl]) @ protos.T
            same = sc_of_code[None, :] == sc_of_code[cv[sl]][:, None]
            pred = sims.masked_fill(~same, float("-inf")).argmax(dim=1)
            correct += int((pred == cv[sl]).sum())
    return correct / max(1, Fv.shape[0])


def _features(lin: nn.Linear, X: np.ndarray, device: torch.device) -> torch.Tensor:
    """``lin(X)`` for all rows, batched, without autograd (the fixed first factor in subspace mode)."""
    with torch.no_grad():
        return torch.cat([lin(torch.from_numpy(X[sl]).to(device)) for sl in batched_rows(len(X), INFER_ROWS)], 0)


def _fold(base: nn.Linear, adapter: FineNet, dim: int) -> FineNet:
    """Compose the fixed projection ``base`` (d->k) and the trained adapter (k->k) into one ``FineNet`` (d->k)."""
    A = adapter.proj[0]
    k = A.out_features
    net = FineNet(dim, k, 0)
    with torch.no_grad():
        net.proj[0].weight.copy_(A.weight @ base.weight)
        net.proj[0].bias.copy_(A.weight @ base.bias + A.bias)
        net.log_scale.copy_(adapter.log_scale)
    return net


def _init_projection(X: np.ndarray, codes: np.ndarray, sc_of_code: np.ndarray, k: int, config: FineConfig) -> FineNet:
    """The d->k network before episodic training: LDA-initialised linear, or orthogonal linear / MLP."""
    d = X.shape[1]
    net = FineNet(d, k, config.hidden, config.init_scale)
    if config.hidden == 0 and config.init == "lda":
        W, b = _lda_init(X, codes, sc_of_code, k, config.lda_samples, config.lda_shrinkage, config.seed)
        with torch.no_grad():
            net.proj[0].weight.copy_(torch.from_numpy(W))
            net.proj[0].bias.copy_(torch.from_numpy(b))
    else:
        for m in net.proj:
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)
    return net


def _check_config(config: FineConfig) -> None:
    """Reject hyper-parameters the episodic trainer cannot use, naming the field."""
    if config.init not in ("lda", "orthogonal"):
        raise ValueError(f"unknown fine init {config.init!r}; use 'lda' or 'orthogonal'")
    for name, low in (
        ("proj_dim", 1),
        ("n_support", 1),
        ("n_query", 1),
        ("max_ways", 2),
        ("episodes_per_step", 1),
        ("eval_every", 1),
        ("steps", 0),
        ("lda_samples", 2),
    ):
        if getattr(config, name) < low:
            raise ValueError(f"FineConfig.{name} must be >= {low}, got {getattr(config, name)}")
    if not 0.0 <= config.lda_shrinkage <= 1.0:
        raise ValueError(f"FineConfig.lda_shrinkage must be in [0, 1], got {config.lda_shrinkage}")


def train_fine(
    X: np.ndarray,
    y: np.ndarray,
    superclass_of_class: Mapping[str, int],
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: FineConfig | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> FineHead:
    """Train the fine head episodically inside superclasses, then compute every class's prototype.

    Linear heads train in *subspace mode*: the LDA/orthogonal projection ``P`` (d->k) is applied once to all rows
    and episodes train a k->k adapter ``A`` (identity-initialised); the result is folded into one linear layer
    ``A P``. That is the same model class as training ``d->k`` directly, at ``k/d`` of the per-step cost. MLP heads
    train end to end. With a validation set, within-superclass top-1 is checked at step 0 (the initialisation) and
    every ``eval_every`` steps and the best state is kept (``metrics["val_within_top1"]``).
    """
    config = config or FineConfig()
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    codes = encode_labels(y, classes)
    sc_of_code = superclass_targets(np.asarray(classes), superclass_of_class)
    d = X.shape[1]
    k = min(config.proj_dim, d)
    _check_config(config)
    val_xy = None
    if X_val is not None or y_val is not None:
        if X_val is None or y_val is None:
            raise EmbeddingInputError("give both X_val and y_val, or neither")
        X_val, y_val = check_xy(X_val, y_val, dim=d, prefix="val ")
        val_xy = (X_val, encode_labels(y_val, classes, "y_val"))
    dev = resolve_device(device)
    t0 = time.perf_counter()
    with seeded(config.seed):
        base = _init_projection(X, codes, sc_of_code, k, config).to(dev)
        subspace = config.hidden == 0
        if subspace:
            tnet = FineNet(k, k, 0, config.init_scale).to(dev)
            with torch.no_grad():
                tnet.proj[0].weight.copy_(torch.eye(k))
                tnet.proj[0].bias.zero_()
            Ft = _features(base.proj[0], X, dev)
            Fv = _features(base.proj[0], val_xy[0], dev) if val_xy is not None else None
        else:
            tnet = base
            Ft = torch.from_numpy(X).to(dev)
            Fv = torch.from_numpy(val_xy[0]).to(dev) if val_xy is not None else None
        codes_t = torch.from_numpy(codes).to(dev)
        sc_t = torch.from_numpy(sc_of_code).to(dev)
        cv = torch.from_numpy(val_xy[1]).to(dev) if val_xy is not None else None
        metrics = _episodic_loop(tnet, Ft, codes_t, Fv, cv, sc_t, codes, sc_of_code, config, dev, progress)
        tnet.eval()
        means, counts = _project_means(tnet, Ft, codes_t, len(classes))
        net = _fold(base.proj[0], tnet, d) if subspace else tnet
    sums, raw_counts = class_sums(X, codes, len(classes))
    raw_means = (sums / np.maximum(raw_counts, 1)[:, None]).astype(np.float32)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 3)
    metrics["train_mode"] = "subspace" if subspace else "full"
    return FineHead(net, classes, means, counts, d, config, metrics, dev, raw_means)


def _episodic_loop(
    tnet: FineNet,
    Ft: torch.Tensor,
    codes_t: torch.Tensor,
    Fv: torch.Tensor | None,
    cv: torch.Tensor | None,
    sc_t: torch.Tensor,
    codes: np.ndarray,
    sc_of_code: np.ndarray,
    config: FineConfig,
    dev: torch.device,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Optimise ``tnet`` on batches of within-superclass episodes; keeps the best validated state."""
    sampler = _EpisodeSampler(codes, sc_of_code, config, config.seed)
    opt = torch.optim.AdamW(tnet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.steps))
    metrics: dict[str, Any] = {"episode_mode": "global" if sampler.global_mode else "superclass"}
    has_val = Fv is not None and cv is not None
    best_acc, best_state, best_step = -1.0, None, 0
    if has_val:
        best_acc = _within_superclass_accuracy(tnet, Ft, codes_t, Fv, cv, sc_t)
        best_state = {kk: v.detach().clone() for kk, v in tnet.state_dict().items()}
        metrics["val_within_top1_init"] = best_acc
    run_loss, run_acc, span = 0.0, 0.0, 0
    for step in range(1, config.steps + 1):
        tnet.train()
        idx, ep = sampler.sample()
        loss, acc = _episode_loss(
            tnet, Ft, torch.from_numpy(idx).to(dev), torch.from_numpy(ep).to(dev), config.n_support
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss, run_acc, span = run_loss + float(loss.detach()), run_acc + float(acc), span + 1
        if step % config.eval_every == 0 or step == config.steps:
            m = {"episode_loss": run_loss / span, "episode_acc": run_acc / span, "scale": float(tnet.scale().detach())}
            run_loss, run_acc, span = 0.0, 0.0, 0
            if has_val:
                tnet.eval()
                m["val_within_top1"] = _within_superclass_accuracy(tnet, Ft, codes_t, Fv, cv, sc_t)
                if m["val_within_top1"] > best_acc:
                    best_acc, best_step = m["val_within_top1"], step
                    best_state = {kk: v.detach().clone() for kk, v in tnet.state_dict().items()}
            report(progress, "fine", step, config.steps, m)
            metrics.update(m)
    if best_state is not None:
        tnet.load_state_dict(best_state)
        metrics.update({"val_within_top1": best_acc, "best_step": best_step})
    return metrics
