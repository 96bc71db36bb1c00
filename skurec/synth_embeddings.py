"""Synthetic embedding catalogues calibrated on real embeddings (for scale benchmarks only, never as ground truth).

Real data sets have a few dozen classes; the product needs thousands. To see how the classifiers behave at 100-2000
SKUs we fit a small generative model to real frozen embeddings ``(X, y, family)`` and sample bigger catalogues:

    x = normalize( mu + A (f_family + c_class) + A e ),   e ~ N(0, I),   A = Sw^(1/2)

* ``mu``: the common component of all embeddings (pooled CNN features are non-negative, so its norm is large);
* ``A``: square root of the pooled within-class covariance ``Sw`` (real top eigenvalues + mean of the rest, random
  eigenvectors; Ledoit-Wolf shrinkage as the estimate is from few images per class);
* ``f``, ``c``: family means and SKU-in-family offsets drawn in the *whitened* space ``Sw^(-1/2) x``, with the
  eigen-spectra of the real whitened family means / SKU offsets (``c`` only for SKUs in multi-SKU families, which
  makes near-duplicates). Drawing them in whitened space keeps the real relation between within-class variation
  and class separation: how many within-class standard deviations apart nearest classes are (the Mahalanobis
  margin) is what decides how well *any* classifier - nearest prototype, linear or metric - can do. A model that
  draws means and noise independently in raw space makes classes that a linear model separates trivially.

Spectra measured on few families / classes have low rank; they are extended with a fitted power law to
``SPECTRUM_RANK`` and rescaled to the measured trace (a sample covariance's trace is unbiased, its rank is not).
Directions are random orthonormal bases. Whitened spectra estimated from ~30 images per class are inflated by the
noise of the class means, so :func:`match_calibration` then sets two scale knobs (``family_scale``,
``class_scale``) so that a catalogue generated with the real family sizes and images per class is exactly as
confusable as the real one: same split-half nearest-prototype accuracy over all classes and among near-duplicates
(:func:`split_half_accuracy`, an i.i.d. measure; the real val/test splits of Grocery Store are other capture
sessions, i.e. shifted). It records raw statistics (common-component norm, within-class variance, nearest-class-mean
cosines, nearest-prototype val accuracy) of that catalogue next to the real ones as checks. The fit serialises to
JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .models._common import check_xy, l2_normalize

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SPECTRUM_RANK = 512  # whitened family / SKU-offset spectra are extended to this many dimensions


@dataclass
class EmbeddingCalibration:
    """Fitted statistics of a real embedding set + the generator's knobs (see the module docstring).

    ``within_spectrum`` / ``within_tail``: top eigenvalues / mean of the other eigenvalues of the shrunk pooled
    within-class covariance. ``family_spectrum`` / ``class_spectrum``: eigenvalues of the covariance of the real
    family means / SKU-in-family offsets in the whitened space. ``maha_margin_*`` / ``nn_cosine_*``: quantiles
    (``quantiles``) of the real nearest-class Mahalanobis margins / raw nearest-class-mean cosines.
    """

    dim: int
    source: str
    n_images: int
    n_classes: int
    n_families: int
    mean_sq_norm: float
    family_spectrum: list[float]
    class_spectrum: list[float]
    within_spectrum: list[float]
    within_tail: float
    shrinkage: float = 0.0
    nn_cosine_all: list[float] = field(default_factory=list)
    nn_cosine_within_family: list[float] = field(default_factory=list)
    maha_margin_all: list[float] = field(default_factory=list)
    maha_margin_within_family: list[float] = field(default_factory=list)
    split_half_top1: float | None = None
    split_half_top1_within_family: float | None = None
    family_sizes: list[int] = field(default_factory=list)
    images_per_class: int = 30
    real_proto_val_top1: float | None = None
    quantiles: list[float] = field(default_factory=lambda: list(QUANTILES))
    family_scale: float = 1.0
    class_scale: float = 1.0
    matched: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EmbeddingCalibration:
        data = json.loads(text)
        required = ("dim", "mean_sq_norm", "family_spectrum", "class_spectrum", "within_spectrum", "within_tail")
        missing = [f for f in required if f not in data]
        if missing:
            raise ValueError(f"calibration JSON lacks fields {missing}")
        defaults = {"source": "", "n_images": 0, "n_classes": 0, "n_families": 0}
        return cls(**{**defaults, **{k: v for k, v in data.items() if k in cls.__dataclass_fields__}})


def _nn_cos(means: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Cosine of each normalised class mean to its nearest other mean (restricted to its group if given)."""
    P = l2_normalize(means)
    S = P @ P.T
    np.fill_diagonal(S, -np.inf)
    if groups is not None:
        S = np.where(groups[:, None] == groups[None, :], S, -np.inf)
    best = S.max(axis=1)
    return best[np.isfinite(best)]


