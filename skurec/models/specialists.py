"""Specialist fine head: per-superclass local-whitening discriminants combined with the global SKU scores.

Inside superclass ``s`` the head scores SKU ``c`` with a product of two experts::

    fine_c(x) = scale * (g_c(x) + beta * f_c(x)),      p(c | s, x) = softmax over the SKUs of s of fine_c

* ``g`` is the global shrinkage-LDA score (:mod:`.lda`, the same scorer the router aggregates), so with
  ``beta = 0`` and ``scale = 1`` the hierarchy reproduces the flat LDA posterior exactly (``p(s) p(c|s) = p(c)``);
* ``f`` is the superclass's *specialist*: a Gaussian discriminant with a superclass-local covariance. In the
  globally whitened space ``z = H (x - mu0)`` (global covariance = I) the specialist of ``s`` uses
  ``Sigma_s = (1 - a) I + a Sigma_loc,s``, where ``Sigma_loc,s`` is the within-class covariance of the superclass's
  own images (its top ``rank`` eigen-directions ``U_s``, eigenvalues ``lam``), so directions in which the
  look-alikes of ``s`` vary a lot are down-weighted and the ones in which they are tight are trusted - local
  whitening. Its precision is ``(I - U_s diag(gamma_s) U_s') / (1 - a)`` with ``gamma = a lam / (1 - a + a lam)``
  (the factors ``U_s``, ``gamma_s``: :mod:`.local_whitening`);
  ``f_c(z) = m_c' P_s z - m_c' P_s m_c / 2`` (``m_c`` the class mean in z-space), stored as raw-space rows.

``beta`` and ``scale`` are chosen on validation by the trainer (:func:`train_specialists`); a validation set that
says the specialists do not help gives ``beta = 0``, i.e. the global model. New SKUs (``with_images``) get both
their global row and their specialist row in closed form from the stored whitener and ``U_s``; no retraining.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from ._common import (
    EmbeddingInputError,
    Predictions,
    check_embeddings,
    check_xy,
    encode_labels,
    jsonable,
    labels_from_indices,
    one_thread,
    resolve_device,
    superclass_targets,
    topk_stable,
)
from .lda import LDAStatistics, lda_rows, lda_statistics, linear_scores
from .local_whitening import local_factors
from .prototypes import class_sums
from .serialization import ModelFormatError, pack, read_config, require, unpack
from .specialist_search import calibrate_scale, search_beta


@dataclass(frozen=True)
class SpecialistConfig:
    """Hyper-parameters of the specialists and of their validation search.

    ``mix`` (``a``): weight of the superclass-local covariance against the global one; ``rank``: local
    eigen-directions kept per superclass; ``betas`` / ``scales``: grids searched on validation (``beta = 0`` is
    always tried: the fallback to the global model); ``shrinkage``: of the global LDA (None: the router's).
    """

    mix: float = 0.8
    rank: int = 16
    betas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    scales: tuple[float, ...] = (1.0,)
    shrinkage: float | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecialistConfig:
        names = {f.name for f in fields(cls)}
        out = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**out)


class SpecialistHead:
    """Global LDA rows + specialist rows + the factors that give new SKUs their rows (module docstring).

    Tensors: ``Wg``/``bg`` and ``Ws``/``bs`` (C, d)/(C,) global and specialist rows; ``whitener`` (d, d) ``H``;
    ``mu0`` (d,); ``local_U`` (S, r, d) and ``local_gamma`` (S, r) the local precision factors in z-space;
    ``raw_means`` (C, d) and ``counts`` (C,) class means of the input embeddings (attach rules, running means).
    """

    KIND = "specialist_head"

    def __init__(
        self,
        classes: Sequence[str],
        sc_of_index: np.ndarray,
        n_superclasses: int,
        Wg: np.ndarray,
        bg: np.ndarray,
        Ws: np.ndarray,
        bs: np.ndarray,
        whitener: np.ndarray,
        mu0: np.ndarray,
        local_U: np.ndarray,
        local_gamma: np.ndarray,
        raw_means: np.ndarray,
        counts: np.ndarray,
        beta: float,
        scale: float,
        config: SpecialistConfig,
        metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        lda_scale: float = 1.0,
    ):
        self.classes = [str(c) for c in classes]
        self.lda_scale = float(lda_scale)  # new / refreshed SKUs: global row += lda_scale * (their LDA row change)
        C = len(self.classes)
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        self.sc_of_index = np.asarray(sc_of_index, dtype=np.int64)
        self.n_superclasses = int(n_superclasses)
        self.Wg, self.bg, self.Ws, self.bs = f32(Wg), f32(bg), f32(Ws), f32(bs)
        self.whitener, self.mu0 = f32(whitener), f32(mu0)
        self.local_U, self.local_gamma = f32(local_U), f32(local_gamma)
        self.raw_means, self.counts = f32(raw_means), np.asarray(counts, dtype=np.int64)
        self.dim = int(self.Wg.shape[1])
        d, S = self.dim, self.n_superclasses
        shapes = {
            "Wg": (self.Wg.shape, (C, d)),
            "bg": (self.bg.shape, (C,)),
            "Ws": (self.Ws.shape, (C, d)),
            "bs": (self.bs.shape, (C,)),
            "superclass_of_class": (self.sc_of_index.shape, (C,)),
            "whitener": (self.whitener.shape, (d, d)),
            "mu0": (self.mu0.shape, (d,)),
            "raw_means": (self.raw_means.shape, (C, d)),
            "counts": (self.counts.shape, (C,)),
        }
        bad = {k: v for k, v in shapes.items() if tuple(v[0]) != v[1]}
        if bad:
            raise EmbeddingInputError(f"SpecialistHead: shapes disagree with {C} classes / d={d}: {bad}")
        if (
            self.local_U.ndim != 3
            or self.local_U.shape[0] != S
            or self.local_U.shape[2] != d
            or self.local_gamma.shape != self.local_U.shape[:2]
        ):
            raise EmbeddingInputError(
                f"SpecialistHead: local factors {self.local_U.shape} / {self.local_gamma.shape} do not fit S={S}, d={d}"
            )
        if C and (self.sc_of_index.min() < 0 or self.sc_of_index.max() >= S):
            raise EmbeddingInputError(f"SpecialistHead: superclass ids must lie in 0..{S - 1}")
        self.beta, self.scale = float(beta), float(scale)
        self.config = config
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.device = resolve_device(device)
        self._rows: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ inference
    def _combined_rows(self) -> tuple[np.ndarray, np.ndarray]:
        if self._rows is None:
            self._rows = (self.scale * (self.Wg + self.beta * self.Ws), self.scale * (self.bg + self.beta * self.bs))
        return self._rows

    def class_logits(self, X: np.ndarray) -> torch.Tensor:
        """``scale * (g + beta f)`` for every SKU (n, C), CPU float32 (one matmul: the rows are pre-combined)."""
        X = check_embeddings(X, dim=self.dim)
        W, b = self._combined_rows()
        return linear_scores(X, W, b)

    def expert_logits(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The two experts separately: global ``g`` and specialist ``f`` (n, C) each."""
        X = check_embeddings(X, dim=self.dim)
        return linear_scores(X, self.Wg, self.bg), linear_scores(X, self.Ws, self.bs)

    def predict_within(self, X: np.ndarray, candidates: Sequence[str], k: int = 3) -> Predictions:
        """``p(SKU | candidates)``: softmax of the combined scores restricted to the given SKUs; top-k of them."""
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in candidates if c not in index]
        if unknown:
            raise EmbeddingInputError(f"candidates not known to the specialist head: {unknown[:5]}")
        cols = torch.as_tensor([index[c] for c in candidates], dtype=torch.long)
        proba = torch.softmax(self.class_logits(X)[:, cols].double(), dim=1)
        vals, pos = topk_stable(proba, min(k, len(candidates)))
        idx = cols[pos].numpy()
        return Predictions(
            labels=labels_from_indices(idx, np.ones(idx.shape, bool), self.classes), scores=vals.float().numpy()
        )

    # ------------------------------------------------------------------ new SKUs
    def specialist_rows(self, means: np.ndarray, superclasses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Specialist rows ``(W (n, d), b (n,))`` of classes with raw means ``means`` in the given superclasses."""
        H = self.whitener.astype(np.float64)
        mu0 = self.mu0.astype(np.float64)
        Mz = (np.asarray(means, dtype=np.float64) - mu0) @ H.T
        U = self.local_U[superclasses].astype(np.float64)  # (n, r, d)
        gam = self.local_gamma[superclasses].astype(np.float64)  # (n, r)
        coef = np.einsum("nrd,nd->nr", U, Mz) * gam
        Pm = (Mz - np.einsum("nr,nrd->nd", coef, U)) / (1.0 - self.config.mix)
        bz = -0.5 * np.einsum("nd,nd->n", Pm, Mz)
        W = Pm @ H
        return W.astype(np.float32), (bz - W @ mu0).astype(np.float32)

    def with_images(
        self, X: np.ndarray, y: np.ndarray, superclass_of_new: Mapping[str, int] | None = None
    ) -> tuple[SpecialistHead, list[str], list[str]]:
        """A head that also knows the SKUs of ``(X, y)``: ``(head, new_skus, refreshed_skus)``; nothing is trained.

        New SKUs (their superclass from ``superclass_of_new``) get closed-form global and specialist rows from
        their mean; known SKUs get their mean refreshed (exact running mean) and their rows recomputed.
        """
        X, y = check_xy(X, y, dim=self.dim)
        present = sorted(np.unique(y).tolist())
        index = {c: i for i, c in enumerate(self.classes)}
        new = [c for c in present if c not in index]
        refreshed = [c for c in present if c in index]
        missing = [c for c in new if superclass_of_new is None or c not in superclass_of_new]
        if missing:
            raise EmbeddingInputError(f"the specialist head needs the superclass of new SKUs {missing[:5]}")
        classes = self.classes + new
        means, counts = self._running_means(X, y, classes)
        sc = self._superclasses_with(new, superclass_of_new)  # type: ignore[arg-type]
        touched = np.asarray(
            [index[c] for c in refreshed] + list(range(len(self.classes), len(classes))), dtype=np.int64
        )
        Wg_t, bg_t = self._global_rows(means[touched], touched)
        Ws_t, bs_t = self.specialist_rows(means[touched], sc[touched])
        n_new = len(new)
        grow = lambda a: np.concatenate([a, np.zeros((n_new,) + a.shape[1:], a.dtype)])  # noqa: E731
        Wg, bg, Ws, bs = grow(self.Wg), grow(self.bg), grow(self.Ws), grow(self.bs)
        Wg[touched], bg[touched], Ws[touched], bs[touched] = Wg_t, bg_t, Ws_t, bs_t
        head = SpecialistHead(
            classes,
            sc,
            self.n_superclasses,
            Wg,
            bg,
            Ws,
            bs,
            self.whitener,
            self.mu0,
            self.local_U,
            self.local_gamma,
            means.astype(np.float32),
            counts,
            self.beta,
            self.scale,
            self.config,
            {**self.metrics, "n_added_classes": self.metrics.get("n_added_classes", 0) + n_new},
            self.device,
            self.lda_scale,
        )
        return head, new, refreshed

    def _running_means(self, X: np.ndarray, y: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Class means (float64) and counts over ``classes`` (the known ones first) of the stored images plus
        ``(X, y)``: the exact running mean."""
        codes = encode_labels(y, classes)
        sums, cnt = class_sums(X, codes, len(classes))
        counts = cnt.copy()
        counts[: len(self.classes)] += self.counts
        tot = np.zeros((len(classes), self.dim))
        tot[: len(self.classes)] = self.raw_means.astype(np.float64) * self.counts[:, None]
        return (tot + sums) / np.maximum(counts, 1)[:, None], counts

    def _superclasses_with(self, new: list[str], superclass_of_new: Mapping[str, int]) -> np.ndarray:
        """The superclass of every class once ``new`` (in that order) is appended; ids must be known superclasses."""
        sc = np.concatenate([self.sc_of_index, np.asarray([int(superclass_of_new[c]) for c in new], dtype=np.int64)])
        if sc.size and sc.max() >= self.n_superclasses:
            raise EmbeddingInputError(f"superclass ids must lie in 0..{self.n_superclasses - 1}")
        return sc

    def _global_rows(self, means: np.ndarray, touched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global rows of the ``touched`` classes (known ones first) at their new ``means``: the global scorer may be a
        combination (LDA x lda_scale + softmax), so only its LDA part follows the new mean."""
        precision = self.whitener.astype(np.float64).T @ self.whitener.astype(np.float64)
        mu0 = self.mu0.astype(np.float64)
        Wg_t, bg_t = lda_rows(means, mu0, precision)
        Wg_t, bg_t = Wg_t * np.float32(self.lda_scale), bg_t * np.float32(self.lda_scale)
        old = touched[touched < len(self.classes)]
        if len(old):
            Wo, bo = lda_rows(self.raw_means[old].astype(np.float64), mu0, precision)
            k = len(old)
            Wg_t[:k] += self.Wg[old] - np.float32(self.lda_scale) * Wo
            bg_t[:k] += self.bg[old] - np.float32(self.lda_scale) * bo
        return Wg_t, bg_t

    # ------------------------------------------------------------------ serialisation
    def to_files(self) -> dict[str, bytes]:
        config = {
            "dim": self.dim,
            "classes": self.classes,
            "n_superclasses": self.n_superclasses,
            "rank": int(self.local_U.shape[1]),
            "beta": self.beta,
            "scale": self.scale,
            "lda_scale": self.lda_scale,
            "hyper_params": asdict(self.config),
            "metrics": jsonable(self.metrics),
        }
        return pack(
            self.KIND,
            config,
            {
                "Wg": self.Wg,
                "bg": self.bg,
                "Ws": self.Ws,
                "bs": self.bs,
                "superclass_of_class": self.sc_of_index,
                "whitener": self.whitener,
                "mu0": self.mu0,
                "local_U": self.local_U,
                "local_gamma": self.local_gamma,
                "raw_means": self.raw_means,
                "counts": self.counts,
            },
        )

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> SpecialistHead:
        raw = read_config(files, kind=cls.KIND)
        where = f"{cls.KIND} config.json"
        classes = require(raw, "classes", list, where)
        d = require(raw, "dim", int, where)
        S = require(raw, "n_superclasses", int, where)
        r = require(raw, "rank", int, where)
        C = len(classes)
        expected = {
            "Wg": (C, d),
            "bg": (C,),
            "Ws": (C, d),
            "bs": (C,),
            "superclass_of_class": (C,),
            "whitener": (d, d),
            "mu0": (d,),
            "local_U": (S, r, d),
            "local_gamma": (S, r),
            "raw_means": (C, d),
            "counts": (C,),
        }
        config, t = unpack(files, cls.KIND, expected_shapes=expected)
        hp = SpecialistConfig.from_dict(require(config, "hyper_params", dict, where))
        try:
            return cls(
                [str(c) for c in classes],
                t["superclass_of_class"].numpy(),
                S,
                t["Wg"].numpy(),
                t["bg"].numpy(),
                t["Ws"].numpy(),
                t["bs"].numpy(),
                t["whitener"].numpy(),
                t["mu0"].numpy(),
                t["local_U"].numpy(),
                t["local_gamma"].numpy(),
                t["raw_means"].numpy(),
                t["counts"].numpy(),
                float(require(config, "beta", (int, float), where)),
                float(require(config, "scale", (int, float), where)),
                hp,
                config.get("metrics"),
                device,
                float(config.get("lda_scale", 1.0)),
            )
        except EmbeddingInputError as exc:
            raise ModelFormatError(f"{where}: {exc}") from exc


def _check_config(config: SpecialistConfig) -> None:
    if not 0.0 <= config.mix < 1.0:
        raise ValueError(f"SpecialistConfig.mix must be in [0, 1), got {config.mix}")
    if config.rank < 1:
        raise ValueError(f"SpecialistConfig.rank must be >= 1, got {config.rank}")
    if not all(s_ > 0 for s_ in config.scales):
        raise ValueError(f"SpecialistConfig.scales must be > 0, got {config.scales}")


def _fit_head(
    X: np.ndarray,
    codes: np.ndarray,
    classes: list[str],
    sc: np.ndarray,
    S: int,
    stats: LDAStatistics,
    lam: float,
    config: SpecialistConfig,
    device: str | torch.device | None,
    global_rows: tuple[np.ndarray, np.ndarray, float] | None,
) -> SpecialistHead:
    """Steps 1-2: the global rows (the LDA at ``lam``, or ``global_rows``), the superclass-local whitening factors and
    the specialist rows, closed form; ``beta = 0``, ``scale = 1`` until validation chooses them."""
    H = stats.whitener(lam)
    Wg, bg = stats.rows(lam)
    lda_scale = 1.0
    if global_rows is not None:
        Wg, bg, lda_scale = global_rows
    Mz = (stats.means - stats.mu0) @ H.T
    local_U, local_gamma = local_factors(X, codes, sc, S, Mz, H, stats.mu0, config.rank, config.mix)
    head = SpecialistHead(
        classes,
        sc,
        S,
        Wg,
        bg,
        Wg,
        bg,
        H,
        stats.mu0,
        local_U,
        local_gamma,
        stats.means,
        stats.counts,
        0.0,
        1.0,
        config,
        device=device,
        lda_scale=lda_scale,
    )
    head.Ws, head.bs = head.specialist_rows(stats.means, sc)
    return head


def _choose_beta(
    head: SpecialistHead, router: Any, X_val: np.ndarray, cv: np.ndarray, config: SpecialistConfig
) -> tuple[float, float, dict[str, Any]]:
    """Step 3: ``beta`` / ``scale`` with the best validation top-1 of the full soft hierarchy (ties: within-superclass
    top-1, the smaller ``beta``, the scale nearest 1), then ``scale`` calibrated on validation NLL when only 1 is
    offered. Returns ``(beta, scale, metrics)``."""
    sc, S = head.sc_of_index, head.n_superclasses
    metrics: dict[str, Any] = {}
    G, F = head.expert_logits(X_val)
    route = torch.log_softmax(router.logits(X_val).double(), dim=1)
    betas = sorted(set((0.0,) + tuple(config.betas)))
    with one_thread():  # a few dozen small block operations (see one_thread)
        found = search_beta(G, F, route, sc, S, cv, betas, config.scales)
    best: tuple[float, float, float, float] | None = None
    beta, scale = 0.5, 1.0
    for b_ in betas:
        for s_ in config.scales:
            top1, within = found[(float(b_), float(s_))]
            metrics[f"val_top1_beta_{b_:g}_scale_{s_:g}"] = top1
            key = (top1, within, -b_, -abs(s_ - 1.0))
            if best is None or key > best:
                best = key
                beta, scale = b_, s_
    # calibrate p(c | s) for the ranks after the first (beta = 0 keeps scale 1: then the hierarchy over all
    # superclasses is exactly its global scorer, which is calibrated already)
    if beta > 0 and len(config.scales) == 1 and config.scales[0] == 1.0:
        scale = calibrate_scale(G, F, route, sc, S, cv, beta)
        metrics["scale_selected_on"] = "val NLL of log p(s) + log p(c | s)"
    metrics["val_within_top1_global"] = found[("global", 0)][0]
    metrics["val_within_top1_specialist"] = found[("specialist", 0)][0]
    assert best is not None
    metrics.update({"val_top1": best[0], "val_within_top1": best[1]})
    return beta, scale, metrics


def train_specialists(
    X: np.ndarray,
    y: np.ndarray,
    superclass_of_class: Mapping[str, int],
    router: Any,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    config: SpecialistConfig | None = None,
    stats: LDAStatistics | None = None,
    device: str | torch.device | None = None,
    global_rows: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> SpecialistHead:
    """Fit the specialists of every superclass (closed form) and choose ``beta`` / ``scale`` on validation.

    ``router`` is the trained :class:`~skurec.models.lda_router.LDARouter` (its shrinkage is reused, and the
    validation search scores the full soft hierarchy ``log p(s) + log p(c | s)`` over all superclasses,
    :func:`search_beta`). Without validation data ``beta = 0.5``. ``stats``: precomputed
    :func:`~skurec.models.lda.lda_statistics`. ``global_rows``: ``(W, b, lda_scale)`` of the hierarchy's global
    scorer when it is not the LDA (:func:`~skurec.models.global_scorer.choose_global_scorer`); the specialists stay
    LDA-derived.
    """
    t0 = time.perf_counter()
    config = config or SpecialistConfig()
    _check_config(config)
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    codes = encode_labels(y, classes)
    sc = superclass_targets(np.asarray(classes), superclass_of_class)
    S = int(router.n_superclasses)
    if list(router.classes) != classes:
        raise EmbeddingInputError("the router was trained on another class list")
    if stats is None:
        stats = lda_statistics(X, codes, len(classes))
    elif stats.n_classes != len(classes) or stats.dim != X.shape[1]:
        raise EmbeddingInputError("stats were computed for another class list or embedding width")
    if (X_val is None) != (y_val is None):
        raise EmbeddingInputError("give both X_val and y_val, or neither")
    lam = config.shrinkage if config.shrinkage is not None else float(router.shrinkage)
    head = _fit_head(X, codes, classes, sc, S, stats, lam, config, device, global_rows)
    sizes = np.bincount(sc, minlength=S)
    metrics: dict[str, Any] = {"shrinkage": lam, "n_superclasses": S, "n_specialists": int((sizes >= 2).sum())}
    beta, scale = 0.5, 1.0
    if X_val is not None and y_val is not None:
        X_val, y_val = check_xy(X_val, y_val, dim=X.shape[1], prefix="val ")
        beta, scale, found = _choose_beta(head, router, X_val, encode_labels(y_val, classes, "y_val"), config)
        metrics.update(found)
    head.beta, head.scale, head._rows = beta, scale, None
    metrics.update({"beta": beta, "scale": scale, "train_seconds": round(time.perf_counter() - t0, 3)})
    head.metrics = metrics
    return head


__all__ = ["SpecialistConfig", "SpecialistHead", "calibrate_scale", "local_factors", "search_beta", "train_specialists"]
