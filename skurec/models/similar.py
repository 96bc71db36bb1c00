"""Visually-similar SKU groups: which classes are near-duplicates of each other.

Used by the evaluation's ``similar`` variant (test images whose true class is in a group of >= 2 classes) and by
the confusion plot. Groups are the connected components of a graph over class prototypes with an edge between two
classes when they are *mutual* k-nearest neighbours (cosine) with cosine >= ``threshold``; given families
(e.g. the catalogue's ``group_id``) add edges between all their members.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._common import EmbeddingInputError, check_embeddings

SOLO_PREFIX = "solo:"


def nearest_neighbour_cosines(vectors: np.ndarray) -> np.ndarray:
    """For every prototype, the cosine to its nearest *other* prototype (C,)."""
    vectors = check_embeddings(vectors, name="vectors")
    if vectors.shape[0] < 2:
        return np.full(vectors.shape[0], np.nan, dtype=np.float32)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def similar_groups(
    vectors: np.ndarray,
    classes: Sequence[str],
    threshold: float | None = None,
    k: int = 3,
    quantile: float = 0.75,
    given_groups: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map every SKU to a group id; SKUs sharing a group id are visually similar.

    * ``threshold``: minimum cosine between two prototypes for a data-derived edge. ``None`` -> the ``quantile``
      of the nearest-neighbour cosine distribution of this catalogue (encoders differ a lot in their cosine
      scale, so a fixed number would not transfer between encoders).
    * ``k``: edges only join mutual k-nearest neighbours (keeps a dense cluster from chaining into one group).
    * ``given_groups``: optional SKU -> family id; all members of a family are joined (unknown SKUs ignored).

    Multi-class groups are named after their given families (``"famA+famB"``) or ``"sim-0001"``...; singletons get
    ``"solo:<sku>"``. Use :func:`similar_class_set` for the classes in groups of >= 2.
    """
    vectors = check_embeddings(vectors, name="vectors")
    classes = [str(c) for c in classes]
    C = len(classes)
    if vectors.shape[0] != C:
        raise EmbeddingInputError(f"{C} class names for {vectors.shape[0]} prototype vectors")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    if C >= 2:
        sims = vectors @ vectors.T
        np.fill_diagonal(sims, -np.inf)
        kk = min(k, C - 1)
        if threshold is None:
            threshold = float(np.quantile(sims.max(axis=1), quantile))
        knn = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        is_nn = np.zeros((C, C), dtype=bool)
        is_nn[np.repeat(np.arange(C), kk), knn.ravel()] = True
        edge = is_nn & is_nn.T & (sims >= threshold)
        r, c = np.nonzero(edge)
        rows.append(r)
        cols.append(c)
    index = {c: i for i, c in enumerate(classes)}
    family_of: dict[int, str] = {}
    if given_groups:
        members: dict[str, list[int]] = {}
        for sku, fam in given_groups.items():
            if str(sku) in index:
                members.setdefault(str(fam), []).append(index[str(sku)])
                family_of[index[str(sku)]] = str(fam)
        for idx in members.values():
            if len(idx) >= 2:
                rows.append(np.asarray(idx[:-1]))
                cols.append(np.asarray(idx[1:]))
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(r.size), (r, c)), shape=(C, C))
    _, comp = connected_components(graph, directed=False)
    return _name_components(comp, classes, family_of)


def _name_components(comp: np.ndarray, classes: list[str], family_of: Mapping[int, str]) -> dict[str, str]:
    sizes = np.bincount(comp)
    names: dict[int, str] = {}
    counter = 0
    for i in range(len(classes)):  # class order makes the numbering deterministic
        g = int(comp[i])
        if g in names:
            continue
        if sizes[g] < 2:
            names[g] = SOLO_PREFIX + classes[i]
            continue
        fams = sorted({family_of[j] for j in np.flatnonzero(comp == g).tolist() if j in family_of})
        if fams:
            names[g] = "+".join(fams)
        else:
            counter += 1
            names[g] = f"sim-{counter:04d}"
    return {classes[i]: names[int(comp[i])] for i in range(len(classes))}


def similar_class_set(groups: Mapping[str, str]) -> set[str]:
    """The SKUs that belong to a group of >= 2 classes (the evaluation's ``similar`` variant)."""
    counts: dict[str, int] = {}
    for g in groups.values():
        counts[g] = counts.get(g, 0) + 1
    return {sku for sku, g in groups.items() if counts[g] >= 2}


def group_members(groups: Mapping[str, str], min_size: int = 2) -> dict[str, list[str]]:
    """group id -> sorted SKU ids, for groups with at least ``min_size`` members."""
    out: dict[str, list[str]] = {}
    for sku, g in groups.items():
        out.setdefault(g, []).append(sku)
    return {g: sorted(m) for g, m in sorted(out.items()) if len(m) >= min_size}
