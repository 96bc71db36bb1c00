"""Hierarchical coarse-to-fine classifier with soft routing and a no-retraining new-SKU fast path.

Scoring: for an image x, the coarse head gives ``p(s | x)`` over superclasses and the fine head gives, inside every
superclass, ``p(c | s, x)`` = softmax over that superclass's SKUs only. With routing width ``m`` the candidates are
the SKUs of the top-``m`` superclasses, each scored ``p(s(c) | x) * p(c | s(c), x)`` and ranked together; other
SKUs are never predicted. ``m = 1`` is exactly the hard two-stage split (argmax superclass, then the fine softmax
inside it): the ranking key is computed in float64 log-space, where adding the constant ``log p(s*)`` cannot
reorder candidates. Rows with fewer than k candidates are padded with label ``""`` and score 0.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ._common import (
    EmbeddingInputError,
    Predictions,
    ProgressFn,
    batched_rows,
    check_embeddings,
    check_xy,
    encode_labels,
    grouped_log_softmax,
    labels_from_indices,
    resolve_device,
    topk_stable,
)
from .coarse import CoarseHead, train_coarse
from .dense import DenseConfig
from .fine import FineConfig, FineHead, train_fine
from .lda_router import LDARouter
from .prototypes import class_sums
from .serialization import ModelFormatError, nest, pack, read_config, require, sub, unpack
from .specialists import SpecialistHead

#: The coarse (router) and fine stages a hierarchical bundle may hold, by ``kind``.
COARSE_KINDS = {cls.KIND: cls for cls in (CoarseHead, LDARouter)}
FINE_KINDS = {cls.KIND: cls for cls in (FineHead, SpecialistHead)}

ROW_BATCH = 4096
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
        m: int = 3,
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
        X = check_embeddings(X, dim=self.dim)
        m = self.m if m is None else int(m)
        if m < 1 or k < 1:
            raise ValueError(f"need k >= 1 and m >= 1, got k={k}, m={m}")
        m = min(m, self.n_superclasses)
        kk = min(k, len(self.classes))
        sc = torch.from_numpy(self.sc_of_index)
        labels, scores, top_sc, coarse_all = [], [], [], []
        for sl in batched_rows(len(X), ROW_BATCH):
            coarse_logp = torch.log_softmax(self.coarse.logits(X[sl]).double(), dim=1)
            coarse_p = coarse_logp.exp()
            cond_log = grouped_log_softmax(self.fine.class_logits(X[sl]).double(), sc, self.n_superclasses)
            _, routed_sc = topk_stable(coarse_p, m)
            routed = torch.zeros_like(coarse_p, dtype=torch.bool).scatter_(1, routed_sc, True)
            cand = routed[:, sc]
            key = coarse_logp[:, sc] + cond_log
            key = key.masked_fill(~cand, float("-inf"))
            vals, idx = topk_stable(key, kk)
            valid = torch.gather(cand, 1, idx)
            labels.append(labels_from_indices(idx.numpy(), valid.numpy(), self.classes))
            scores.append(torch.where(valid, vals.exp(), torch.zeros_like(vals)).float().numpy())
            top_sc.append(torch.where(valid[:, 0], sc[idx[:, 0]], torch.full_like(idx[:, 0], -1)).numpy())
            coarse_all.append(coarse_p.float().numpy())
        lab, sco = np.concatenate(labels), np.concatenate(scores)
        if kk < k:
            lab = np.concatenate([lab, np.full((lab.shape[0], k - kk), "", dtype=lab.dtype)], axis=1)
            sco = np.concatenate([sco, np.zeros((sco.shape[0], k - kk), np.float32)], axis=1)
        return Predictions(
            labels=lab,
            scores=sco,
            superclass=np.concatenate(top_sc),
            coarse_proba=np.concatenate(coarse_all),
            extra={"m": m},
        )

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


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def train_hierarchical(
    X: np.ndarray,
    y: np.ndarray,
    superclass_of_class: Mapping[str, int],
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    coarse_config: DenseConfig | None = None,
    fine_config: FineConfig | None = None,
    m: int = 3,
    n_superclasses: int | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> HierarchicalClassifier:
    """Train coarse + fine heads on the same embeddings and assemble the classifier."""
    X, y = check_xy(X, y)
    coarse = train_coarse(X, y, superclass_of_class, X_val, y_val, coarse_config, n_superclasses, device, progress)
    used = {c: superclass_of_class[c] for c in np.unique(y).tolist()}
    fine = train_fine(X, y, used, X_val, y_val, fine_config, device, progress)
    return HierarchicalClassifier(coarse, fine, used, m)


__all__ = ["AddClassesResult", "HierarchicalClassifier", "train_hierarchical", "resolve_device"]
