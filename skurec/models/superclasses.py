"""Data-derived superclasses: class prototypes -> UMAP (cosine) -> agglomerative clustering.

Why: the coarse head routes an image to a superclass of visually similar SKUs and the fine head only has to
separate SKUs inside it, so superclasses must group *confusable* classes. UMAP keeps the local neighbourhood
structure of the prototypes (cosine metric, as the embeddings are unit vectors) in a few dimensions where Ward
agglomerative clustering gives compact, balanced groups. For catalogues too small for UMAP (its spectral
initialisation needs ``n_components < n_classes - 1`` and a few neighbours) the prototypes are clustered directly
with cosine/average-linkage agglomerative clustering, and :attr:`Superclasses.method` / ``note`` say so.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_mutual_info_score

from ._common import EmbeddingInputError, check_embeddings

logger = logging.getLogger("skurec.models.superclasses")

METHOD_UMAP = "umap+agglomerative"
METHOD_DIRECT = "agglomerative-on-prototypes"
METHOD_IDENTITY = "one-class-per-superclass"

#: Below this many classes UMAP is not run (its neighbour graph and spectral init are meaningless that small).
MIN_UMAP_CLASSES = 8


@dataclass(frozen=True)
class Superclasses:
    """A partition of the catalogue's classes into superclasses.

    ``assignment[i]`` is the superclass (0..n_superclasses-1) of ``classes[i]``; labels are canonical (numbered by
    first appearance in class order) so equal partitions have equal arrays. ``projection_2d`` (C, 2) is the 2-D
    layout used by :func:`superclass_scatter_png`. ``method`` is one of ``umap+agglomerative``,
    ``agglomerative-on-prototypes`` (UMAP skipped, ``note`` says why) or ``one-class-per-superclass``.
    """

    classes: list[str]
    assignment: np.ndarray
    n_superclasses: int
    projection_2d: np.ndarray
    method: str
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def superclass_of_class(self) -> dict[str, int]:
        """SKU id -> superclass id."""
        return {c: int(s) for c, s in zip(self.classes, self.assignment)}

    def members(self) -> list[list[str]]:
        """The SKU ids of every superclass, indexed by superclass id."""
        out: list[list[str]] = [[] for _ in range(self.n_superclasses)]
        for c, s in zip(self.classes, self.assignment):
            out[int(s)].append(c)
        return out

    def sizes(self) -> np.ndarray:
        """Number of classes in each superclass."""
        return np.bincount(self.assignment, minlength=self.n_superclasses)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (the projection is small: 2 floats per class)."""
        return {
            "classes": list(self.classes),
            "assignment": self.assignment.astype(int).tolist(),
            "n_superclasses": self.n_superclasses,
            "projection_2d": np.round(self.projection_2d.astype(float), 6).tolist(),
            "method": self.method,
            "note": self.note,
            "params": self.params,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> Superclasses:
        """Inverse of :meth:`to_json_dict`, with consistency checks."""
        classes = [str(c) for c in data["classes"]]
        assignment = np.asarray(data["assignment"], dtype=np.int64)
        proj = np.asarray(data["projection_2d"], dtype=np.float32).reshape(-1, 2)
        S = int(data["n_superclasses"])
        if assignment.shape != (len(classes),) or proj.shape[0] != len(classes):
            raise ValueError("superclasses JSON: assignment / projection length differs from the class list")
        if len(classes) and (assignment.min() < 0 or assignment.max() >= S):
            raise ValueError(f"superclasses JSON: assignment outside 0..{S - 1}")
        return cls(
            classes, assignment, S, proj, str(data["method"]), str(data.get("note", "")), dict(data.get("params", {}))
        )


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster labels by order of first appearance (0, 1, 2...) so equal partitions compare equal."""
    mapping: dict[Any, int] = {}
    return np.asarray([mapping.setdefault(v, len(mapping)) for v in np.asarray(labels).tolist()], dtype=np.int64)


def _umap(
    vectors: np.ndarray, n_components: int, n_neighbors: int, min_dist: float, seed: int, n_epochs: int | None
) -> np.ndarray:
    import torch
    import umap  # local import: numba start-up cost only when superclasses are derived

    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        n_components=n_components,
        metric="cosine",
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,
        n_epochs=n_epochs,
        init="spectral",
    )
    threads = torch.get_num_threads()  # UMAP's thread handling resets torch's intra-op thread count: restore it
    try:
        with warnings.catch_warnings():
            # With random_state set UMAP is single-threaded by design; its notices about that are noise here.
            warnings.filterwarnings("ignore", message=".*n_jobs.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            emb = reducer.fit_transform(vectors)
    finally:
        torch.set_num_threads(threads)
    emb = np.asarray(emb, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise FloatingPointError("UMAP produced non-finite coordinates")
    return emb


def _pca_2d(vectors: np.ndarray) -> np.ndarray:
    """A 2-D layout for the scatter plot when UMAP is not used (first two principal components)."""
    centered = vectors - vectors.mean(axis=0, keepdims=True)
    if vectors.shape[0] < 2:
        return np.zeros((vectors.shape[0], 2), dtype=np.float32)
    u, s, _ = np.linalg.svd(centered.astype(np.float64), full_matrices=False)
    out = np.zeros((vectors.shape[0], 2), dtype=np.float32)
    r = min(2, s.size)
    out[:, :r] = (u[:, :r] * s[:r]).astype(np.float32)
    return out


def derive_superclasses(
    vectors: np.ndarray,
    classes: Sequence[str],
    n_superclasses: int = 100,
    seed: int = 0,
    n_neighbors: int = 15,
    n_components: int = 8,
    min_dist: float = 0.0,
    n_epochs: int | None = None,
    linkage: str = "ward",
) -> Superclasses:
    """Cluster class prototypes ``vectors`` (C, d) into ``min(n_superclasses, C)`` superclasses.

    UMAP (umap-learn, ``metric="cosine"``, ``random_state=seed``, single-threaded hence deterministic) reduces the
    prototypes to ``n_components`` dims (clamped to ``C - 2``; ``n_neighbors`` clamped to ``C - 1``), then sklearn
    ``AgglomerativeClustering(linkage)`` partitions them. A separate 2-D UMAP is kept for plotting when
    ``n_components != 2``. Same input + seed -> identical assignment. Falls back to clustering the prototypes
    directly (cosine, average linkage) when ``C < 8`` or UMAP fails, recording why in ``note``.
    """
    vectors = check_embeddings(vectors, name="vectors")
    classes = [str(c) for c in classes]
    C = vectors.shape[0]
    if len(classes) != C:
        raise EmbeddingInputError(f"{len(classes)} class names for {C} prototype vectors")
    if len(set(classes)) != C:
        raise EmbeddingInputError("class names must be unique")
    if n_superclasses < 1:
        raise ValueError(f"n_superclasses must be >= 1, got {n_superclasses}")
    k = min(n_superclasses, C)
    nn = max(2, min(n_neighbors, C - 1))
    nc = max(2, min(n_components, C - 2))
    params: dict[str, Any] = {
        "requested_n_superclasses": n_superclasses,
        "seed": seed,
        "n_neighbors": nn,
        "n_components": nc,
        "min_dist": min_dist,
        "linkage": linkage,
        "n_epochs": n_epochs,
    }
    note = ""
    if k == C:
        assignment = np.arange(C, dtype=np.int64)
        proj = _umap_or_pca_2d(vectors, nn, min_dist, seed, n_epochs)
        return Superclasses(
            classes,
            assignment,
            C,
            proj,
            METHOD_IDENTITY,
            f"n_superclasses ({n_superclasses}) >= number of classes ({C})",
            params,
        )
    embedding: np.ndarray | None = None
    if C < MIN_UMAP_CLASSES:
        note = f"UMAP skipped: only {C} classes (< {MIN_UMAP_CLASSES}); clustered the prototypes directly"
    else:
        try:
            embedding = _umap(vectors, nc, nn, min_dist, seed, n_epochs)
        except Exception as exc:  # noqa: BLE001 - any UMAP failure falls back, and we record it
            note = f"UMAP failed ({type(exc).__name__}: {exc}); clustered the prototypes directly"
            logger.warning(note)
    if embedding is not None:
        labels = AgglomerativeClustering(n_clusters=k, linkage=linkage).fit_predict(embedding)
        proj = embedding[:, :2] if nc == 2 else _umap(vectors, 2, nn, min_dist, seed, n_epochs)
        method = METHOD_UMAP
    else:
        labels = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(vectors)
        proj = _pca_2d(vectors)
        method = METHOD_DIRECT
    return Superclasses(classes, canonical_labels(labels), k, proj.astype(np.float32), method, note, params)


def _umap_or_pca_2d(vectors: np.ndarray, nn: int, min_dist: float, seed: int, n_epochs: int | None) -> np.ndarray:
    if vectors.shape[0] < MIN_UMAP_CLASSES:
        return _pca_2d(vectors)
    try:
        return _umap(vectors, 2, nn, min_dist, seed, n_epochs)
    except Exception:  # noqa: BLE001 - the projection is only for a plot
        return _pca_2d(vectors)


def superclass_group_ami(assignment: np.ndarray, classes: Sequence[str], group_of_class: Mapping[str, str]) -> float:
    """Adjusted mutual information between the superclasses and a given grouping (e.g. product families).

    Only classes present in ``group_of_class`` are compared; 1.0 = the superclasses reproduce the groups,
    ~0 = unrelated.
    """
    assignment = np.asarray(assignment)
    if assignment.shape != (len(classes),):
        raise ValueError(f"assignment has shape {assignment.shape}, expected ({len(classes)},)")
    keep = [i for i, c in enumerate(classes) if c in group_of_class]
    if len(keep) < 2:
        raise ValueError("fewer than 2 classes have a group in group_of_class; AMI is undefined")
    groups = [str(group_of_class[classes[i]]) for i in keep]
    return float(adjusted_mutual_info_score(groups, assignment[keep].tolist()))


def superclass_names(
    superclasses: Superclasses | Mapping[str, int],
    max_names: int = 3,
    display: Mapping[str, str] | None = None,
    max_chars: int = 28,
) -> list[str]:
    """A readable name for every superclass id (list index = id): its first ``max_names`` member SKUs in sorted
    order, then ``+N more`` (e.g. ``"cola-light / cola-zero / +3 more"``). ``superclasses``: a :class:`Superclasses`
    or an SKU -> superclass id mapping; ``display``: optional SKU -> display name (e.g. the catalogue's
    ``sku_name``). Each SKU name is cut to ``max_chars``; names are stable (they depend only on the members) and
    unique (a name shared after cutting gets ``#id``); a superclass without members is ``"superclass <id> (empty)"``.
    """
    if max_names < 1:
        raise ValueError(f"max_names must be >= 1, got {max_names}")
    if isinstance(superclasses, Superclasses):
        mapping, n = superclasses.superclass_of_class(), superclasses.n_superclasses
    else:
        mapping = {str(c): int(s) for c, s in superclasses.items()}
        n = max(mapping.values(), default=-1) + 1
    members: list[list[str]] = [[] for _ in range(n)]
    for c, s in mapping.items():
        members[s].append(c)
    display = display or {}

    def short(c: str) -> str:
        name = str(display.get(c) or c)
        return name if len(name) <= max_chars else name[: max_chars - 1] + "\u2026"

    names = []
    for s, skus in enumerate(members):
        shown = sorted(short(c) for c in skus)
        if not shown:
            names.append(f"superclass {s} (empty)")
            continue
        rest = len(shown) - max_names
        names.append(" / ".join(shown[:max_names] + ([f"+{rest} more"] if rest > 0 else [])))
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return [f"{name} #{s}" if seen[name] > 1 else name for s, name in enumerate(names)]


#: the scatter labels this many superclasses (the largest), numbered at their centroid and named in a side legend
SCATTER_LABELLED = 12


#: a legend line is cut to this many characters (the side panel's width at fontsize 7)
LEGEND_CHARS = 64


def _medoid(points: np.ndarray) -> np.ndarray:
    """The member point nearest the mean (a superclass spread over two islands gets its label on one of them)."""
    return points[int(np.argmin(np.linalg.norm(points - points.mean(axis=0), axis=1)))]


def _spread_labels(xy: np.ndarray, min_gap: float, iterations: int = 200) -> np.ndarray:
    """Label positions near ``xy`` (k, 2; axes scaled to 0..1) at least ``min_gap`` apart (pairwise repulsion;
    labels with room around them stay where they are, coincident ones are first nudged apart deterministically)."""
    pos = xy.astype(np.float64).copy()
    k = len(pos)
    if k < 2:
        return pos
    dup = (np.linalg.norm(pos[:, None] - pos[None], axis=2) + np.eye(k) < 1e-9).any(axis=1)
    angle = np.arange(k) * 2.399963  # the golden angle: distinct directions
    pos[dup] += 1e-3 * np.stack([np.cos(angle), np.sin(angle)], 1)[dup]
    for _ in range(iterations):
        diff = pos[:, None, :] - pos[None, :, :]
        dist = np.linalg.norm(diff, axis=2)
        np.fill_diagonal(dist, np.inf)
        close = dist < min_gap
        if not close.any():
            break
        d = np.where(close, np.maximum(dist, 1e-9), 1.0)
        push = np.where(
            close[:, :, None], diff / d[:, :, None] * (0.5 * (min_gap - np.where(close, dist, 0.0)))[:, :, None], 0.0
        )
        pos = np.clip(pos + 1.05 * push.sum(axis=1), 0.02, 0.98)
    return pos


def superclass_scatter_png(
    superclasses: Superclasses,
    title: str | None = None,
    dpi: int = 110,
    display: Mapping[str, str] | None = None,
    n_labelled: int = SCATTER_LABELLED,
) -> bytes:
    """PNG of the 2-D projection of the class prototypes, coloured by superclass (pure: returns the bytes).

    Only the ``n_labelled`` largest superclasses are labelled: a number at their medoid (spread apart so numbers
    never sit on each other, with a thin leader line to the centroid) and, in a side legend, the number, the
    superclass's colour and its name (:func:`superclass_names`, ``display``: SKU -> display name) - no per-SKU text
    that clumps on large catalogues."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 6.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.04, 0.56, 0.86))
    xy = superclasses.projection_2d.astype(np.float64)
    cmap = _cmap(superclasses.n_superclasses)
    ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(int(s)) for s in superclasses.assignment], s=12, linewidths=0)
    sizes = superclasses.sizes()
    top = sorted(range(superclasses.n_superclasses), key=lambda s: (-sizes[s], s))[: max(0, n_labelled)]
    top = [s for s in top if sizes[s] > 0]
    names = superclass_names(superclasses, max_names=2, display=display, max_chars=24)
    if top and len(xy):
        lo, span = xy.min(axis=0), np.maximum(np.ptp(xy, axis=0), 1e-9)
        cent = np.stack([_medoid(xy[superclasses.assignment == s]) for s in top])
        unit = (cent - lo) / span
        spread = _spread_labels(unit, min_gap=0.07)
        at = lo + spread * span
        for i, s in enumerate(top):
            if np.linalg.norm(spread[i] - unit[i]) > 0.01:
                ax.plot([cent[i, 0], at[i, 0]], [cent[i, 1], at[i, 1]], color="0.4", linewidth=0.6)
            ax.text(
                at[i, 0],
                at[i, 1],
                str(i + 1),
                fontsize=8,
                fontweight="bold",
                ha="center",
                va="center",
                bbox={"boxstyle": "circle,pad=0.2", "facecolor": "white", "edgecolor": cmap(int(s)), "linewidth": 1.5},
            )
        legend = fig.add_axes((0.60, 0.04, 0.39, 0.86))
        legend.set_axis_off()
        legend.set_xlim(0, 1)
        legend.set_ylim(0, 1)
        row = 1.0 / max(len(top) + 1, 14)
        legend.text(0.0, 1.0 - 0.5 * row, f"the {len(top)} largest superclasses (SKUs)", fontsize=8, va="center")
        for i, s in enumerate(top):
            yy = 1.0 - (i + 1.5) * row
            legend.scatter([0.03], [yy], s=40, color=cmap(int(s)))
            line = f"{i + 1}. {names[s]}"
            line = line if len(line) <= LEGEND_CHARS else line[: LEGEND_CHARS - 1] + "\u2026"
            legend.text(0.07, yy, f"{line} ({sizes[s]})", fontsize=7, va="center")
    ax.set_title(
        title
        or f"{len(superclasses.classes)} classes -> {superclasses.n_superclasses} superclasses ({superclasses.method})",
        fontsize=9,
    )
    ax.set_xticks([])
    ax.set_yticks([])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _cmap(n: int) -> Any:
    from matplotlib import colormaps

    base = colormaps["tab20"]
    return lambda i: base((i * 7) % 20 / 19.0) if n > 1 else base(0)
