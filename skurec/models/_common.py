"""Shared helpers of the classifier core: input validation, devices, seeding and the prediction record.

Every public training / prediction function of :mod:`skurec.models` validates its inputs here, so a bad array
fails in one place with one clear message (what is wrong and how to fix it) instead of deep inside torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

logger = logging.getLogger("skurec.models")

#: Rows whose L2 norm differs from 1 by more than this are rejected as "not normalised".
NORM_TOLERANCE = 1e-3

#: Progress callback signature used by all trainers: ``progress(stage, step, total, metrics)``.
ProgressFn = Callable[[str, int, int, Mapping[str, float]], None]


class EmbeddingInputError(ValueError):
    """Embeddings or labels handed to the classifier core are malformed (shape, dtype, NaN, normalisation)."""


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return (X / np.maximum(norms, eps)).astype(np.float32, copy=False)


def check_embeddings(X: Any, name: str = "X", dim: int | None = None) -> np.ndarray:
    """Validate an (n, d) array of L2-normalised embeddings and return it as contiguous float32.

    Raises :class:`EmbeddingInputError` naming the problem: wrong rank, empty, wrong width, non-finite values
    or rows that are not unit length (remedy: ``skurec.models.l2_normalize``).
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise EmbeddingInputError(f"{name} must be a 2-D array (n, d) of embeddings, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EmbeddingInputError(f"{name} is empty (shape {arr.shape}); need at least one row and one column")
    if not np.issubdtype(arr.dtype, np.floating):
        raise EmbeddingInputError(f"{name} must be a float array, got dtype {arr.dtype}")
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingInputError(
            f"{name} has embedding width {arr.shape[1]} but the model expects {dim}; "
            "were these embeddings produced by a different encoder?"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:5].tolist()
        raise EmbeddingInputError(f"{name} contains NaN/inf values in rows {bad} ({int((~finite).sum())} rows)")
    norms = np.linalg.norm(arr, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise EmbeddingInputError(
            f"{name} rows must be L2-normalised: {int(off.sum())} rows are not (row {i} has norm {norms[i]:.4f}); "
            "normalise them with skurec.models.l2_normalize(X)"
        )
    return arr


def check_labels(y: Any, n: int, name: str = "y") -> np.ndarray:
    """Validate a length-``n`` vector of SKU ids and return it as a numpy array of ``str``."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise EmbeddingInputError(f"{name} must be a 1-D array of SKU ids, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise EmbeddingInputError(f"{name} has {arr.shape[0]} labels but there are {n} embeddings; they must match")
    arr = arr.astype(str)
    if (arr == "").any():
        raise EmbeddingInputError(f"{name} contains empty SKU ids (rows {np.flatnonzero(arr == '')[:5].tolist()})")
    return arr


def check_xy(X: Any, y: Any, dim: int | None = None, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of embeddings and labels (see :func:`check_embeddings` and :func:`check_labels`)."""
    Xc = check_embeddings(X, name=f"{prefix}X", dim=dim)
    return Xc, check_labels(y, Xc.shape[0], name=f"{prefix}y")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a block with one torch intra-op thread, restoring the caller's count afterwards.

    For LAPACK factorisations and runs of small operations: they are sequences of many short parallel regions, and on
    a busy machine every region waits for its slowest thread. Measured on 2 shared cores (``benchmarks/
    hierarchy_cost.py``): the specialists' batched QR/SVD 10-20x and a 2560-d ``eigh`` 17x (40 s vs 2.4 s) slower with
    2 threads than with 1, the validation searches 3-5x. Process-wide, like ``torch.set_num_threads`` itself: for
    training code, not for concurrent serving threads.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def report(progress: ProgressFn | None, stage: str, step: int, total: int, metrics: Mapping[str, float]) -> None:
    """Forward training progress to the callback (if any) and to the ``skurec.models`` logger."""
    if progress is not None:
        progress(stage, step, total, dict(metrics))
    if logger.isEnabledFor(logging.INFO):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        logger.info("%s %d/%d %s", stage, step, total, shown)


def encode_labels(y: np.ndarray, classes: Sequence[str], name: str = "y") -> np.ndarray:
    """Map SKU ids to indices of ``classes``; raise if a label is not a known class."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(y), dtype=np.int64)
    unknown: set[str] = set()
    for i, lab in enumerate(y.tolist()):
        j = index.get(lab)
        if j is None:
            unknown.add(lab)
            j = -1
        out[i] = j
    if unknown:
        shown = sorted(unknown)[:5]
        raise EmbeddingInputError(f"{name} contains {len(unknown)} SKU ids the model does not know, e.g. {shown}")
    return out


def topk_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last dim with a deterministic tie order (lower index first) unlike ``torch.topk``.

    Exactly the first ``k`` of a stable descending sort. For ``k`` well below the width, without sorting every
    row: ``torch.topk`` finds the k-th value; where exactly ``k`` entries reach it (no tie across the cut) those
    entries, in index order, are stably sorted; other rows (ties at the cut, NaN) take the full stable sort.
    """
    C = scores.shape[-1]
    if scores.ndim != 2 or k < 1 or k * 8 > C or scores.shape[0] == 0:
        vals, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
        return vals[..., :k], idx[..., :k]
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    reach = scores >= kth
    clean = reach.sum(dim=1) == k
    idx = torch.empty((scores.shape[0], k), dtype=torch.long)
    if bool(clean.any()):
        rows = clean.nonzero()[:, 0]
        cols = reach[rows].nonzero()[:, 1].reshape(-1, k)  # row-major: each row's k entries in index order
        _, by_value = torch.sort(scores[rows].gather(1, cols), dim=1, descending=True, stable=True)
        idx[rows] = cols.gather(1, by_value)
    if not bool(clean.all()):
        rows = (~clean).nonzero()[:, 0]
        idx[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, idx), idx


@dataclass
class Predictions:
    """Top-k predictions of any classifier.

    ``labels`` (n, k) SKU ids (``""`` pads rows when fewer than k candidates exist, e.g. hard routing into a
    superclass with fewer than k classes); ``scores`` (n, k) float32, higher is better (probabilities for the
    softmax models, cosine similarities for :class:`FlatPrototype`); ``superclass`` (n,) int superclass of the top
    label (-1 for flat models); ``coarse_proba`` (n, S) superclass probabilities of hierarchical models.
    """

    labels: np.ndarray
    scores: np.ndarray
    superclass: np.ndarray | None = None
    coarse_proba: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def top1(self) -> np.ndarray:
        """The top-1 SKU id of every row."""
        return self.labels[:, 0]


class Classifier(Protocol):
    """What :func:`skurec.evaluation.evaluate` needs from a model."""

    classes: list[str]

    def predict_topk(self, X: np.ndarray, k: int = 3) -> Predictions: ...

    def to_files(self) -> dict[str, bytes]: ...


def labels_from_indices(idx: np.ndarray, valid: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Turn (n, k) class indices into SKU ids, writing ``""`` where ``valid`` is False."""
    names = np.asarray(list(classes) + [""], dtype=object)
    safe = np.where(valid, idx, len(classes))
    out = names[safe]
    return out.astype(str) if out.size else np.empty(idx.shape, dtype="<U1")


#: rows scored per batch at inference by every model (bounds memory; results do not depend on it)
INFER_ROWS = 8192


def batched_rows(n: int, batch: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in chunks of ``batch`` rows (bounded memory for big inference sets)."""
    for start in range(0, n, batch):
        yield slice(start, min(n, start + batch))


def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a flat metrics dict that ``json.dumps(allow_nan=False)`` accepts (numpy scalars -> Python, NaN/inf -> None)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def superclass_targets(y: np.ndarray, superclass_of_class: Mapping[str, int], name: str = "y") -> np.ndarray:
    """Map SKU ids to their superclass ids; clear error for SKUs without a superclass."""
    missing = sorted({s for s in np.unique(y).tolist() if s not in superclass_of_class})
    if missing:
        raise EmbeddingInputError(f"{name} has {len(missing)} SKUs without a superclass, e.g. {missing[:5]}")
    return np.asarray([superclass_of_class[s] for s in y.tolist()], dtype=np.int64)


def grouped_log_softmax(logits: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``log softmax`` of each row restricted to columns of the same group (n, C), vectorised over groups."""
    n = logits.shape[0]
    idx = groups.unsqueeze(0).expand(n, -1)
    gmax = torch.full((n, n_groups), float("-inf"), dtype=logits.dtype).scatter_reduce(
        1, idx, logits, reduce="amax", include_self=True
    )
    shifted = logits - gmax.gather(1, idx)
    z = torch.zeros((n, n_groups), dtype=logits.dtype).scatter_add_(1, idx, shifted.exp())
    return shifted - torch.log(z.gather(1, idx))


@dataclass(frozen=True)
class GroupSlots:
    """The columns of every group, padded to the largest group (the dense layout of grouped reductions).

    ``index`` (G, K) long: the column ids of group ``g`` in ascending order, then ``pad`` (= the number of columns);
    ``size`` (G,) members per group. A grouped reduction over these slots touches ``G x K`` entries per row, so on
    groups of bounded size (confusion superclasses) it costs about one pass over the columns.
    """

    index: torch.Tensor
    size: torch.Tensor
    pad: int

    @classmethod
    def of(cls, groups: np.ndarray, n_groups: int) -> GroupSlots:
        groups = np.asarray(groups, dtype=np.int64)
        size = np.bincount(groups, minlength=n_groups)[:n_groups]
        K = max(1, int(size.max()) if size.size else 1)
        order = np.argsort(groups, kind="stable")  # columns grouped, ascending inside each group
        start = np.concatenate([[0], np.cumsum(size)[:-1]])
        pos = np.arange(len(groups)) - start[groups[order]]
        index = np.full((n_groups, K), len(groups), dtype=np.int64)
        index[groups[order], pos] = order
        return cls(torch.from_numpy(index), torch.from_numpy(size), len(groups))

    @property
    def width(self) -> int:
        return int(self.index.shape[1])

    def slot_major(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(columns (K * G,), is_pad (K * G,))``: the slots plane by plane (slot 0 of every group, then slot 1,
        ...), so (n, K * G) values in this order reshape to (n, K, G) planes for :func:`plane_logsumexp`."""
        flat = self.index.T.reshape(-1)
        return flat.clamp(max=max(self.pad - 1, 0)), flat == self.pad

    def logsumexp(self, values: torch.Tensor) -> torch.Tensor:
        """``logsumexp`` of every group's columns of ``values`` (n, C) -> (n, G) float64; empty groups: ``-inf``."""
        n, (G, K) = values.shape[0], self.index.shape
        cols, pads = self.slot_major()
        v = values.index_select(1, cols).reshape(n, K, G)
        if bool(pads.any()):
            v.masked_fill_(pads.reshape(1, K, G), float("-inf"))
        return plane_logsumexp(v)

    def gather(
        self, values: torch.Tensor, groups: torch.Tensor, rows: torch.Tensor | None = None, fill: float = float("-inf")
    ) -> torch.Tensor:
        """``values`` (N, C) at the slots of ``groups`` (n, M) group ids -> (n, M, K), pads set to ``fill``; row ``i``
        of the result reads row ``rows[i]`` of ``values`` (default: row ``i``), without copying whole rows."""
        n, M = groups.shape
        idx = self.index[groups]  # (n, M, K)
        safe = idx.clamp(max=max(self.pad - 1, 0))
        if rows is None:
            out = values.gather(1, safe.reshape(n, -1)).reshape(idx.shape)
        else:
            flat = rows.reshape(n, 1, 1) * values.shape[1] + safe
            out = values.reshape(-1)[flat]
        return out.masked_fill(idx == self.pad, fill)


def plane_logsumexp(v: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over dim 1 of (n, K, G) values laid out as K contiguous (n, G) planes -> (n, G) float64
    (``-inf`` where a column is ``-inf`` in every plane). Reductions over K are elementwise on whole planes; they run
    in the input's precision (float32 scores: float32 sums of at most K terms, the maximum exact), the log in float64.
    """
    top = v.amax(dim=1)
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    z = (v - safe[:, None, :]).exp_().sum(dim=1)
    return safe.double() + torch.log(z.double())
