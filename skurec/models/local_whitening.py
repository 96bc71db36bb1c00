"""The superclass-local whitening factors of the specialist head (:mod:`.specialists`).

For every superclass ``s``: the top ``rank`` eigen-directions ``U_s`` of the within-class covariance of its own
training rows in the globally whitened space ``z = H (x - mu0)``, and ``gamma_s = a lam / (1 - a + a lam)`` of their
eigenvalues ``lam`` (``a`` the mix), so that the specialist's precision is ``(I - U_s' diag(gamma_s) U_s) / (1 - a)``.
The eigen-directions are the top right singular vectors of the superclass's residuals ``z - m_c`` (``m_c`` the class
mean in z-space), from a randomised subspace iteration (``torch.svd_lowrank``); :func:`local_factors` batches it over
superclasses of similar size, :func:`_local_factors` is the one-superclass reference it reproduces.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import one_thread
from .specialist_search import BLOCK_ELEMENTS

#: Subspace iterations and oversampling of the randomised top-``rank`` decomposition of each superclass's residuals.
LOWRANK_NITER = 3
LOWRANK_OVERSAMPLE = 8


def _local_factors(
    Xs: np.ndarray, codes_s: np.ndarray, Mz: np.ndarray, H: torch.Tensor, mu0: torch.Tensor, rank: int, mix: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``rank`` eigenpairs of one superclass's within-class covariance in z-space -> ``(U (r, d), gamma (r,))``.

    ``Xs`` / ``codes_s``: the superclass's training rows and their class indices into ``Mz`` (class means, z-space).
    One superclass at a time (the reference for :func:`local_factors`, which batches the same computation).
    """
    d = Xs.shape[1]
    U = np.zeros((rank, d), np.float32)
    gam = np.zeros(rank, np.float32)
    if Xs.shape[0] < 2:
        return U, gam
    R = (torch.from_numpy(Xs) - mu0) @ H.T - torch.from_numpy(Mz[codes_s].astype(np.float32))
    r = min(rank, R.shape[0], d)
    # top-r right singular vectors of R = top eigen-directions of the local covariance R'R / n (randomised
    # subspace iteration: O(n_s d r) instead of an n_s x n_s or d x d eigendecomposition)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, sv, V = torch.svd_lowrank(R, q=min(r + LOWRANK_OVERSAMPLE, min(R.shape)), niter=LOWRANK_NITER)
    sv, V = sv[:r].double(), V[:, :r].double()
    keep = sv > 1e-6 * max(float(sv[0]), 1e-30)
    sv, V = sv[keep], V[:, keep]
    lam = sv**2 / R.shape[0]
    U[: V.shape[1]] = V.T.float().numpy()
    gam[: V.shape[1]] = (mix * lam / ((1 - mix) + mix * lam)).float().numpy()
    return U, gam


def _lowrank_right_vectors(A: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.svd_lowrank`` of a batch, for the singular values and right singular vectors only.

    ``A`` (B, m, n) float32 with ``m >= n`` rows (zero rows pad shorter members: they change neither the values nor
    the right vectors), ``probe`` (B, n, q) the random start. Returns ``sv`` (B, q) and ``V`` (B, n, q); the same
    steps as ``torch.svd_lowrank`` (Halko et al. subspace iteration, then an SVD of the projected matrix), batched.
    """
    Q = torch.linalg.qr(A @ probe).Q
    for _ in range(LOWRANK_NITER):
        Q = torch.linalg.qr(A.mT @ Q).Q
        Q = torch.linalg.qr(A @ Q).Q
    _, sv, Vh = torch.linalg.svd(Q.mT @ A, full_matrices=False)
    return sv, Vh.mT


def _lowrank_left_vectors(At: torch.Tensor, probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for the transposed case of ``torch.svd_lowrank`` (fewer rows than columns): ``At`` (B, n, m) is the
    transpose (zero columns pad shorter members, ``probe`` (B, m, q) zero rows there); returns ``sv`` and the left
    singular vectors of ``At`` (B, n, q), i.e. the right singular vectors of the residuals."""
    Q = torch.linalg.qr(At @ probe).Q
    for _ in range(LOWRANK_NITER):
        Q = torch.linalg.qr(At.mT @ Q).Q
        Q = torch.linalg.qr(At @ Q).Q
    Ub, sv, _ = torch.linalg.svd(Q.mT @ At, full_matrices=False)
    return sv, Q @ Ub


def _blocks(n_rows: np.ndarray, rank: int, d: int) -> list[tuple[bool, int, list[int]]]:
    """The batches of :func:`local_factors`: ``(wide, q, superclasses)`` each. Superclasses with at least 2 rows and the
    same shape of problem (fewer rows than the width or not, subspace size ``q``) in ascending row counts, cut so
    that a block padded to its last (largest) member stays within ``BLOCK_ELEMENTS``."""
    kinds: dict[tuple[bool, int], list[int]] = {}
    for s in np.argsort(n_rows, kind="stable").tolist():
        n_s = int(n_rows[s])
        if n_s >= 2:
            q = min(min(rank, n_s, d) + LOWRANK_OVERSAMPLE, n_s, d)
            kinds.setdefault((n_s < d, q), []).append(s)
    blocks = []
    for (wide, q), members in kinds.items():
        i = 0
        while i < len(members):  # ascending row counts: each block is padded to its last member
            j = i + 1
            while j < len(members) and (j - i + 1) * int(n_rows[members[j]]) * d <= BLOCK_ELEMENTS:
                j += 1
            blocks.append((wide, q, members[i:j]))
            i = j
    return blocks


class _Probes:
    """The random starts of ``torch.svd_lowrank``: what it draws first after ``torch.manual_seed(0)``, per shape."""

    def __init__(self) -> None:
        self._drawn: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, n: int, q: int) -> torch.Tensor:
        if (n, q) not in self._drawn:
            self._drawn[(n, q)] = torch.randn(n, q, generator=torch.Generator().manual_seed(0))
        return self._drawn[(n, q)]


