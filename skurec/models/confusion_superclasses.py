"""Superclasses from the confusion structure of the global SKU model: look-alikes share a superclass.

For the shared-covariance Gaussian model behind the global scorer (:mod:`.lda`) the pairwise confusion rate of two
SKUs is ``Phi(-Delta / 2)``, ``Delta`` the Mahalanobis distance between their means under the shrunk pooled
covariance - a monotone function of ``Delta``. SKUs are merged most-confusable pair first (single linkage on
``Delta``, Kruskal order) with a cap on the superclass size, so superclasses are tight groups of look-alikes and
never grow into the giant chained clusters plain single or average linkage produces; the cap also keeps every
specialist small (a superclass never needs a third level). The result is a
:class:`~skurec.models.superclasses.Superclasses` (same JSON form as the UMAP-derived ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._common import EmbeddingInputError, check_xy, encode_labels
from .lda import LDAStatistics, lda_statistics
from .superclasses import Superclasses, canonical_labels

METHOD_CONFUSION = "lda-confusion-capped-linkage"


def mahalanobis_distances(stats: LDAStatistics, shrinkage: float) -> np.ndarray:
    """Squared Mahalanobis distances (C, C) between class means under ``Sigma(shrinkage)``."""
    Mz = (stats.means - stats.mu0) @ stats.whitener(shrinkage).T
    sq = (Mz**2).sum(axis=1)
    D = sq[:, None] + sq[None, :] - 2.0 * (Mz @ Mz.T)
    np.fill_diagonal(D, 0.0)
    return np.maximum(D, 0.0)


def capped_linkage(dist: np.ndarray, max_size: int) -> np.ndarray:
    """Single linkage in increasing ``dist`` order, never forming a group of more than ``max_size`` (labels (C,))."""
    C = dist.shape[0]
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    parent = np.arange(C)
    size = np.ones(C, dtype=np.int64)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    if C >= 2 and max_size >= 2:
        iu, ju = np.triu_indices(C, 1)
        for o in np.argsort(dist[iu, ju], kind="stable").tolist():
            a, b = find(int(iu[o])), find(int(ju[o]))
            if a != b and size[a] + size[b] <= max_size:
                parent[b] = a
                size[a] += size[b]
    return canonical_labels(np.asarray([find(i) for i in range(C)]))


def confusion_superclasses(
    X: np.ndarray,
    y: np.ndarray,
    max_size: int = 8,
    shrinkage: float = 0.5,
    stats: LDAStatistics | None = None,
    classes: Sequence[str] | None = None,
) -> Superclasses:
    """Superclasses of at most ``max_size`` SKUs built from the global LDA's pairwise confusions (module doc).

    ``stats`` may pass precomputed :func:`~skurec.models.lda.lda_statistics` for the sorted classes of ``y``.
    """
    X, y = check_xy(X, y)
    names = sorted(np.unique(y).tolist()) if classes is None else [str(c) for c in classes]
    if stats is None:
        stats = lda_statistics(X, encode_labels(y, names), len(names))
    if stats.n_classes != len(names):
        raise EmbeddingInputError(f"stats cover {stats.n_classes} classes, the labels {len(names)}")
    dist = mahalanobis_distances(stats, shrinkage)
    labels = capped_linkage(dist, max_size)
    S = int(labels.max()) + 1
    Mz = (stats.means - stats.mu0) @ stats.whitener(shrinkage).T
    centred = Mz - Mz.mean(axis=0, keepdims=True)
    proj = np.zeros((len(names), 2), np.float32)
    if len(names) >= 3:  # first two principal components (randomised: the layout is only for the scatter plot)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, sv, _ = torch.svd_lowrank(torch.from_numpy(centred), q=min(6, *centred.shape), niter=3)
        proj = (u[:, :2] * sv[:2]).float().numpy()
    return Superclasses(
        names,
        labels,
        S,
        proj,
        METHOD_CONFUSION,
        f"pairwise LDA confusion (Mahalanobis distance of SKU means), superclasses of <= {max_size}",
        {"max_size": max_size, "shrinkage": shrinkage},
    )


__all__ = ["METHOD_CONFUSION", "capped_linkage", "confusion_superclasses", "mahalanobis_distances"]
