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
specialists share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._common import batched_rows
from .prototypes import class_sums

ROW_BATCH = 16384


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
        """``Sigma(shrinkage)^-1`` (d, d)."""
        return (self.evecs / self.shrunk_evals(shrinkage)[None, :]) @ self.evecs.T


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
    evals, evecs = torch.linalg.eigh(Sw)
    return LDAStatistics(mu0, means, counts, evals.clamp(min=0).numpy(), evecs.numpy())


def lda_rows(means: np.ndarray, mu0: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(W (C, d), b (C,))`` float32 of the linear scores ``g_c(x) = W x + b`` for class means ``means``."""
    D = np.asarray(means, dtype=np.float64) - mu0[None, :]
    W = D @ precision
    b = -0.5 * np.einsum("cd,cd->c", W, D) - W @ mu0
    return W.astype(np.float32), b.astype(np.float32)


def linear_scores(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> torch.Tensor:
    """``X W' + b`` (n, C) float32 on CPU, in bounded-memory batches."""
    Wt = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32)).T
    bt = torch.from_numpy(np.asarray(b, dtype=np.float32))
    out = [
        torch.from_numpy(np.ascontiguousarray(X[sl], dtype=np.float32)) @ Wt + bt
        for sl in batched_rows(len(X), ROW_BATCH)
    ]
    return torch.cat(out, 0) if out else torch.zeros((0, W.shape[0]))


__all__ = ["LDAStatistics", "lda_rows", "lda_statistics", "linear_scores"]