def _block_right_vectors(
    A: torch.Tensor, counts: np.ndarray, wide: bool, q: int, probe: _Probes
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sv (B, q), V (B, d, q))`` of a padded block of residuals ``A`` (B, n_max, d), each member decomposed from the
    random start ``torch.svd_lowrank`` would use for it alone (the transposed problem when its rows are fewer than d)."""
    B, n_max, d = A.shape
    with one_thread():
        if wide:
            start = torch.zeros((B, n_max, q), dtype=torch.float32)
            for b, n_s in enumerate(counts.tolist()):
                start[b, :n_s] = probe(n_s, q)
            return _lowrank_left_vectors(A.mT, start)
        return _lowrank_right_vectors(A, probe(d, q).expand(B, d, q))


def _block_factors(
    sv: torch.Tensor, V: torch.Tensor, counts: np.ndarray, rank: int, q: int, mix: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(U (B, r, d), gamma (B, r), r)`` float64 of a block from its singular values and right vectors: the first
    ``min(rank, n_s, d)`` components above 1e-6 of the largest (a prefix: ``sv`` is descending), zeros after."""
    d = V.shape[1]
    r = min(rank, q)
    limit = torch.from_numpy(np.minimum(np.minimum(rank, counts), d))
    sv, V = sv[:, :r].double(), V[:, :, :r].double()
    keep = (sv > 1e-6 * sv[:, :1].clamp(min=1e-30)) & (torch.arange(r)[None, :] < limit[:, None])
    lam = sv**2 / torch.from_numpy(counts).double()[:, None]
    gam = torch.where(keep, mix * lam / ((1 - mix) + mix * lam), torch.zeros_like(lam))
    U = torch.where(keep[:, :, None], V.transpose(1, 2), torch.zeros((), dtype=torch.float64))
    return U, gam, r


def local_factors(
    X: np.ndarray,
    codes: np.ndarray,
    sc: np.ndarray,
    n_superclasses: int,
    Mz: np.ndarray,
    H: np.ndarray,
    mu0: np.ndarray,
    rank: int,
    mix: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(local_U (S, rank, d), local_gamma (S, rank))`` of every superclass (fewer than 2 rows: zeros).

    :func:`_local_factors` of every superclass, batched: superclasses with the same shape of problem (the same
    subspace size, more rows than the width or not) and similar row counts are zero-padded to one block and
    decomposed together (the random start of each is the one ``torch.svd_lowrank`` draws for it under seed 0), so the
    cost is a few batched matrix products and QR factorisations per block instead of a loop over superclasses.
    """
    S, d = int(n_superclasses), X.shape[1]
    local_U = np.zeros((S, rank, d), np.float32)
    local_gamma = np.zeros((S, rank), np.float32)
    row_sc = sc[codes]
    order = np.argsort(row_sc, kind="stable")  # rows grouped by superclass: one slice each, X never copied whole
    bounds = np.searchsorted(row_sc[order], np.arange(S + 1))
    n_rows = np.diff(bounds)
    Hf = torch.from_numpy(np.ascontiguousarray(H, dtype=np.float32))
    mu0f = torch.from_numpy(np.asarray(mu0, dtype=np.float32))
    Mzf = torch.from_numpy(np.asarray(Mz, dtype=np.float32))
    probe = _Probes()
    for wide, q, block in _blocks(n_rows, rank, d):
        counts = n_rows[block]
        # every member's residual rows z - m_c (z = H (x - mu0)), from one product, placed in the padded block
        rows = np.concatenate([order[bounds[s] : bounds[s + 1]] for s in block])
        member = torch.from_numpy(np.repeat(np.arange(len(block)), counts))
        pos = torch.from_numpy(np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts))
        A = torch.zeros((len(block), int(counts[-1]), d), dtype=torch.float32)
        A[member, pos] = (torch.from_numpy(X[rows]) - mu0f) @ Hf.T - Mzf[torch.from_numpy(codes[rows])]
        sv, V = _block_right_vectors(A, counts, wide, q, probe)
        U, gam, r = _block_factors(sv, V, counts, rank, q, mix)
        local_U[block, :r] = U.float().numpy()
        local_gamma[block, :r] = gam.float().numpy()
    return local_U, local_gamma


__all__ = ["LOWRANK_NITER", "LOWRANK_OVERSAMPLE", "local_factors"]
