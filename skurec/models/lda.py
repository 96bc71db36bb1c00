"""Shrinkage linear discriminant analysis: the closed-form Gaussian shared-covariance scorer of the hierarchy.

Model: every SKU ``c`` is a Gaussian ``N(mu_c, Sigma)`` with one pooled within-class covariance, shrunk towards a
scaled identity, ``Sigma(l) = (1 - l) Sw + l (tr Sw / d) I``. The class log-likelihood up to a class-independent
term is linear in ``x``::

    g_c(x) = w_c . x + b_c,    w_c = P (mu_c - mu0),    b_c = -1/2 (mu_c - mu0)' P (mu_c - mu0) - w_c . mu0

with ``P = Sigma(l)^-1`` and ``mu0`` the global mean. On frozen embeddings a well-shrunk LDA scores like a tuned
linear probe at a fraction of its cost: one pass for ``Sw`` (a float32 matmul), one symmetric eigendecomposition,
then any shrinkage ``l`` is a rescaling of the eigenvalues (so ``l`` is chosen on validation for free). New SKUs need
no retraining: their row is ``P (mu_new - mu0)``.

:class:`LDAStatistics` holds what every part of the hierarchy derives its parameters from (class means, counts, the
eigendecomposition of ``Sw``); :func:`lda_statistics` computes it once and the router, the superclass builder and the
specialists share it. :func:`statistics_files` / :func:`statistics_from_files` store it as safetensors + JSON (with
the class list and a digest of the rows it was computed on, so a consumer can refuse statistics of other data).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ._common import EmbeddingInputError, batched_rows, check_xy, encode_labels, one_thread
from .prototypes import class_sums
from .serialization import pack, read_config, require, unpack

ROW_BATCH = 16384
STATS_KIND = "lda_statistics"


@dataclass(frozen=True)
class LDAStatistics:
    """Sufficient statistics of a shared-covariance Gaussian model (float64 unless noted).

    ``mu0`` (d,) global mean of the rows; ``means`` (C, d) class means; ``counts`` (C,); ``evals`` (d,) / ``evecs``
    (d, d) eigendecomposition of the pooled within-class covariance ``Sw`` (ascending eigenvalues, >= 0).
    """

    mu0: np.ndarray
    means: np.ndarray
    counts: np.ndarray
    evals: np.ndarray
    evecs: np.ndarray
    # derived arrays by shrinkage (the statistics never change, so the router, the specialists and every size cap of
    # the search share one precision / one set of rows per shrinkage)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.mu0.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.means.shape[0])

    def shrunk_evals(self, shrinkage: float) -> np.ndarray:
        """Eigenvalues of ``Sigma(shrinkage) = (1 - l) Sw + l (tr Sw / d) I``."""
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"LDA shrinkage must be in (0, 1], got {shrinkage}")
        avg = max(float(self.evals.mean()), 1e-12)
        return (1.0 - shrinkage) * self.evals + shrinkage * avg

    def whitener(self, shrinkage: float) -> np.ndarray:
        """``H`` (d, d) with ``H' H = Sigma(shrinkage)^-1``: ``z = H (x - mu0)`` has identity covariance."""
        return (self.evecs / np.sqrt(self.shrunk_evals(shrinkage))[None, :]).T

    def precision(self, shrinkage: float) -> np.ndarray:
        """``Sigma(shrinkage)^-1`` (d, d) (an ``O(d^3)`` product, once per shrinkage: :meth:`rows` does not need it)."""
        key = ("precision", float(shrinkage))
        if key not in self._cache:
            self._cache[key] = (self.evecs / self.shrunk_evals(shrinkage)[None, :]) @ self.evecs.T
        return self._cache[key].copy()

    def rows(self, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
        """:func:`lda_rows` of the class means under ``Sigma(shrinkage)``, float32, through the eigenvectors
        (``O(C d^2)``: the precision is never formed)."""
        key = ("rows", float(shrinkage))
        if key not in self._cache:
            D = self.means - self.mu0[None, :]
            W = ((D @ self.evecs) / self.shrunk_evals(shrinkage)[None, :]) @ self.evecs.T
            b = -0.5 * np.einsum("cd,cd->c", W, D) - W @ self.mu0
            self._cache[key] = (W.astype(np.float32), b.astype(np.float32))
        W, b = self._cache[key]
        return W.copy(), b.copy()


def lda_statistics(X: np.ndarray, codes: np.ndarray, n_classes: int) -> LDAStatistics:
    """Class means, counts and the eigendecomposition of the pooled within-class covariance of ``X`` (n, d).

    ``Sw`` is accumulated as a float32 matmul of the class-centred rows in bounded-memory batches (the only
    ``O(n d^2)`` step), then eigendecomposed in float64.
    """
    n, d = X.shape
    mu0 = X.mean(axis=0, dtype=np.float64)
    sums, counts = class_sums(X, codes, n_classes)
    means = sums / np.maximum(counts, 1)[:, None]
    Mt = torch.from_numpy(means.astype(np.float32))
    Sw = torch.zeros((d, d), dtype=torch.float64)
    for sl in batched_rows(n, ROW_BATCH):
        R = torch.from_numpy(X[sl]) - Mt[torch.from_numpy(codes[sl])]
        Sw += (R.T @ R).double()
    Sw /= max(1, n - int((counts > 0).sum()))
    with one_thread():  # LAPACK's tridiagonal reduction: many short parallel regions (see one_thread)
        evals, evecs = torch.linalg.eigh(Sw)
    return LDAStatistics(mu0, means, counts, evals.clamp(min=0).numpy(), evecs.numpy())


def fit_lda_statistics(X: np.ndarray, y: np.ndarray) -> tuple[list[str], LDAStatistics]:
    """``(sorted classes of y, lda_statistics of (X, y))`` for validated embeddings and SKU ids."""
    X, y = check_xy(X, y)
    classes = sorted(np.unique(y).tolist())
    return classes, lda_statistics(X, encode_labels(y, classes), len(classes))


def rows_sha256(X: np.ndarray, y: np.ndarray) -> str:
    """Digest of a training set's rows (float32 embeddings, labels, in order): what statistics were computed on."""
    h = hashlib.sha256()
    Xc = np.ascontiguousarray(X, dtype=np.float32)
    h.update(f"{Xc.shape}".encode())
    h.update(memoryview(Xc).cast("B"))
    h.update("\0".join(np.asarray(y).astype(str).tolist()).encode("utf-8"))
    return h.hexdigest()


def statistics_files(stats: LDAStatistics, classes: Sequence[str], rows_digest: str) -> dict[str, bytes]:
    """``stats`` as ``config.json`` (class list, width, ``rows_sha256``) + ``tensors.safetensors`` (float64)."""
    if len(classes) != stats.n_classes:
        raise EmbeddingInputError(f"{len(classes)} class names for statistics of {stats.n_classes} classes")
    config = {"classes": [str(c) for c in classes], "dim": stats.dim, "rows_sha256": str(rows_digest)}
    tensors = {
        "mu0": np.asarray(stats.mu0, np.float64),
        "means": np.asarray(stats.means, np.float64),
        "counts": np.asarray(stats.counts, np.int64),
        "evals": np.asarray(stats.evals, np.float64),
        "evecs": np.asarray(stats.evecs, np.float64),
    }
    return pack(STATS_KIND, config, tensors)


def statistics_from_files(files: Mapping[str, bytes]) -> tuple[LDAStatistics, list[str], str]:
    """``(stats, classes, rows_sha256)`` from :func:`statistics_files` output (:class:`ModelFormatError` if bad)."""
    raw = read_config(files, kind=STATS_KIND)
    where = f"{STATS_KIND} config.json"
    classes = [str(c) for c in require(raw, "classes", list, where)]
    d = require(raw, "dim", int, where)
    C = len(classes)
    expected = {"mu0": (d,), "means": (C, d), "counts": (C,), "evals": (d,), "evecs": (d, d)}
    config, t = unpack(files, STATS_KIND, expected_shapes=expected)
    stats = LDAStatistics(*(t[k].numpy() for k in ("mu0", "means", "counts", "evals", "evecs")))
    return stats, classes, require(config, "rows_sha256", str, where)


def lda_rows(means: np.ndarray, mu0: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W (C, d), b (C,))`` float32 of the linear scores ``g_c(x) = W x + b`` for class means ``means``."""
    D = np.asarray(means, dtype=np.float64) - mu0[None, :]
    W = D @ precision
    b = -0.5 * np.einsum("cd,cd->c", W, D) - W @ mu0
    return W.astype(np.float32), b.astype(np.float32)


def linear_scores(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """``X W' + b`` (n, C) float32 on CPU, in bounded-memory batches written into one output (no concatenation)."""
    Wt = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)).T
    bt = torch.from_numpy(np.asarray(b, dtype=np.float32))
    out = torch.empty((len(X), W.shape[0]), dtype=torch.float32)
    for sl in batched_rows(len(X), ROW_BATCH):
        torch.addmm(bt, torch.from_numpy(np.ascontiguousarray(X[sl], dtype=np.float32)), Wt, out=out[sl])
    return out


__all__ = [
    "LDAStatistics",
    "fit_lda_statistics",
    "lda_rows",
    "lda_statistics",
    "linear_scores",
    "rows_sha256",
    "statistics_files",
    "statistics_from_files",
]
