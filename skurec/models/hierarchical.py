"""Hierarchical coarse-to-fine classifier with soft routing and a no-retraining new-SKU fast path.

Scoring: for an image x, the coarse head gives ``p(s | x)`` over superclasses and the fine head gives, inside every
superclass, ``p(c | s, x)`` = softmax over that superclass's SKUs only. With routing width ``m`` the candidates are
the SKUs of the top-``m`` superclasses, each scored ``p(s(c) | x) * p(c | s(c), x)`` and ranked together; other
SKUs get no hierarchical score. The first rank is always the hierarchy's decision; when the router is an
:class:`LDARouter` (its global SKU scorer is calibrated), the ranks after the first mix the routed candidates with the
SKUs outside the routed superclasses, scored by that global ``p(c | x)`` (:func:`mix_global_ranks`), so top-k covers
every SKU. ``m = 1`` is exactly the hard two-stage split (argmax superclass, then the fine softmax
inside it): the ranking key is computed in float64 log-space, where adding the constant ``log p(s*)`` cannot
reorder candidates. Rows with fewer than k candidates are padded with label ``""`` and score 0.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._common import (
    INFER_ROWS,
    EmbeddingInputError,
    GroupSlots,
    Predictions,
    batched_rows,
    check_embeddings,
    check_xy,
    encode_labels,
    labels_from_indices,
    resolve_device,
    topk_stable,
)
from .coarse import CoarseHead
from .fine import FineHead
from .lda_router import LDARouter
from .prototypes import class_sums
from .serialization import ModelFormatError, nest, pack, read_config, require, sub, unpack
from .specialists import SpecialistHead

#: The coarse (router) and fine stages a hierarchical bundle may hold, by ``kind``.
COARSE_KINDS = {cls.KIND: cls for cls in (CoarseHead, LDARouter)}
FINE_KINDS = {cls.KIND: cls for cls in (FineHead, SpecialistHead)}

#: routing width (superclasses whose SKUs are scored) when validation did not choose one
DEFAULT_ROUTE_M = 3
ATTACH_RULES = ("coarse", "nearest_class", "centroid")


@dataclass
class AddClassesResult:
    """Outcome of :meth:`HierarchicalClassifier.add_classes`."""

    model: HierarchicalClassifier
    superclass_of_new: dict[str, int]
    refreshed: list[str]
    attach_rule: str


class HierarchicalClassifier:
    """Coarse router + fine head over a fixed SKU -> superclass assignment (``superclass_of_class`` must cover
    exactly ``fine.classes``; ids lie in ``0..coarse.n_superclasses-1``). ``m`` = default routing width.

    Stages: a :class:`CoarseHead` (dense superclass classifier) or an :class:`LDARouter` (superclass posterior of a
    global SKU scorer); a :class:`FineHead` (prototype metric) or a :class:`SpecialistHead` (global scores x
    superclass-local specialists). The scoring rule is the same for every combination (module docstring).
    """

    KIND = "hierarchical"

    def __init__(
        self,
        coarse: CoarseHead | LDARouter,
        fine: FineHead | SpecialistHead,
        superclass_of_class: Mapping[str, int],
        m: int = DEFAULT_ROUTE_M,
    ):
        if coarse.dim != fine.dim:
            raise EmbeddingInputError(f"coarse head expects d={coarse.dim} but fine head d={fine.dim}")
        missing = [c for c in fine.classes if c not in superclass_of_class]
        if missing:
            raise EmbeddingInputError(f"{len(missing)} fine-head classes have no superclass, e.g. {missing[:5]}")
        extra = sorted(set(superclass_of_class) - set(fine.classes))
        if extra:
            raise EmbeddingInputError(f"superclass_of_class names SKUs the fine head does not know: {extra[:5]}")
        sc = np.asarray([int(superclass_of_class[c]) for c in fine.classes], dtype=np.int64)
        if sc.size and (sc.min() < 0 or sc.max() >= coarse.n_superclasses):
            raise EmbeddingInputError(f"superclass ids must lie in 0..{coarse.n_superclasses - 1}")
        if m < 1:
            raise ValueError(f"routing width m must be >= 1, got {m}")
        if isinstance(fine, SpecialistHead) and not np.array_equal(fine.sc_of_index, sc):
            raise EmbeddingInputError("the specialist head was built for another superclass assignment than given")
        if isinstance(fine, SpecialistHead) and fine.n_superclasses != coarse.n_superclasses:
            raise EmbeddingInputError(
                f"specialist head has {fine.n_superclasses} superclasses, the router {coarse.n_superclasses}"
            )
        if isinstance(coarse, LDARouter) and (
            coarse.classes != fine.classes or not np.array_equal(coarse.sc_of_index, sc)
        ):
            raise EmbeddingInputError("the LDA router scores another class list / superclass assignment than given")
        self.coarse = coarse
        self.fine = fine
        self.m = int(m)
        self.sc_of_index = sc

    # ------------------------------------------------------------------ basic properties
    @property
    def classes(self) -> list[str]:
        return self.fine.classes

    @property
    def n_superclasses(self) -> int:
        return self.coarse.n_superclasses

    @property
    def dim(self) -> int:
        return self.fine.dim

    def superclass_of_class(self) -> dict[str, int]:
        return {c: int(s) for c, s in zip(self.classes, self.sc_of_index)}

    def with_m(self, m: int) -> HierarchicalClassifier:
        """The same model with another default routing width (``with_m(1)`` = hard two-stage split)."""
        out = copy.copy(self)
        if m < 1:
            raise ValueError(f"routing width m must be >= 1, got {m}")
        out.m = int(m)
        return out

    # ------------------------------------------------------------------ inference
    def predict_topk(self, X: np.ndarray, k: int = 3, m: int | None = None) -> Predictions:
        """Top-k SKUs by ``p(superclass) * p(SKU | superclass)`` over the top-``m`` superclasses."""
        m = self.m if m is None else int(m)
        return self.predict_topk_widths(X, k, (m,))[m]

    def predict_topk_widths(self, X: np.ndarray, k: int, widths: Sequence[int]) -> dict[int, Predictions]:
        """:meth:`predict_topk` for several routing widths at once (the stages score every row once): ``{m: ...}``."""
        X = check_embeddings(X, dim=self.dim)
        widths = [int(m) for m in widths]
        if k < 1 or any(m < 1 for m in widths):
            raise ValueError(f"need k >= 1 and m >= 1, got k={k}, m={widths}")
        S = self.n_superclasses
        kk = min(k, len(self.classes))
        sc = torch.from_numpy(self.sc_of_index)
        parts: dict[int, list[tuple]] = {m: [] for m in widths}
        coarse_all = []
        for sl in batched_rows(len(X), INFER_ROWS):
            coarse_logp = torch.log_softmax(self.coarse.logits(X[sl]).double(), dim=1)
            coarse_p = coarse_logp.exp()
            fine_logits = self.fine.class_logits(X[sl])
            found = routed_topk_widths(coarse_logp, coarse_p, fine_logits, self._slots(), list(parts), kk)
            glogp = None
            if isinstance(self.coarse, LDARouter) and kk > 1 and any(min(m, S) < S for m in parts):
                glogp = torch.log_softmax(self.coarse.class_logits(X[sl]).double(), dim=1)
            for m in parts:
                vals, idx, valid = found[min(m, S)]
                if glogp is not None and min(m, S) < S:
                    vals, idx, valid = mix_global_ranks(vals, idx, valid, glogp, coarse_p, sc, min(m, S))
                parts[m].append((idx, vals, valid))
            coarse_all.append(coarse_p.float().numpy())
        coarse_proba = np.concatenate(coarse_all)
        out = {}
        for m, chunks in parts.items():
            idx = torch.cat([c[0] for c in chunks])
            vals = torch.cat([c[1] for c in chunks])
            valid = torch.cat([c[2] for c in chunks])
            lab = labels_from_indices(idx.numpy(), valid.numpy(), self.classes)
            sco = torch.where(valid, vals.exp(), torch.zeros_like(vals)).float().numpy()
            top_sc = torch.where(valid[:, 0], sc[idx[:, 0].clamp(max=len(sc) - 1)], torch.full_like(idx[:, 0], -1))
            if kk < k:
                lab = np.concatenate([lab, np.full((lab.shape[0], k - kk), "", dtype=lab.dtype)], axis=1)
                sco = np.concatenate([sco, np.zeros((sco.shape[0], k - kk), np.float32)], axis=1)
            out[m] = Predictions(
                labels=lab, scores=sco, superclass=top_sc.numpy(), coarse_proba=coarse_proba, extra={"m": min(m, S)}
            )
        return out

    def _slots(self) -> GroupSlots:
        slots = self.__dict__.get("_group_slots")
        if slots is None:
            slots = GroupSlots.of(self.sc_of_index, self.n_superclasses)
            self.__dict__["_group_slots"] = slots
        return slots

    # ------------------------------------------------------------------ new SKUs without retraining
    def add_classes(self, X_new: np.ndarray, y_new: np.ndarray, attach: str = "coarse") -> AddClassesResult:
        """Return a *new* model that also knows the SKUs / images in ``(X_new, y_new)``; no parameter is trained.

        * unknown SKUs get a prototype in the fine head's projected space and are attached to one superclass by
          ``attach``: ``"coarse"`` (default) = argmax of the coarse head's mean probability over the SKU's images,
          i.e. the superclass the router will actually send these images to; ``"nearest_class"`` = superclass of
          the existing SKU whose raw prototype is closest (cosine); ``"centroid"`` = closest superclass centroid
          (normalised mean of its SKUs' raw prototypes). The last two need ``raw_means``.
        * known SKUs get their prototype refreshed with the extra images (exact running mean).
        """
        if attach not in ATTACH_RULES:
            raise ValueError(f"unknown attach rule {attach!r}; use one of {ATTACH_RULES}")
        X_new, y_new = check_xy(X_new, y_new, dim=self.dim, prefix="new ")
        known = set(self.classes)
        new = sorted({c for c in y_new.tolist() if c not in known})
        chosen = self._attach(X_new, y_new, new, attach)
        if isinstance(self.fine, SpecialistHead):
            fine, _, refreshed = self.fine.with_images(X_new, y_new, superclass_of_new=chosen)
        else:
            fine, _, refreshed = self.fine.with_images(X_new, y_new)
        coarse = self.coarse.with_classes(X_new, y_new, chosen) if isinstance(self.coarse, LDARouter) else self.coarse
        if isinstance(coarse, LDARouter) and coarse.classes != fine.classes:  # refreshed SKUs keep their router row
            raise EmbeddingInputError("router and fine head disagree on the class list after adding SKUs")
        model = HierarchicalClassifier(coarse, fine, {**self.superclass_of_class(), **chosen}, self.m)
        return AddClassesResult(model=model, superclass_of_new=chosen, refreshed=refreshed, attach_rule=attach)

    def _attach(self, X_new: np.ndarray, y_new: np.ndarray, new: list[str], attach: str) -> dict[str, int]:
        """Superclass of every new SKU under the given rule (see :meth:`add_classes`)."""
        if not new:
            return {}
        rows = np.isin(y_new, new)
        codes = encode_labels(y_new[rows], new)
        if attach == "coarse":
            proba = self.coarse.predict_proba(X_new[rows])
            mean_p = np.zeros((len(new), self.n_superclasses))
            np.add.at(mean_p, codes, proba)
            return {c: int(np.argmax(mean_p[i])) for i, c in enumerate(new)}
        if self.fine.raw_means is None:
            raise EmbeddingInputError(
                f"attach={attach!r} needs the fine head's raw_means; this model has none (use attach='coarse')"
            )
        sums, _ = class_sums(X_new[rows], codes, len(new))
        new_protos = _unit(sums)
        protos = _unit(self.fine.raw_means.astype(np.float64))
        if attach == "nearest_class":
            near = np.argmax(new_protos @ protos.T, axis=1)
            return {c: int(self.sc_of_index[j]) for c, j in zip(new, near.tolist())}
        cent = np.zeros((self.n_superclasses, self.dim))
        np.add.at(cent, self.sc_of_index, protos)
        best = np.argmax(new_protos @ _unit(cent).T, axis=1)
        return {c: int(s) for c, s in zip(new, best.tolist())}

    # ------------------------------------------------------------------ serialisation
    def to_files(self) -> dict[str, bytes]:
        """``config.json`` (classes, superclass of each, m) + empty ``tensors.safetensors`` + ``coarse/*`` + ``fine/*``."""
        config = {
            "classes": self.classes,
            "superclass_of_class": self.sc_of_index.tolist(),
            "m": self.m,
            "n_superclasses": self.n_superclasses,
            "dim": self.dim,
        }
        files = pack(self.KIND, config, {})
        files.update(nest("coarse/", self.coarse.to_files()))
        files.update(nest("fine/", self.fine.to_files()))
        return files

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], device: str | torch.device | None = None) -> HierarchicalClassifier:
        config, _ = unpack(files, cls.KIND, required_keys=("classes", "superclass_of_class", "m", "n_superclasses"))
        where = "hierarchical config.json"
        classes = require(config, "classes", list, where)
        sc_list = require(config, "superclass_of_class", list, where)
        parts = {}
        for prefix, kinds in (("coarse/", COARSE_KINDS), ("fine/", FINE_KINDS)):
            part_files = sub(files, prefix)
            try:
                kind = read_config(part_files)["kind"]
                if kind not in kinds:
                    raise ModelFormatError(f"kind {kind!r} is not a {prefix[:-1]} stage (known: {sorted(kinds)})")
                parts[prefix] = kinds[kind].from_files(part_files, device=device)
            except ModelFormatError as exc:
                raise ModelFormatError(f"{prefix} part: {exc}") from exc
        coarse, fine = parts["coarse/"], parts["fine/"]
        if fine.classes != [str(c) for c in classes] or len(sc_list) != len(classes):
            raise ModelFormatError(f"{where}: class list / superclass list disagree with fine/config.json")
        if coarse.n_superclasses != config["n_superclasses"]:
            raise ModelFormatError(
                f"{where} says {config['n_superclasses']} superclasses, coarse/ has {coarse.n_superclasses}"
            )
        try:
            return cls(coarse, fine, {str(c): int(s) for c, s in zip(classes, sc_list)}, int(config["m"]))
        except EmbeddingInputError as exc:
            raise ModelFormatError(f"{where}: {exc}") from exc


#: Widths up to this share one scoring of their top superclasses in :func:`routed_topk_widths`; wider ones extend it.
SHARED_WIDTH = 16


def _scored(
    lp_top: torch.Tensor, groups: torch.Tensor, fine_logits: torch.Tensor, slots: GroupSlots, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The keys of the SKUs of each row's first ``M`` routed superclasses (``groups`` (r, M), their log-probabilities
    ``lp_top``; ``rows`` index ``fine_logits``), best first (ties: the lower SKU id): ``(keys, SKU ids, routing
    position of their superclass)``, each (r, M * K); pads: ``-inf`` / ``pad``."""
    M = groups.shape[1]
    cond = torch.log_softmax(slots.gather(fine_logits, groups, rows=rows).double(), dim=2)
    cls = slots.index[groups]
    key = (lp_top[:, :, None] + cond).masked_fill(cls == slots.pad, float("-inf")).reshape(len(rows), -1)
    cls = cls.reshape(len(rows), -1)
    pos = torch.arange(M).repeat_interleave(slots.width).expand(len(rows), -1)
    by_id = torch.argsort(cls, dim=1, stable=True)  # ties of the key then fall to the lower SKU id
    key, cls, pos = key.gather(1, by_id), cls.gather(1, by_id), pos.gather(1, by_id)
    _, best = torch.sort(key, dim=1, descending=True, stable=True)
    return key.gather(1, best), cls.gather(1, best), pos.gather(1, best)


def _first_k(keys: torch.Tensor, ids: torch.Tensor, take: torch.Tensor, k: int, pad: int):  # type: ignore[no-untyped-def]
    """The first ``k`` entries of each row where ``take`` holds (rows are best first): keys, ids (pads after)."""
    L = keys.shape[1]
    where = torch.where(take, -torch.arange(L, dtype=torch.float32).expand_as(keys), float(-L - 1))
    first, at = torch.topk(where, min(k, L), dim=1)  # distinct values: the first positions, in order
    found = first > -L - 1
    out_keys = torch.where(found, keys.gather(1, at), float("-inf"))
    out_ids = torch.where(found, ids.gather(1, at), pad)
    if k > L:
        out_keys = torch.cat([out_keys, torch.full((len(keys), k - L), float("-inf"), dtype=keys.dtype)], 1)
        out_ids = torch.cat([out_ids, torch.full((len(keys), k - L), pad, dtype=ids.dtype)], 1)
    return out_keys, out_ids


def routed_topk_widths(
    coarse_logp: torch.Tensor,
    coarse_p: torch.Tensor,
    fine_logits: torch.Tensor,
    slots: GroupSlots,
    widths: Sequence[int],
    k: int,
) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Exact top-``k`` of ``key_c = log p(s(c)) + log p(c | s(c))`` over the SKUs of the top-``m`` superclasses, for
    every routing width ``m`` of ``widths``: ``{m: (keys (n, k) float64, SKU ids (n, k), valid (n, k))}``.

    ``coarse_logp`` (n, S) float64 superclass log-probabilities and ``coarse_p`` their ``exp`` (routing ranks
    superclasses by it, ties to the lower id), ``fine_logits`` (n, C) the fine head's scores, ``slots`` the SKUs of
    each superclass. Ties go to the lower SKU id (the order of a stable sort over all SKUs). The SKUs of the first
    ``M`` routed superclasses are scored once for all widths up to ``M``; a wider ``m`` extends ``M`` (doubling)
    only for the rows where a superclass beyond it could still enter the top-k: ``key_c <= log p(s(c))`` since
    ``log p(c | s) <= 0``, so the k-th key found must beat the best log-probability left out. The cost is
    ``n x M x K``, not ``n x C``.
    """
    n, S = coarse_logp.shape
    widths = sorted({min(max(1, int(m)), S) for m in widths})
    everyone = torch.arange(n)
    M = min(S, max([m for m in widths if m <= SHARED_WIDTH] + [min(max(4, k), S)]))
    _, groups = topk_stable(coarse_p, M)
    keys, ids, pos = _scored(coarse_logp.gather(1, groups), groups, fine_logits, slots, everyone)
    out = {}
    for m in widths:
        if m <= M:
            vals, top = _first_k(keys, ids, (pos < m) & (ids != slots.pad), k, slots.pad)
            out[m] = (vals, top, top != slots.pad)
            continue
        vals, top = _first_k(keys, ids, ids != slots.pad, k, slots.pad)
        todo, seen, width = everyone, groups, M
        while todo.numel() and width < m:
            # the best log-probability among the superclasses not scored yet (an upper bound of their keys)
            left_out = torch.ones((len(todo), S), dtype=torch.bool).scatter_(1, seen, False)
            bound = coarse_logp[todo].masked_fill(~left_out, float("-inf")).max(dim=1).values
            keep = ~(vals[todo, -1] > bound)  # rows whose k-th key a left-out superclass could still beat
            todo = todo[keep]
            if not todo.numel():
                break
            width = min(m, 2 * width)
            _, seen = topk_stable(coarse_p[todo], width)
            chunk = max(1, (1 << 22) // max(1, width * slots.width))
            for a in range(0, todo.numel(), chunk):
                r, g = todo[a : a + chunk], seen[a : a + chunk]
                kr, ir, _ = _scored(coarse_logp[r].gather(1, g), g, fine_logits, slots, r)
                vals[r], top[r] = _first_k(kr, ir, ir != slots.pad, k, slots.pad)
        out[m] = (vals, top, top != slots.pad)
    return out


#: an SKU outside the routed superclasses scores at most the decision's key minus this (log space): ranks after the
#: first never outscore it, so one score vector ranks like :func:`mix_global_ranks` (the cart's score graph)
MIX_GAP = 1e-4


def mix_global_ranks(
    vals: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    global_logp: torch.Tensor,
    coarse_p: torch.Tensor,
    sc: torch.Tensor,
    m: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ranks after the first over ALL SKUs: rank 1 stays the hierarchy's decision; ranks 2..k are the best of the
        routed candidates (key ``log p(s) + log p(c | s)``) and of the SKUs outside the top-``m`` superclasses, scored
        by the global scorer's calibrated ``log p(c)`` (``global_logp`` (n, C) float64; both are log-probabilities of
        one SKU, so they mix; ties go to the routed candidate; a global score above the decision's is capped just below it,
    :data:`MIX_GAP`). ``vals`` / ``idx`` / ``valid`` (n, k) as
        :func:`routed_topk_widths` returns them, ``sc`` (C,) the superclass of each SKU."""
    n, k = vals.shape
    _, top = topk_stable(coarse_p, m)
    routed = torch.zeros(coarse_p.shape, dtype=torch.bool).scatter_(1, top, True)[:, sc]
    gv, gi = topk_stable(global_logp.masked_fill(routed, float("-inf")), k - 1)
    gv = torch.minimum(gv, vals[:, :1] - MIX_GAP)  # never above the decision: scores fall with the rank
    cand_v = torch.cat([vals[:, 1:].masked_fill(~valid[:, 1:], float("-inf")), gv], dim=1)
    cand_i = torch.cat([idx[:, 1:], gi], dim=1)
    order = torch.sort(cand_v, dim=1, descending=True, stable=True).indices[:, : k - 1]
    new_v = torch.cat([vals[:, :1], cand_v.gather(1, order)], dim=1)
    new_i = torch.cat([idx[:, :1], cand_i.gather(1, order)], dim=1)
    new_ok = torch.cat([valid[:, :1], torch.isfinite(cand_v.gather(1, order))], dim=1)
    return new_v, torch.where(new_ok, new_i, idx.new_zeros(())), new_ok


def routed_topk(
    coarse_logp: torch.Tensor, coarse_p: torch.Tensor, fine_logits: torch.Tensor, slots: GroupSlots, m: int, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`routed_topk_widths` for one width: ``(keys, SKU ids, valid)``."""
    return routed_topk_widths(coarse_logp, coarse_p, fine_logits, slots, (m,), k)[
        min(max(1, int(m)), coarse_p.shape[1])
    ]


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


__all__ = [
    "AddClassesResult",
    "HierarchicalClassifier",
    "routed_topk",
    "routed_topk_widths",
    "resolve_device",
]
