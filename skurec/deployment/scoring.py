"""Every SKU's score as one traceable torch module: what the edge bundle exports to ONNX and what calibration and the
unknown scores read.

:class:`ScoreGraph` wraps a loaded model and calls the model's own torch parts (the dense heads' ``nn.Module``, the
fine head's ``FineNet``, the specialist head's combined rows, the hierarchy's :class:`~skurec.models._common.GroupSlots`
reductions; the case study's dense coarse head and few-shot fine head are stages too), so an ``(n, d)`` embedding batch gives, with no numpy in between (``torch.onnx.export`` traces it):

* ``log_scores`` (n, C) float32: the ranking key of every SKU. Hierarchical models: ``log p(s(c) | x) + log p(c |
  s(c), x)`` for the SKUs of the top-``m`` superclasses (ties of superclasses: the lower id, as
  :func:`~skurec.models._common.topk_stable`); the others: behind an LDA router their global ``log p(c | x)`` capped
  just below the decision (:func:`~skurec.models.hierarchical.mix_global_ranks`: top-k covers every SKU), else
  ``-inf``; ``exp`` of the key is the score
  ``predict_topk`` reports. Flat softmax models: the log-probability. Prototype models: the cosine (``score_is_log``
  False).
* ``log_posterior`` (n, C): the full posterior over every SKU (hierarchical: the key without routing, ``log p(s(c))
  + log p(c | s(c))`` for all superclasses, summing to 1), what temperature calibration and track fusion read.
* ``energy`` (n,): ``logsumexp`` of the global SKU logits (the LDA scores of an LDA router, the dense logits of a
  flat model): the negative free energy, higher = more like the catalogue.
* ``distance`` (n,): the squared Mahalanobis distance to the nearest SKU mean under the LDA's shared covariance,
  ``(x - mu0)' P (x - mu0) - 2 max_c g_c(x)`` (0 for models without an LDA).

:func:`score_arrays` runs it on numpy embeddings. A model kind without a graph raises :class:`ScoringUnsupported`. The
edge exporter checks the graph against the model's own ``predict_topk`` on every validation image (parity), so a
scoring change in :mod:`skurec.models` that the graph does not follow blocks the export instead of shipping.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from skurec.models.hierarchical import MIX_GAP


class ScoringUnsupported(ValueError):
    """This model kind has no traceable score graph (the edge bundle and calibration need one)."""


@dataclass(frozen=True)
class GraphInfo:
    kind: str
    n_classes: int
    dim: int
    score_is_log: bool  # True: exp(log_scores) are the model's scores; False: log_scores are the scores themselves
    has_distance: bool
    has_energy: bool
    m: int | None


def _t64(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64))


class _Linear(torch.nn.Module):
    """``x W' + b`` with the model's rows as float64 buffers, computed in float64: an LDA's rows are large (norms up
    to ~1e5 on well separated SKUs) and its scores cancel, so in float32 two runtimes summing in another order
    (onnxruntime vs torch) disagree by ~0.1 in a logit; in float64 they agree, and the cast back is exact enough."""

    def __init__(self, W: np.ndarray, b: np.ndarray):
        super().__init__()
        self.register_buffer("Wt", _t64(W).T.contiguous())
        self.register_buffer("b", _t64(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.Wt + self.b


def _stage(part: Any) -> torch.nn.Module:
    """The stage's own torch scorer: ``(n, d) -> (n, K)`` logits."""
    from skurec.models.coarse import CoarseHead
    from skurec.models.fine import FineHead
    from skurec.models.lda_router import LDARouter
    from skurec.models.specialists import SpecialistHead

    if isinstance(part, (CoarseHead,)):
        return copy.deepcopy(part.module).cpu().eval()
    if isinstance(part, LDARouter):
        return _Linear(part.W, part.b)
    if isinstance(part, SpecialistHead):
        return _Linear(*part._combined_rows())
    if isinstance(part, FineHead):
        return _FineLogits(part)
    raise ScoringUnsupported(f"no score graph for a {type(part).__name__} stage")


