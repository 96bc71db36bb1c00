"""Class prototypes: the re-normalised mean embedding of every SKU (the basis of superclasses and baselines)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import EmbeddingInputError, check_xy, l2_normalize


@dataclass(frozen=True)
class Prototypes:
    """Per-class prototypes.

    ``classes`` sorted SKU ids (C,); ``vectors`` (C, d) float32 unit rows = normalised mean of the class's
    normalised train embeddings; ``counts`` (C,) int64 number of embeddings behind each prototype.
    """

    classes: list[str]
    vectors: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        C = len(self.classes)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != C or self.counts.shape != (C,):
            raise EmbeddingInputError(
                f"Prototypes: {C} classes but vectors {self.vectors.shape} and counts {self.counts.shape}"
            )

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def index(self) -> dict[str, int]:
        """SKU id -> row of ``vectors``."""
        return {c: i for i, c in enumerate(self.classes)}


def class_sums(X: np.ndarray, codes: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums (C, d) float64 and counts (C,) with one vectorised scatter-add (no Python loop per row)."""
    sums = np.zeros((n_classes, X.shape[1]), dtype=np.float64)
    _add_sorted(sums, X, codes)
    counts = np.bincount(codes, minlength=n_classes).astype(np.int64)
    return sums, counts


def _add_sorted(sums: np.ndarray, X: np.ndarray, codes: np.ndarray) -> None:
    """Segment sum: sort rows by class and use ``np.add.reduceat`` (vectorised, much faster than ``np.add.at``)."""
    order = np.argsort(codes, kind="stable")
    sc = codes[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]])
    sums[sc[starts]] += np.add.reduceat(X[order].astype(np.float64), starts, axis=0)


def class_prototypes(X: np.ndarray, y: np.ndarray) -> Prototypes:
    """Compute the prototype of every SKU in ``y`` from L2-normalised embeddings ``X`` (n, d)."""
    X, y = check_xy(X, y)
    classes, codes = np.unique(y, return_inverse=True)
    sums, counts = class_sums(X, codes, len(classes))
    vectors = l2_normalize(sums)
    if (np.linalg.norm(vectors, axis=1) < 0.5).any():
        raise EmbeddingInputError("a class's embeddings average to the zero vector; its prototype is undefined")
    return Prototypes(classes=[str(c) for c in classes], vectors=vectors, counts=counts)
