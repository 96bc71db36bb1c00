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


def linkage_order(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``i < j`` of a (C, C) distance matrix in increasing distance (stable): the merge order of
    :func:`capped_linkage`, shared by every size cap."""
    iu, ju = np.triu_indices(dist.shape[0], 1)
    o = np.argsort(dist[iu, ju], kind="stable")
    return iu[o], ju[o]


def capped_linkage(dist: np.ndarray, max_size: int, order: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Single linkage in increasing ``dist`` order, never forming a group of more than ``max_size`` (labels (C,)).

    ``order``: :func:`linkage_order` of ``dist`` when already computed. The pairs are walked in blocks: a pair whose
    ends were already in one group, or whose groups were already too large together, at the start of its block is
    skipped without a Python step (groups only grow, so it would be rejected anyway); the walk stops once no two
    groups fit together under the cap.
    """
    C = dist.shape[0]
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    comp = np.arange(C)
    size = np.ones(C, dtype=np.int64)
    members: dict[int, list[int]] = {i: [i] for i in range(C)}
    if C >= 2 and max_size >= 2:
        ii, jj = order if order is not None else linkage_order(dist)
        pos, block = 0, 512
        while pos < len(ii):
            bi, bj = ii[pos : pos + block], jj[pos : pos + block]
            ci, cj = comp[bi], comp[bj]
            live = (ci != cj) & (size[ci] + size[cj] <= max_size)
            for i, j in zip(bi[live].tolist(), bj[live].tolist()):
                a, b = int(comp[i]), int(comp[j])
                if a != b and size[a] + size[b] <= max_size:
                    comp[members[b]] = a
                    members[a] += members.pop(b)
                    size[a] += size[b]
            pos += block
            block = min(2 * block, 1 << 16)
            open_sizes = np.sort(size[list(members)])
            if len(open_sizes) < 2 or open_sizes[0] + open_sizes[1] > max_size:
                break
    return canonical_labels(comp)


def _projection(stats: LDAStatistics, shrinkage: float) -> np.ndarray:
    """First two principal components of the SKU means in LDA space (randomised: only for the scatter plot)."""
    Mz = (stats.means - stats.mu0) @ stats.whitener(shrinkage).T
    centred = Mz - Mz.mean(axis=0, keepdims=True)
    proj = np.zeros((stats.n_classes, 2), np.float32)
    if stats.n_classes >= 3:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            u, sv, _ = torch.svd_lowrank(torch.from_numpy(centred), q=min(6, *centred.shape), niter=3)
        proj = (u[:, :2] * sv[:2]).float().numpy()
    return proj


def confusion_superclasses_by_cap(
    stats: LDAStatistics, classes: Sequence[str], max_sizes: Sequence[int], shrinkage: float
) -> dict[int, Superclasses]:
    """:func:`confusion_superclasses` for several size caps from one set of statistics (the distances, their
    order and the 2-D layout are computed once): ``{max_size: Superclasses}``."""
    names = [str(c) for c in classes]
    if stats.n_classes != len(names):
        raise EmbeddingInputError(f"stats cover {stats.n_classes} classes, the labels {len(names)}")
    dist = mahalanobis_distances(stats, shrinkage)
    order = linkage_order(dist)
    proj = _projection(stats, shrinkage)
    out = {}
    for cap in dict.fromkeys(int(c) for c in max_sizes):
        labels = capped_linkage(dist, cap, order)
        out[cap] = Superclasses(
            names,
            labels,
            int(labels.max()) + 1,
            proj,
            METHOD_CONFUSION,
            f"pairwise LDA confusion (Mahalanobis distance of SKU means), superclasses of <= {cap}",
            {"max_size": cap, "shrinkage": shrinkage},
        )
    return out


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
    return confusion_superclasses_by_cap(stats, names, (max_size,), shrinkage)[int(max_size)]


__all__ = [
    "METHOD_CONFUSION",
    "capped_linkage",
    "confusion_superclasses",
    "confusion_superclasses_by_cap",
    "linkage_order",
    "mahalanobis_distances",
]