class _FineLogits(torch.nn.Module):
    def __init__(self, head: Any):
        super().__init__()
        self.net = copy.deepcopy(head.net).cpu().eval()
        self.register_buffer("protos", head._protos.detach().cpu().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.scale() * self.net.embed(x) @ self.protos.T


class _LDADistance(torch.nn.Module):
    """``(x - mu0)' P (x - mu0) - 2 max_c g_c(x)``: squared Mahalanobis distance to the nearest class mean."""

    def __init__(self, precision: np.ndarray, mu0: np.ndarray):
        super().__init__()
        self.register_buffer("P", _t64(precision))
        self.register_buffer("mu0", _t64(mu0))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        c = x.double() - self.mu0
        return ((c @ self.P) * c).sum(dim=1) - 2.0 * g.amax(dim=1)


class ScoreGraph(torch.nn.Module):
    """``forward(x (n, d) float32) -> (log_scores (n, C), log_posterior (n, C), energy (n,), distance (n,))``."""

    def __init__(self, model: Any, m: int | None = None):
        super().__init__()
        from skurec.models.flat import FlatPrototype
        from skurec.models.hierarchical import HierarchicalClassifier
        from skurec.models.lda_router import LDARouter
        from skurec.models.softmax import FlatSoftmax

        self.kind = getattr(model, "KIND", type(model).__name__)
        self.hier = isinstance(model, HierarchicalClassifier)
        self.proto = isinstance(model, FlatPrototype)
        dist = None
        if self.hier:
            self.coarse = _stage(model.coarse)
            self.fine = _stage(model.fine)
            slots = model._slots()
            self.slots = slots
            self.register_buffer("sc", torch.from_numpy(model.sc_of_index.astype(np.int64)))
            self.S = int(model.n_superclasses)
            self.m = min(int(model.m if m is None else m), self.S)
            self.lda = isinstance(model.coarse, LDARouter)
            self.temperature = float(getattr(model.coarse, "temperature", 1.0))
            if self.lda:
                dist = _LDADistance(model.coarse.precision, model.coarse.mu0)
        elif isinstance(model, FlatSoftmax):  # calibrated logits: the rows divided by the temperature
            self.coarse = _Linear(model.W / model.temperature, model.b / model.temperature)
            self.m = None
            self.lda = False
        elif self.proto:
            self.coarse = _Linear(model.vectors, np.zeros(len(model.classes), np.float32))
            self.m = None
            self.lda = False
        else:
            raise ScoringUnsupported(
                f"model kind {self.kind!r} has no score graph (supported: hierarchical, flat_softmax, flat_prototype)"
            )
        self.distance = dist
        self.info = GraphInfo(
            kind=self.kind,
            n_classes=len(model.classes),
            dim=int(model.dim),
            score_is_log=not self.proto,
            has_distance=dist is not None,
            has_energy=not self.proto,
            m=self.m,
        )

    def _routed(self, coarse_logp: torch.Tensor) -> torch.Tensor:
        """(n, S) bool: superclass among the ``m`` most probable (ties: the lower id). The ``m``-th largest value
        (TopK) is the cut; of the superclasses tied at the cut, the lowest ids fill what is left (a cumulative count),
        so memory is ``n x S`` (a pairwise ``n x S x S`` rank took gigabytes at 2,000 SKUs)."""
        if self.m >= self.S:
            return torch.ones(coarse_logp.shape, dtype=torch.bool)
        cut = torch.topk(coarse_logp, self.m, dim=1).values[:, -1:]
        above = coarse_logp > cut
        tied = coarse_logp == cut
        room = self.m - above.sum(dim=1, keepdim=True)
        return above | (tied & (torch.cumsum(tied.long(), dim=1) <= room))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zero = torch.zeros(x.shape[0], dtype=torch.float32)
        if not self.hier:
            logits = self.coarse(x)
            if self.proto:
                return logits.float(), logits.float(), zero, zero
            lp = torch.log_softmax(logits, dim=1).float()
            return lp, lp, torch.logsumexp(logits, dim=1).float(), zero
        g = self.coarse(x)
        if self.lda:  # the router's superclass logits: logsumexp of member SKU scores / temperature
            coarse_logits = self.slots.logsumexp(g) / self.temperature
            energy = torch.logsumexp(g, dim=1).float()
            distance = self.distance(x, g).float()
        else:
            coarse_logits = g.double()
            energy, distance = torch.logsumexp(g, dim=1).float(), zero
        coarse_logp = torch.log_softmax(coarse_logits.double(), dim=1)
        f = self.fine(x)
        cond = f.double() - self.slots.logsumexp(f).index_select(1, self.sc)  # log-softmax inside each superclass
        key = coarse_logp.index_select(1, self.sc) + cond
        keep = self._routed(coarse_logp).index_select(1, self.sc)
        if self.lda and self.m < self.S:  # ranks after the first over every SKU, as the model's predict_topk
            best = torch.where(keep, key, torch.full_like(key, float("-inf"))).amax(dim=1, keepdim=True)
            outside = torch.minimum(torch.log_softmax(g.double(), dim=1), best - MIX_GAP)
        else:
            outside = torch.full_like(key, float("-inf"))
        routed = torch.where(keep, key, outside)
        return routed.float(), key.float(), energy, distance


OUTPUTS = ("log_scores", "log_posterior", "energy", "distance")


def score_arrays(graph: ScoreGraph, X: np.ndarray, batch: int = 4096) -> dict[str, np.ndarray]:
    """The graph on numpy embeddings: ``{"log_scores", "log_posterior", "energy", "distance"}`` as numpy arrays."""
    outs: list[tuple] = []
    with torch.inference_mode():
        for a in range(0, len(X), batch):
            outs.append(tuple(t.numpy() for t in graph(torch.from_numpy(np.ascontiguousarray(X[a : a + batch])))))
    if not outs:
        C = graph.info.n_classes
        empty = {"log_scores": np.zeros((0, C), np.float32), "log_posterior": np.zeros((0, C), np.float32)}
        return {**empty, "energy": np.zeros(0, np.float32), "distance": np.zeros(0, np.float32)}
    return {name: np.concatenate([o[i] for o in outs]) for i, name in enumerate(OUTPUTS)}


def graph_disagreement(graph: ScoreGraph, model: Any, X: np.ndarray | None = None, k: int = 3) -> str | None:
    """None when the graph ranks ``X`` (default: 16 seeded random unit vectors; the identity holds for any input) like
    the model's own ``predict_topk`` (same top-k labels, scores within 1e-4), else what differs. The Recognizer runs it
    once when it loads a model, so a scoring change in :mod:`skurec.models` that the graph does not follow is noticed
    instead of answered from a stale graph."""
    if X is None:
        X = np.random.default_rng(0).normal(size=(16, graph.info.dim)).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    k = min(k, graph.info.n_classes)
    kwargs = {} if graph.m is None or not graph.hier else {"m": graph.m}
    pred = model.predict_topk(X, k=k, **kwargs)
    ls = score_arrays(graph, X)["log_scores"].astype(np.float64)
    order = np.argsort(-ls, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(ls, order, axis=1)
    ok = np.isfinite(vals)
    labels = np.where(ok, np.asarray(model.classes, dtype=object)[order], "")
    scores = np.where(ok, np.exp(vals) if graph.info.score_is_log else vals, 0.0)
    if not (labels[:, 0] == pred.labels[:, 0]).all():
        return f"top-1 differs on {int((labels[:, 0] != pred.labels[:, 0]).sum())} of {len(X)} probe rows"
    diff = float(np.max(np.abs(scores[:, 0] - pred.scores[:, 0])))
    if diff > 1e-4:
        return f"top-1 scores differ by up to {diff:.2e}"
    return None


__all__ = ["OUTPUTS", "GraphInfo", "graph_disagreement", "ScoreGraph", "ScoringUnsupported", "score_arrays"]