def _q(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.quantile(values, QUANTILES)] if values.size else []


def _class_means(X: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    means = np.zeros((n, X.shape[1]))
    np.add.at(means, codes, X.astype(np.float64))
    return means / np.maximum(np.bincount(codes, minlength=n), 1)[:, None]


def _within_eig(X: np.ndarray, codes: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Eigenvalues (descending), eigenvectors and Ledoit-Wolf shrinkage of the pooled within-class covariance."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    Z = X.astype(np.float64) - means[codes]
    shrink = float(ledoit_wolf_shrinkage(Z, assume_centered=True))
    dof = max(1, Z.shape[0] - means.shape[0])
    Sw = Z.T @ Z / dof
    Sw = (1 - shrink) * Sw + shrink * np.trace(Sw) / Sw.shape[0] * np.eye(Sw.shape[0])
    evals, vecs = np.linalg.eigh(Sw)
    return evals[::-1], vecs[:, ::-1], shrink


def _whiten(means: np.ndarray, evals: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    return (means @ vecs) / np.sqrt(evals)


def _nn_dist(P: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance from each row to its nearest other row (within its group if given)."""
    sq = (P ** 2).sum(axis=1)
    D = sq[:, None] + sq[None, :] - 2 * P @ P.T
    np.fill_diagonal(D, np.inf)
    if groups is not None:
        D = np.where(groups[:, None] == groups[None, :], D, np.inf)
    best = D.min(axis=1)
    return np.sqrt(np.maximum(best[np.isfinite(best)], 0.0))


def maha_margins(X: np.ndarray, codes: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Per class, half the Mahalanobis distance (shrunk pooled within-class covariance) to the nearest other class
    mean, within its group of classes if ``groups`` is given: how many within-class standard deviations separate a
    class from its most confusable neighbour (error of a Gaussian shared-covariance classifier ~ Phi(-margin))."""
    C = int(codes.max()) + 1
    means = _class_means(X, codes, C)
    evals, vecs, _ = _within_eig(X, codes, means)
    return _nn_dist(_whiten(means, evals, vecs), groups) / 2


def split_half_accuracy(X: np.ndarray, codes: np.ndarray, groups: np.ndarray | None = None, seed: int = 0
                        ) -> float:
    """Nearest-prototype (cosine) top-1 with prototypes from a random half of each class's images and the other
    half as queries; with ``groups`` (per class) only classes of the query's own group compete and classes alone
    in their group are skipped (= accuracy *among near-duplicates*). An i.i.d. measure of how confusable classes are.
    """
    rng = np.random.default_rng(seed)
    C = int(codes.max()) + 1
    half = np.zeros(codes.size, dtype=bool)
    for c in range(C):  # one random half per class (classes with 1 image keep it as prototype)
        idx = np.flatnonzero(codes == c)
        half[rng.permutation(idx)[: max(1, idx.size // 2)]] = True
    protos = l2_normalize(_class_means(X[half], codes[half], C))
    q = ~half
    sims = X[q] @ protos.T
    if groups is not None:
        sims = np.where(groups[None, :] == groups[codes[q]][:, None], sims, -np.inf)
        keep = np.bincount(groups)[groups[codes[q]]] >= 2
        return float(np.mean(sims[keep].argmax(axis=1) == codes[q][keep])) if keep.any() else float("nan")
    return float(np.mean(sims.argmax(axis=1) == codes[q]))


def fit_calibration(X: np.ndarray, y: Sequence[str] | np.ndarray, family: Sequence[str] | np.ndarray,
                    n_spectrum: int = 128, source: str = "", X_val: np.ndarray | None = None,
                    y_val: np.ndarray | None = None) -> EmbeddingCalibration:
    """Fit the generator's statistics from real L2-normalised embeddings, SKU labels and family labels.

    With a validation set, the real nearest-prototype top-1 on it is recorded (``real_proto_val_top1``) to compare
    with the generator's. Knobs keep their defaults (1.0): see :func:`match_calibration`.
    """
    X, y = check_xy(X, y)
    family = np.asarray(family).astype(str)
    if family.shape != y.shape:
        raise ValueError(f"family has shape {family.shape}, y has {y.shape}")
    classes, codes = np.unique(y, return_inverse=True)
    fam_of_class: dict[str, str] = {}
    for c, f in zip(y.tolist(), family.tolist()):
        if fam_of_class.setdefault(c, f) != f:
            raise ValueError(f"class {c!r} appears in two families ({fam_of_class[c]!r}, {f!r})")
    C = len(classes)
    if C < 3:
        raise ValueError("need at least 3 classes to fit a calibration")
    counts = np.bincount(codes, minlength=C)
    means = _class_means(X, codes, C)
    _, fcode = np.unique([fam_of_class[c] for c in classes], return_inverse=True)
    fam_sizes = np.bincount(fcode)
    multi = fam_sizes[fcode] >= 2
    mu = X.astype(np.float64).mean(axis=0)
    evals, vecs, shrink = _within_eig(X, codes, means)
    W = _whiten(means - mu, evals, vecs)
    Wf = _class_means(W, fcode, len(fam_sizes))
    proto_val = None
    if X_val is not None and y_val is not None:
        from .models.flat import FlatPrototype

        proto = FlatPrototype(list(classes), l2_normalize(means))
        proto_val = float(np.mean(proto.predict_topk(X_val, 1).labels[:, 0] == np.asarray(y_val).astype(str)))
    return EmbeddingCalibration(
        dim=int(X.shape[1]), source=source, n_images=int(X.shape[0]), n_classes=C, n_families=len(fam_sizes),
        mean_sq_norm=float(mu @ mu),
        family_spectrum=_eigvals(Wf - Wf.mean(axis=0), n_spectrum).tolist(),
        class_spectrum=_eigvals((W - Wf[fcode])[multi], n_spectrum).tolist(),
        within_spectrum=evals[:n_spectrum].tolist(), within_tail=float(evals[n_spectrum:].mean()),
        shrinkage=shrink,
        nn_cosine_all=_q(_nn_cos(means)), nn_cosine_within_family=_q(_nn_cos(means[multi], fcode[multi])),
        maha_margin_all=_q(_nn_dist(W) / 2), maha_margin_within_family=_q(_nn_dist(W[multi], fcode[multi]) / 2),
        split_half_top1=split_half_accuracy(X, codes),
        split_half_top1_within_family=split_half_accuracy(X, codes, fcode),
        family_sizes=sorted(fam_sizes.astype(int).tolist(), reverse=True),
        images_per_class=int(np.median(counts)), real_proto_val_top1=proto_val,
        notes=f"{int(multi.sum())} of {C} classes are in families of >= 2",
    )


def _eigvals(A: np.ndarray, top: int) -> np.ndarray:
    """Eigenvalues (descending, > 0) of the covariance of the rows of ``A`` (already centred), via SVD."""
    if A.shape[0] == 0:
        return np.zeros(0)
    s = np.linalg.svd(A.astype(np.float64), compute_uv=False)
    ev = s ** 2 / max(1, A.shape[0])
    return ev[ev > 1e-12][:top]


def default_calibration(dim: int = 1280) -> EmbeddingCalibration:
    """A hand-set fallback for when no real embeddings are at hand (shape of an EfficientNet-Lite2 fit on the
    Grocery Store data set, rounded; not fitted - prefer :func:`calibration_from_npz`)."""
    def power(total: float, n: int, alpha: float) -> list[float]:
        v = np.arange(1, n + 1, dtype=np.float64) ** -alpha
        return (v / v.sum() * total).tolist()

    return EmbeddingCalibration(
        dim=dim, source="default (hand-set, not fitted)", n_images=0, n_classes=0, n_families=0,
        mean_sq_norm=0.43, family_spectrum=power(400.0, 42, 0.9), class_spectrum=power(120.0, 39, 0.7),
        within_spectrum=power(0.19, 128, 0.6), within_tail=0.08 / max(1, dim - 128), shrinkage=0.1,
        family_sizes=[1] * 40 + [2, 3, 4, 5, 6, 8, 10, 3, 2], images_per_class=33,
        notes="fallback: hand-set, not fitted")


def _extend(spectrum: Sequence[float], rank: int) -> np.ndarray:
    """Extend a measured eigen-spectrum to ``rank`` values with a fitted power law, keeping its trace."""
    s = np.asarray([v for v in spectrum if v > 0], dtype=np.float64)
    if s.size == 0:
        return np.zeros(rank)
    total = s.sum()
    if s.size >= rank:
        return s[:rank] * total / s[:rank].sum()
    alpha = 1.0
    if s.size >= 3:
        m = max(3, s.size * 3 // 4)  # fit on the head; the last sample eigenvalues are biased low
        alpha = float(np.clip(-np.polyfit(np.log(np.arange(1, m + 1)), np.log(s[:m]), 1)[0], 0.3, 3.0))
    out = s[0] * np.arange(1, rank + 1, dtype=np.float64) ** -alpha
    out[: s.size] = s
    return out * total / out.sum()


def _basis(rng: np.random.Generator, d: int, r: int) -> np.ndarray:
    """A random (d, r) matrix with orthonormal columns."""
    q, _ = np.linalg.qr(rng.standard_normal((d, min(r, d))))
    return q.astype(np.float32)


@dataclass
class _Model:
    """Directions and spectra of one generator instance."""

    mu: np.ndarray
    Uf: np.ndarray
    Uc: np.ndarray
    Vw: np.ndarray
    rho_f: np.ndarray
    rho_c: np.ndarray
    lam_w: np.ndarray
    tail: float

    def sqrt_cov(self, V: np.ndarray) -> np.ndarray:
        """``A v`` for rows ``v`` (A = within-class covariance square root: top eigen-directions + isotropic rest)."""
        coef = V @ self.Vw
        return (coef * np.sqrt(self.lam_w)) @ self.Vw.T + math.sqrt(self.tail) * (V - coef @ self.Vw.T)


def _draw_bases(dim: int, n_within: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    r = min(SPECTRUM_RANK, dim)
    return _basis(rng, dim, 1)[:, 0], _basis(rng, dim, r), _basis(rng, dim, r), _basis(rng, dim, n_within)


def _draw_model(cal: EmbeddingCalibration, rng: np.random.Generator,
                bases: tuple[np.ndarray, ...] | None = None) -> _Model:
    """Spectra from ``cal``; directions from ``bases`` (drawn from ``rng`` when not given)."""
    d = cal.dim
    r = min(SPECTRUM_RANK, d)
    lam_w = np.asarray(cal.within_spectrum[:d], dtype=np.float64)
    mu, Uf, Uc, Vw = bases if bases is not None else _draw_bases(d, lam_w.size, rng)
    return _Model(mu * math.sqrt(cal.mean_sq_norm), Uf, Uc, Vw,
                  _extend(cal.family_spectrum, r) * cal.family_scale ** 2,
                  _extend(cal.class_spectrum, r) * cal.class_scale ** 2, lam_w, cal.within_tail)


def _means_for(model: _Model, rng: np.random.Generator, fam: np.ndarray) -> np.ndarray:
    """Raw class means ``mu + A (f + c)``; ``c`` (SKU-in-family offset) only for SKUs in multi-SKU families."""
    n_fam = int(fam.max()) + 1
    f = (rng.standard_normal((n_fam, model.rho_f.size)) * np.sqrt(model.rho_f)) @ model.Uf.T
    c = (rng.standard_normal((fam.size, model.rho_c.size)) * np.sqrt(model.rho_c)) @ model.Uc.T
    c[np.bincount(fam, minlength=n_fam)[fam] < 2] = 0.0
    return (model.mu[None, :] + model.sqrt_cov(f[fam] + c)).astype(np.float32)


def _sample_rows(model: _Model, rng: np.random.Generator, class_means: np.ndarray, counts: np.ndarray,
                 chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """``counts[c]`` unit embeddings of every class ``c``: class mean + ``A e``, normalised."""
    codes = np.repeat(np.arange(class_means.shape[0]), counts)
    d = class_means.shape[1]
    out = np.empty((codes.size, d), dtype=np.float32)
    sd_w = np.sqrt(model.lam_w).astype(np.float32)
    sd_tail = np.float32(math.sqrt(model.tail))
    for s in range(0, codes.size, chunk):
        c = codes[s:s + chunk]
        g = rng.standard_normal((c.size, sd_w.size), dtype=np.float32) * sd_w
        out[s:s + chunk] = class_means[c] + g @ model.Vw.T + rng.standard_normal((c.size, d), dtype=np.float32) * sd_tail
    return l2_normalize(out), codes


@dataclass
class SyntheticCatalogue:
    """A generated catalogue: train/val/test splits plus the family of every SKU (``solo*`` families = size 1)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    family_of_class: dict[str, str]
    images_per_class: dict[str, int]

    @property
    def n_classes(self) -> int:
        return len(self.family_of_class)

    def near_duplicate_classes(self) -> set[str]:
        """SKUs in a family of >= 2 SKUs."""
        sizes: dict[str, int] = {}
        for f in self.family_of_class.values():
            sizes[f] = sizes.get(f, 0) + 1
        return {c for c, f in self.family_of_class.items() if sizes[f] >= 2}


def _families(rng: np.random.Generator, n_classes: int, dup_fraction: float, size_range: tuple[int, int]
              ) -> np.ndarray:
    """Family id of every class: ~``dup_fraction`` of classes in families of ``size_range`` sizes, rest alone."""
    fam = np.empty(n_classes, dtype=np.int64)
    target = int(round(dup_fraction * n_classes))
    i, f = 0, 0
    while i < target:
        size = min(int(rng.integers(size_range[0], size_range[1] + 1)), n_classes - i)
        fam[i:i + size] = f
        i, f = i + size, f + 1
    while i < n_classes:
        fam[i] = f
        i, f = i + 1, f + 1
    return fam[rng.permutation(n_classes)]


def generate_catalogue(cal: EmbeddingCalibration, n_classes: int, seed: int = 0, dup_fraction: float = 1 / 3,
                       family_size: tuple[int, int] = (2, 5), min_images: int = 50, pareto_a: float = 2.0,
                       tail_scale: float = 15.0, max_images: int = 300, val_fraction: float = 0.1,
                       test_per_class: int = 10) -> SyntheticCatalogue:
    """Sample a catalogue of ``n_classes`` SKUs from the calibrated model (deterministic for a seed).

    About ``dup_fraction`` of SKUs are in near-duplicate families of ``family_size`` SKUs. Train-pool images per
    class are long-tailed: ``min_images + Pareto(pareto_a) * tail_scale`` capped at ``max_images`` (all >=
    ``min_images``, like an audited catalogue), split ``1 - val_fraction`` / ``val_fraction`` into train / val;
    ``test_per_class`` more images per class form the held-out test set.
    """
    if n_classes < 2:
        raise ValueError("need at least 2 classes")
    if min_images < 2:
        raise ValueError("min_images must be >= 2 (each class needs a train and a validation image)")
    rng = np.random.default_rng(seed)
    fam = _families(rng, n_classes, dup_fraction, family_size)
    model = _draw_model(cal, rng)
    class_means = _means_for(model, rng, fam)
    pool = np.minimum(max_images, min_images + np.floor(rng.pareto(pareto_a, n_classes) * tail_scale)).astype(int)
    n_val = np.clip(np.round(pool * val_fraction).astype(int), 1, pool - 1)
    classes = np.asarray([f"sku{i:05d}" for i in range(n_classes)])
    X_tr, c_tr = _sample_rows(model, rng, class_means, pool - n_val)
    X_va, c_va = _sample_rows(model, rng, class_means, n_val)
    X_te, c_te = _sample_rows(model, rng, class_means, np.full(n_classes, test_per_class))
    sizes = np.bincount(fam)
    fam_names = {c: (f"fam{f:05d}" if sizes[f] >= 2 else f"solo{f:05d}") for c, f in zip(classes.tolist(), fam)}
    return SyntheticCatalogue(X_tr, classes[c_tr], X_va, classes[c_va], X_te, classes[c_te], fam_names,
                              {c: int(p) for c, p in zip(classes.tolist(), pool)})


def _real_shaped_stats(cal: EmbeddingCalibration, seed: int, bases: tuple[np.ndarray, ...],
                       with_checks: bool = False) -> dict[str, float]:
    """Statistics of a catalogue with the real family sizes and images per class (what matching compares)."""
    rng = np.random.default_rng(seed)
    fam = np.repeat(np.arange(len(cal.family_sizes)), cal.family_sizes)
    model = _draw_model(cal, rng, bases)
    means = _means_for(model, rng, fam)
    X, codes = _sample_rows(model, rng, means, np.full(fam.size, max(2, cal.images_per_class)))
    out = {"split_half_top1": split_half_accuracy(X, codes, seed=seed),
           "split_half_top1_within_family": split_half_accuracy(X, codes, fam, seed=seed)}
    if with_checks:
        emp = _class_means(X, codes, fam.size)
        multi = np.bincount(fam)[fam] >= 2
        mu = X.astype(np.float64).mean(axis=0)
        out["mean_sq_norm"] = float(mu @ mu)
        out["within_var"] = float(((X - emp[codes]) ** 2).sum(axis=1).mean())
        out["nn_cosine_all_median"] = float(np.median(_nn_cos(emp)))
        out["nn_cosine_family_median"] = float(np.median(_nn_cos(emp[multi], fam[multi])))
        Xv, cv = _sample_rows(model, rng, means, np.full(fam.size, 10))
        out["proto_val_top1"] = float(np.mean((Xv @ l2_normalize(emp).T).argmax(axis=1) == cv))
    return out


def match_calibration(cal: EmbeddingCalibration, seed: int = 0, iters: int = 8) -> EmbeddingCalibration:
    """Set ``class_scale`` / ``family_scale`` so a real-shaped generated catalogue (real family sizes and images
    per class) is as confusable as the real one: same split-half nearest-prototype top-1 among near-duplicates
    (``class_scale``) and over all classes (``family_scale``); geometric bisection, two rounds (they interact
    mildly). ``matched`` records the reached values, the targets, and as checks (not tuned on) the raw
    statistics - common-component norm, within-class variance, nearest-class-mean cosines - next to the real ones.
    """
    if not cal.family_sizes or cal.split_half_top1 is None or cal.split_half_top1_within_family is None:
        raise ValueError("calibration has no fitted split-half accuracies (fit it from real data first)")
    target_all, target_fam = cal.split_half_top1, cal.split_half_top1_within_family
    out = EmbeddingCalibration(**asdict(cal))
    bases = _draw_bases(cal.dim, min(cal.dim, len(cal.within_spectrum)), np.random.default_rng(seed + 1))

    def bisect(knob: str, key: str, target: float, lo: float = 0.02, hi: float = 5.0) -> None:
        for _ in range(iters):  # accuracy grows with either scale
            setattr(out, knob, math.sqrt(lo * hi))
            above = _real_shaped_stats(out, seed, bases)[key] > target
            lo, hi = (lo, getattr(out, knob)) if above else (getattr(out, knob), hi)
        setattr(out, knob, float(math.sqrt(lo * hi)))

    for _ in range(2):
        if not math.isnan(target_fam):
            bisect("class_scale", "split_half_top1_within_family", target_fam)
        bisect("family_scale", "split_half_top1", target_all)
    got = _real_shaped_stats(out, seed, bases, with_checks=True)
    mid = QUANTILES.index(0.5)
    out.matched = {**{k: round(v, 4) for k, v in got.items()},
                   "target_split_half_top1": round(target_all, 4),
                   "target_split_half_top1_within_family": round(target_fam, 4),
                   "real_mean_sq_norm": round(cal.mean_sq_norm, 4),
                   "real_within_var": round(float(sum(cal.within_spectrum) + cal.within_tail * (
                       cal.dim - len(cal.within_spectrum))), 4),
                   "real_nn_cosine_all_median": round(cal.nn_cosine_all[mid], 4) if cal.nn_cosine_all else None,
                   "real_nn_cosine_family_median": (round(cal.nn_cosine_within_family[mid], 4)
                                                    if cal.nn_cosine_within_family else None),
                   "real_proto_val_top1": cal.real_proto_val_top1}
    return out


def catalogue_stats(X: np.ndarray, y: np.ndarray, family_of_class: Mapping[str, str]) -> dict[str, Any]:
    """The statistics the calibration matches, measured on any (real or generated) labelled embeddings."""
    X, y = check_xy(X, y)
    classes, codes = np.unique(y, return_inverse=True)
    means = _class_means(X, codes, len(classes))
    _, fcode = np.unique(np.asarray([family_of_class[c] for c in classes]), return_inverse=True)
    multi = np.bincount(fcode)[fcode] >= 2
    mu = X.astype(np.float64).mean(axis=0)
    return {"mean_sq_norm": float(mu @ mu), "within_var": float(((X - means[codes]) ** 2).sum(axis=1).mean()),
            "nn_cosine_all": _q(_nn_cos(means)),
            "nn_cosine_within_family": _q(_nn_cos(means[multi], fcode[multi])),
            "maha_margin_all": _q(maha_margins(X, codes)),
            "maha_margin_within_family": _q(maha_margins(X, codes, fcode)),
            "n_classes": int(len(classes)),
            "frac_in_families": float(multi.mean())}


def load_real_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a real-embedding ``.npz`` (keys ``X``, ``fine``, ``coarse``, optional ``split``) with clear errors."""
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("X", "fine", "coarse") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (has {z.files})")
        out = {k: z[k] for k in z.files}
    out["X"] = l2_normalize(out["X"])
    for k in ("fine", "coarse", "split"):
        if k in out:
            out[k] = out[k].astype(str)
    return out


def calibration_from_npz(path: str | Path, n_spectrum: int = 128, match: bool = True) -> EmbeddingCalibration:
    """Fit on a real ``.npz``'s train split (all rows if it has no split; its val split checks difficulty), then
    :func:`match_calibration` unless ``match`` is False."""
    data = load_real_npz(path)
    split = data.get("split")
    keep = split == "train" if split is not None else np.ones(len(data["X"]), bool)
    val = split == "val" if split is not None else np.zeros(len(data["X"]), bool)
    cal = fit_calibration(data["X"][keep], data["fine"][keep], data["coarse"][keep], n_spectrum,
                          source=f"real:{Path(path).name}",
                          X_val=data["X"][val] if val.any() else None, y_val=data["fine"][val] if val.any() else None)
    return match_calibration(cal) if match else cal
