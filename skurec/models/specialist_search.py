"""The specialist head's validation searches: the specialist weight ``beta`` (:func:`search_beta`, top-1 of the soft
hierarchy) and the scale of the fine scores (:func:`calibrate_scale`, NLL: a calibrated ``p(c | s)`` so the ranks
after the first mix with the global scorer's probabilities)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._common import GroupSlots
from .lda_router import group_logsumexp

#: Elements per padded block (superclass batches, validation row chunks): bounds the memory of the vectorised steps.
BLOCK_ELEMENTS = 1 << 22


def search_beta(
    G: torch.Tensor,
    F: torch.Tensor,
    route: torch.Tensor,
    sc: np.ndarray,
    n_superclasses: int,
    targets: np.ndarray,
    betas: Sequence[float],
    scales: Sequence[float],
) -> dict[tuple[float, float], tuple[float, float]]:
    """Validation top-1 of the soft hierarchy over all superclasses and top-1 inside the true superclass, for every
    specialist weight ``beta`` and scale: ``{(beta, scale): (top1, within_top1)}``, plus ``("global"|"specialist",
    0)`` for each expert alone inside the true superclass.

    ``G`` / ``F`` (n, C) the two experts' validation scores, ``route`` (n, S) float64 router log-probabilities. The
    hierarchy's prediction is ``argmax_c route[s(c)] + log softmax_{c in s(c)} scale (G + beta F)_c`` (ties: the
    lower SKU id). Only the superclasses that can hold it are scored: the best key inside ``s`` lies in
    ``[route[s] - log |s|, route[s]]``, so a superclass whose ``route`` is below ``max_s (route[s] - log |s|)`` never
    wins; on a calibrated router that is a handful per row, so the search costs ``n x M x K`` per grid point.
    """
    slots = GroupSlots.of(sc, n_superclasses)
    n = route.shape[0]
    cv = torch.as_tensor(targets, dtype=torch.long)
    true_sc = torch.from_numpy(sc)[cv]
    size = slots.size.double()
    floor = (route - torch.log(size.clamp(min=1))[None, :]).masked_fill(size[None, :] == 0, float("-inf"))
    floor = floor.max(dim=1).values
    n_cand = (route >= floor[:, None]).sum(dim=1)
    _, order = torch.sort(route, dim=1, descending=True, stable=True)
    grid = [(float(b), float(s)) for b in betas for s in scales]
    bv = torch.tensor([b for b, _ in grid], dtype=torch.float64)[:, None, None, None]
    sv = torch.tensor([s for _, s in grid], dtype=torch.float64)[:, None, None, None]
    hits = torch.zeros((len(grid), 2), dtype=torch.long)
    alone = {"global": 0, "specialist": 0}
    # blocks of rows needing about as many superclasses (1, 2, 3-4, 5-8, ...), each padded to its largest need;
    # every (beta, scale) of the grid is one slice of a block, so a block is a few whole-tensor operations
    rows_sorted = torch.argsort(n_cand, stable=True)
    bucket = np.ceil(np.log2(n_cand[rows_sorted].numpy().clip(min=1))).astype(np.int64)
    edges = np.flatnonzero(np.diff(bucket)) + 1
    blocks = []
    for seg_start, seg_end in zip(np.r_[0, edges], np.r_[edges, n]):
        per_row = int(n_cand[rows_sorted[seg_end - 1]]) * slots.width * len(grid)
        step = max(1, BLOCK_ELEMENTS // max(1, per_row))
        blocks += [(a, min(seg_end, a + step)) for a in range(int(seg_start), int(seg_end), step)]
    for start, end in blocks:
        r = rows_sorted[start:end]
        M = int(n_cand[r].max())
        groups = order[r, :M]
        cls = slots.index[groups].reshape(len(r), -1)
        # pads: -inf in G, 0 in F, so scale (G + beta F) stays -inf there for every beta (beta = 0 included)
        Gc, Fc = slots.gather(G, groups, rows=r).double(), slots.gather(F, groups, rows=r, fill=0.0).double()
        Gt = slots.gather(G, true_sc[r, None], rows=r)[:, 0].double()
        Ft = slots.gather(F, true_sc[r, None], rows=r, fill=0.0)[:, 0].double()
        true_cls = slots.index[true_sc[r]]
        truth = cv[r]
        for name, E in (("global", Gt), ("specialist", Ft.masked_fill(torch.isinf(Gt), float("-inf")))):
            alone[name] += int((true_cls.gather(1, E.argmax(1, keepdim=True))[:, 0] == truth).sum())
        rc = route[r].gather(1, groups)[None, :, :, None]
        key = (rc + torch.log_softmax(sv * (Gc[None] + bv * Fc[None]), dim=3)).reshape(len(grid), len(r), -1)
        key = key.masked_fill((cls == slots.pad)[None], float("-inf"))
        best = key.max(dim=2, keepdim=True).values
        pred = torch.where(key == best, cls[None], torch.full_like(cls, slots.pad)[None]).min(dim=2).values
        within = torch.log_softmax(sv[..., 0] * (Gt[None] + bv[..., 0] * Ft[None]), dim=2).argmax(2)
        within_cls = true_cls[None].expand(len(grid), -1, -1).gather(2, within[:, :, None])[:, :, 0]
        hits[:, 0] += (pred == truth[None]).sum(1)
        hits[:, 1] += (within_cls == truth[None]).sum(1)
    out: dict = {key: (int(h[0]) / max(1, n), int(h[1]) / max(1, n)) for key, h in zip(grid, hits)}
    out.update({(name, 0): (v / max(1, n), v / max(1, n)) for name, v in alone.items()})
    return out


#: Scales of the fine scores tried by :func:`calibrate_scale` (a temperature of ``p(c | s)``).
SCALE_GRID: tuple[float, ...] = tuple(float(v) for v in np.geomspace(0.02, 2.0, 21))


def calibrate_scale(
    G: torch.Tensor,
    F: torch.Tensor,
    route: torch.Tensor,
    sc: np.ndarray,
    n_superclasses: int,
    targets: np.ndarray,
    beta: float,
    grid: Sequence[float] = SCALE_GRID,
) -> float:
    """The ``scale`` of ``grid`` minimising the validation NLL of the soft hierarchy ``log p(s(c)) + log
    softmax_{c' in s(c)} scale (G + beta F)_c`` at the true SKU (1.0 kept on ties): the within-superclass
    posterior is calibrated, so the ranks after the first can be mixed with the global scorer's probabilities."""
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    groups = torch.from_numpy(np.asarray(sc, dtype=np.int64))
    slots = GroupSlots.of(np.asarray(sc), n_superclasses)
    L = (G.double() + beta * F.double()) if beta else G.double()
    true_sc = groups[t]
    base = route.gather(1, true_sc[:, None])[:, 0]
    best, best_nll = 1.0, float("inf")
    for s_ in sorted(set(float(v) for v in grid) | {1.0}):
        Ls = s_ * L
        lse = group_logsumexp(Ls, groups, n_superclasses, slots).gather(1, true_sc[:, None])[:, 0]
        nll = float(-(base + Ls.gather(1, t[:, None])[:, 0] - lse).mean())
        if nll < best_nll - 1e-12 or (abs(nll - best_nll) <= 1e-12 and s_ == 1.0):
            best, best_nll = s_, nll
    return best


__all__ = ["BLOCK_ELEMENTS", "SCALE_GRID", "calibrate_scale", "search_beta"]
