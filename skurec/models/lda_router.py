"""LDA router: superclass probabilities implied by a global shrinkage-LDA SKU scorer, temperature-calibrated.

A dedicated superclass classifier routes worse than the family posterior implied by a good flat SKU model (the
superclass' probability is the sum of its SKUs' probabilities): it has to learn family boundaries that the SKU
model gets for free from the SKU means. So the router *is* a flat SKU scorer (:mod:`.lda`) aggregated per
superclass::

    logit_s(x) = logsumexp_{c in s} g_c(x) / T,      p(s | x) = softmax_s(logit_s)

with the temperature ``T`` fitted on validation (negative log-likelihood of the true superclass; Guo et al. 2017
temperature scaling), so its top-m probabilities are calibrated for the soft combination. It has the interface of
:class:`~skurec.models.coarse.CoarseHead` (``logits``, ``predict_proba``, ``predict_topk``, ``dim``,
``n_superclasses``) plus :meth:`LDARouter.class_logits` and :meth:`LDARouter.with_classes` (new SKUs: one closed-form
row, no retraining).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ._common import (
    EmbeddingInputError,
    GroupSlots,
    check_embeddings,
    check_xy,
    encode_labels,
    jsonable,
    plane_logsumexp,
    resolve_device,
    superclass_targets,
    topk_stable,
)
from .lda import LDAStatistics, lda_rows, lda_statistics, linear_scores
from .prototypes import class_sums
from .serialization import ModelFormatError, pack, read_config, require, unpack

SHRINKAGE_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.05, 20.0, 41))


def group_logsumexp(
    logits: torch.Tensor, groups: torch.Tensor, n_groups: int, slots: GroupSlots | None = None
) -> torch.Tensor:
    """``logsumexp`` of the columns of every group (n, C) -> (n, n_groups) float64; empty groups give ``-inf``.

    ``slots``: the :class:`~skurec.models._common.GroupSlots` of ``groups`` (built here when not given); while the
    padded layout is at most twice the columns (groups of bounded size) the reduction runs on it, else by scatter.
    """
    n = logits.shape[0]
    slots = slots if slots is not None else GroupSlots.of(groups.numpy(), n_groups)
    if n_groups * slots.width <= 2 * max(1, logits.shape[1]):
        return slots.logsumexp(logits)
    logits = logits.double()
    idx = groups.unsqueeze(0).expand(n, -1)
    gmax = torch.full((n, n_groups), float("-inf"), dtype=logits.dtype).scatter_reduce(
        1, idx, logits, reduce="amax", include_self=True
    )
    safe = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    z = torch.zeros((n, n_groups), dtype=logits.dtype).scatter_add_(1, idx, (logits - safe.gather(1, idx)).exp())
    return torch.where(z > 0, safe + torch.log(z.clamp(min=1e-300)), torch.full_like(z, float("-inf")))


class LDARouter:
    """Global shrinkage-LDA SKU scorer + superclass aggregation + temperature (see the module docstring).

    ``W`` (C, d), ``b`` (C,): SKU scores ``g = W x + b`` (the hierarchy's global scorer: the LDA, the flat softmax or
    their calibrated combination, :mod:`.global_scorer`); ``sc_of_index`` (C,) superclass of each SKU; ``precision``
    (d, d) and ``mu0`` (d,) give new SKUs their row, an LDA row times ``lda_scale`` (the LDA's weight in ``g``, in
    ``g``'s units); ``temperature`` > 0.
    """

    KIND = "lda_router"

    def __init__(
        self,
        classes: list[str],
        W: np.ndarray,
        b: np.ndarray,
        sc_of_index: np.ndarray,
        n_superclasses: int,
        precision: np.ndarray,
        mu0: np.ndarray,
        temperature: float = 1.0,
        shrinkage: float = 0.5,
        metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        lda_scale: float = 1.0,
    ):
        self.classes = [str(c) for c in classes]
        self.lda_scale = float(lda_scale)
        self.W = np.ascontiguousarray(W, dtype=np.float32)
        self.b = np.asarray(b, dtype=np.float32)
        self.sc_of_index = np.asarray(sc_of_index, dtype=np.int64)
        self.n_superclasses = int(n_superclasses)
        self.precision = np.ascontiguousarray(precision, dtype=np.float32)
        self.mu0 = np.asarray(mu0, dtype=np.float32)
        self.dim = int(self.W.shape[1])
        C = len(self.classes)
        if self.W.shape[0] != C or self.b.shape != (C,) or self.sc_of_index.shape != (C,):
            raise EmbeddingInputError(
                f"LDARouter: {C} classes but W {self.W.shape}, b {self.b.shape}, superclasses {self.sc_of_index.shape}"
            )
        if self.precision.shape != (self.dim, self.dim) or self.mu0.shape != (self.dim,):
            raise EmbeddingInputError("LDARouter: precision / mu0 do not match the embedding width")
        if C and (self.sc_of_index.min() < 0 or self.sc_of_index.max() >= self.n_superclasses):
            raise EmbeddingInputError(f"LDARouter: superclass ids must lie in 0..{self.n_superclasses - 1}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.shrinkage = float(shrinkage)
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.device = resolve_device(device)
        self._slot_rows: tuple | None = None  # (W, b, slots) arranged slot-major for logits(), built on first use

    # ------------------------------------------------------------------ inference
    def class_logits(self, X: np.ndarray) -> torch.Tensor:
        """Global SKU scores ``g`` (n, C), CPU float32."""
        X = check_embeddings(X, dim=self.dim)
        return linear_scores(X, self.W, self.b)

    def logits(self, X: np.ndarray) -> torch.Tensor:
        """Superclass logits (n, S) float64: ``logsumexp`` of member SKU scores, divided by the temperature.

        On superclasses of bounded size the SKU rows are pre-arranged slot by slot (pads: zero row, bias ``-inf``), so
        one matrix product yields the scores as (n, K, S) planes for :func:`~skurec.models._common.plane_logsumexp`.
        """
        X = check_embeddings(X, dim=self.dim)
        if self._slot_rows is None:
            slots = GroupSlots.of(self.sc_of_index, self.n_superclasses)
            self._slot_rows = (None, None, slots)
            if self.n_superclasses * slots.width <= 2 * max(1, len(self.classes)):
                cols, pads = (t.numpy() for t in slots.slot_major())
                W, b = self.W[cols].copy(), self.b[cols].copy()
                W[pads], b[pads] = 0.0, float("-inf")
                self._slot_rows = (W, b, slots)
        W, b, slots = self._slot_rows
        if W is None:
            lse = group_logsumexp(self.class_logits(X), torch.from_numpy(self.sc_of_index), self.n_superclasses, slots)
        else:
            lse = plane_logsumexp(linear_scores(X, W, b).reshape(len(X), slots.width, self.n_superclasses))
        return lse / self.temperature

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Superclass probabilities (n, S) float32 (a superclass without SKUs gets 0)."""
        return torch.softmax(self.logits(X).double(), dim=1).float().numpy()

    def predict_topk(self, X: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Top-k superclass ids (n, k) and their probabilities (n, k)."""
        proba = torch.from_numpy(self.predict_proba(X))
        vals, idx = topk_stable(proba, min(k, self.n_superclasses))
        return idx.numpy(), vals.numpy()

    # ------------------------------------------------------------------ new SKUs
    def with_classes(self, X: np.ndarray, y: np.ndarray, superclass_of_new: Mapping[str, int]) -> LDARouter:
        """A router that also scores the new SKUs of ``(X, y)`` (rows ``P (mean - mu0)``), no retraining.

        Known SKUs in ``y`` are left unchanged (their row is the trained one); ``superclass_of_new`` must name the
        superclass of every unknown SKU.
        """
        X, y = check_xy(X, y, dim=self.dim, prefix="new ")
        known = set(self.classes)
        new = sorted({c for c in y.tolist() if c not in known})
        if not new:
            return self
        missing = [c for c in new if c not in superclass_of_new]
        if missing:
            raise EmbeddingInputError(f"no superclass given for new SKUs {missing[:5]}")
        rows = np.isin(y, new)
        sums, counts = class_sums(X[rows], encode_labels(y[rows], new), len(new))
        W_new, b_new = lda_rows(sums / counts[:, None], self.mu0.astype(np.float64), self.precision.astype(np.float64))
        W_new, b_new = W_new * np.float32(self.lda_scale), b_new * np.float32(self.lda_scale)
        sc_new = np.asarray([int(superclass_of_new[c]) for c in new], dtype=np.int64)
        return LDARouter(
            self.classes + new,
            np.concatenate([self.W, W_new]),
            np.concatenate([self.b, b_new]),
            np.concatenate([self.sc_of_index, sc_new]),
            self.n_superclasses,
            self.precision,
            self.mu0,
            self.temperature,
            self.shrinkage,
            {**self.metrics, "n_added_classes": self.metrics.get("n_added_classes", 0) + len(new)},
            self.device,
            self.lda_scale,
        )

    # ------------------------------------------------------------------ serialisation
    def to_files(self) -> dict[str, bytes]:
        config = {
            "dim": self.dim,
            "classes": self.classes,
            "n_superclasses": self.n_superclasses,
            "temperature": self.temperature,
            "shrinkage": self.shrinkage,
            "lda_scale": self.lda_scale,
            "metrics": jsonable(self.metrics),
        }
        return pack(
            self.KIND,
            config,
            {
                "W": self.W,
                "b": self.b,
                "superclass_of_class": self.sc_of_index,
                "precision": self.precision,
                "mu0": self.mu0,
            },
        )

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> LDARouter:
        raw = read_config(files, kind=cls.KIND)
        where = f"{cls.KIND} config.json"
        classes = require(raw, "classes", list, where)
        dim = require(raw, "dim", int, where)
        S = require(raw, "n_superclasses", int, where)
        C = len(classes)
        expected = {"W": (C, dim), "b": (C,), "superclass_of_class": (C,), "precision": (dim, dim), "mu0": (dim,)}
        config, t = unpack(files, cls.KIND, expected_shapes=expected)
        temperature = require(config, "temperature", (int, float), where)
        if not temperature > 0:
            raise ModelFormatError(f"{where}: temperature must be > 0, got {temperature}")
        try:
            return cls(
                [str(c) for c in classes],
                t["W"].numpy(),
                t["b"].numpy(),
                t["superclass_of_class"].numpy(),
                S,
                t["precision"].numpy(),
                t["mu0"].numpy(),
                float(temperature),
                float(config.get("shrinkage", 0.5)),
                config.get("metrics"),
                device,
                float(config.get("lda_scale", 1.0)),
            )
        except EmbeddingInputError as exc:
            raise ModelFormatError(f"{where}: {exc}") from exc


def fit_temperature(logits: torch.Tensor, targets: np.ndarray, grid: tuple[float, ...] = TEMPERATURE_GRID) -> float:
    """The ``T`` of ``grid`` minimising the mean NLL of ``softmax(logits / T)`` at ``targets`` (ties: the first).

    The NLL is convex in ``1 / T`` (a log-sum-exp of linear functions minus a linear one), so along an increasing
    grid it falls, then rises: on such a grid the minimum is found by bisecting the sign of the next step
    (``O(log |grid|)`` evaluations instead of one per grid point); any other grid is scanned.
    """
    t = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    L = logits.double()
    nll: dict[int, float] = {}

    def f(j: int) -> float:
        if j not in nll:
            nll[j] = float(torch.nn.functional.cross_entropy(L / grid[j], t))
        return nll[j]

    if len(grid) > 3 and all(a < b for a, b in zip(grid, grid[1:])):
        lo, hi = 0, len(grid) - 1  # first j with f(j + 1) >= f(j) (hi = the last point: none)
        while lo < hi:
            mid = (lo + hi) // 2
            if f(mid + 1) >= f(mid):
                hi = mid
            else:
                lo = mid + 1
        return float(grid[lo])
    best, best_nll = 1.0, float("inf")
    for j, T in enumerate(grid):
        if f(j) < best_nll:
            best, best_nll = float(T), f(j)
    return best


def choose_shrinkage(
    stats: LDAStatistics, X_val: np.ndarray, codes_val: np.ndarray, grid: tuple[float, ...] = SHRINKAGE_GRID
) -> tuple[float, float, dict[float, float]]:
    """The LDA shrinkage of ``grid`` with the best validation SKU top-1 (ties: the first):
    ``(shrinkage, its top-1, {shrinkage: top-1})``. ``codes_val``: class indices of the validation rows."""
    by_lam: dict[float, float] = {}
    for lam in grid:
        W, b = stats.rows(lam)
        by_lam[lam] = float((linear_scores(X_val, W, b).argmax(1).numpy() == codes_val).mean())
    best = max(grid, key=lambda lam: (by_lam[lam], -grid.index(lam)))
    return float(best), by_lam[best], by_lam


def train_lda_router(
    X: np.ndarray,
    y: np.ndarray,
    superclass_of_class: Mapping[str, int],
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    shrinkage: float | None = None,
    n_superclasses: int | None = None,
    stats: LDAStatistics | None = None,
    device: str | torch.device | None = None,
    global_rows: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> LDARouter:
    """Fit the router in closed form: LDA statistics, shrinkage and temperature.

    ``shrinkage=None`` picks it from :data:`SHRINKAGE_GRID` by validation SKU top-1 (0.5 without validation
    data); the temperature minimises the validation NLL of the true superclass (1.0 without validation data).
    ``stats`` may pass precomputed :func:`~skurec.models.lda.lda_statistics` of ``(X, sorted classes of y)``.
    ``global_rows``: ``(W, b, lda_scale)`` of another global SKU scorer (:func:`~skurec.models.global_scorer.
    choose_global_scorer`) to aggregate instead of the LDA at ``shrinkage`` (which then only gives new SKUs rows).
    """
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    if len(classes) < 2:
        raise EmbeddingInputError("a router needs at least 2 SKUs")
    codes = encode_labels(y, classes)
    sc = superclass_targets(np.asarray(classes), superclass_of_class)
    S = int(n_superclasses if n_superclasses is not None else sc.max() + 1)
    if sc.max() >= S:
        raise EmbeddingInputError(f"superclass ids must be in 0..{S - 1}")
    has_val = X_val is not None and y_val is not None
    if (X_val is None) != (y_val is None):
        raise EmbeddingInputError("give both X_val and y_val, or neither")
    if has_val:
        X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
        cv = encode_labels(y_val, classes, "y_val")
    if stats is None:
        stats = lda_statistics(X, codes, len(classes))
    elif stats.n_classes != len(classes) or stats.dim != X.shape[1]:
        raise EmbeddingInputError("stats were computed for another class list or embedding width")
    metrics: dict[str, Any] = {}
    grid = (shrinkage,) if shrinkage is not None else (SHRINKAGE_GRID if has_val else (0.5,))
    if has_val:
        lam, best_top1, by_lam = choose_shrinkage(stats, X_val, cv, grid)
        metrics.update({f"val_sku_top1_shrinkage_{k:g}": v for k, v in by_lam.items()})
    else:
        lam, best_top1 = grid[0], None
    W, b = stats.rows(lam)
    lda_scale = 1.0
    if global_rows is not None:
        W, b, lda_scale = global_rows
    router = LDARouter(
        classes, W, b, sc, S, stats.precision(lam), stats.mu0, 1.0, lam, device=device, lda_scale=lda_scale
    )
    if has_val:
        L = router.logits(X_val)  # at temperature 1
        T = fit_temperature(L, sc[cv])
        router.temperature = T
        proba = torch.softmax(L / T, dim=1).float()  # what predict_proba returns at temperature T
        top = topk_stable(proba, min(5, S))[1].numpy()
        metrics.update(
            {
                "temperature": T,
                "val_sku_top1": best_top1,
                **{f"val_top{k}": float((top[:, :k] == sc[cv][:, None]).any(1).mean()) for k in (1, 3, 5) if k <= S},
            }
        )
    router.metrics = {"shrinkage": lam, **{k: v for k, v in metrics.items() if v is not None}}
    return router


__all__ = ["LDARouter", "choose_shrinkage", "fit_temperature", "group_logsumexp", "train_lda_router"]
