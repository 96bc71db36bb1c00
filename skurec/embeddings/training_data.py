"""Training data: the audited catalogue joined with the cached embeddings of the current encoder.

When the current encoder has train-time augmented views (``train_views`` in the current-encoder document, written by
the embedding asset), ``TrainingData.fit_split`` is the train split followed by each view's cached rows of the same
images (view-major: all of view 0, then view 1, ...; ``image_ids`` and ``y`` repeated), so ``TrainingData.fit`` has
(1 + K) x the train rows. ``train``, ``val`` and ``test`` (and so lineage) never contain a view.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from skurec.embeddings.cache import EmbeddingCache
from skurec.layout import CURRENT_ENCODER
from skurec.store.workspace import Workspace

#: the share of missing embeddings (images that failed to embed, or train-time view rows) training tolerates
MAX_MISSING_SHARE = 0.05


class TrainingDataError(ValueError):
    """The catalogue cannot be trained on (too few classes, missing embeddings, ...)."""


@dataclass
class Split:
    image_ids: list[str]
    X: np.ndarray
    y: np.ndarray  # str sku ids

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class TrainingData:
    encoder: dict
    train: Split
    val: Split
    test: Split
    classes: list[str]
    group_of_class: dict[str, str] = field(default_factory=dict)
    name_of_class: dict[str, str] = field(default_factory=dict)
    # Rows the heads are fitted on: the train images plus their train-time augmented views (None: the train split).
    # Lineage (training table, image-id hashes) always names ``train``: a view is a row of an image, not an image.
    fit_split: Split | None = None

    @property
    def fit(self) -> Split:
        """The rows the heads train on (``train`` plus its cached train-time views when the encoder has them)."""
        return self.fit_split if self.fit_split is not None else self.train

    @property
    def encoder_id(self) -> str:
        return self.encoder["encoder_id"]

    @property
    def eval_split_name(self) -> str:
        """Evaluation scores the pinned ``test`` rows when the catalogue has them, else the validation split."""
        return "test" if len(self.test) else "val"

    @property
    def eval_split(self) -> Split:
        return self.test if len(self.test) else self.val


def current_encoder(ws: Workspace) -> dict:
    if not ws.exists(CURRENT_ENCODER):
        raise TrainingDataError("no embeddings yet: materialise image_embeddings first")
    return ws.read_json(CURRENT_ENCODER)


def load_training_data(ws: Workspace, min_classes: int = 2) -> TrainingData:
    """Active images of the audited catalogue with their embeddings, by split.

    Loaded once per process and catalogue state: a full rebuild asks for it in about ten steps (prototypes,
    superclasses, coarse, fine, flat baselines, evaluation, candidate, gate, calibration), all of which see the same
    snapshot, so the join of the image table with the embedding cache runs once. The key is the content of the image
    and class tables, the current-encoder document and a listing stamp of the cache folders (name, size, modification time of each part),
    so any change of the catalogue or the cache loads afresh. The
    returned object is shared by every caller in the process: never modify it (copy what you change)."""
    encoder = current_encoder(ws)
    key = (ws.uri(), min_classes, snapshot_key(ws, encoder))
    hit = _LOADED.get(key)
    if hit is not None:
        return hit
    data = _load(ws, encoder, min_classes)
    _LOADED.clear()  # one snapshot at a time: memory stays that of one catalogue
    _LOADED[key] = data
    return data


#: the process's loaded training data, keyed by (workspace, min_classes, snapshot key); see load_training_data
_LOADED: dict[tuple, TrainingData] = {}


def snapshot_key(ws: Workspace, encoder: dict | None = None) -> str:
    """A digest of everything load_training_data reads: the image and class tables' bytes, the current encoder and
    the cache parts of it and of its train-time views. Equal keys mean the same training, validation and test data."""
    encoder = encoder if encoder is not None else current_encoder(ws)
    h = hashlib.sha256(json.dumps(encoder, sort_keys=True, default=str).encode())
    for name in ("images", "classes"):
        h.update(hashlib.sha256(ws.read_bytes(ws.table_rel(name))).digest())
    cache = EmbeddingCache(ws)
    ids = [encoder["encoder_id"], *((encoder.get("train_views") or {}).get("encoder_ids") or [])]
    for encoder_id in ids:
        h.update(_listing_stamp(ws, cache.rel_dir(encoder_id)).encode())
    return h.hexdigest()


def _listing_stamp(ws: Workspace, rel_dir: str) -> str:
    """Name, size and modification stamp of every file in a folder (one listing, also on object stores): a part
    that is added, removed or rewritten in place changes it."""
    if not ws.exists(rel_dir):
        return ""
    try:
        entries = ws.fs.ls(ws.path(rel_dir), detail=True, refresh=True)
    except TypeError:  # filesystems without the refresh keyword
        entries = ws.fs.ls(ws.path(rel_dir), detail=True)
    keep = ("name", "size", "mtime", "ETag", "LastModified", "last_modified")
    rows = sorted(json.dumps({k: e.get(k) for k in keep}, sort_keys=True, default=str) for e in entries)
    return "\n".join(rows)


def _load(ws: Workspace, encoder: dict, min_classes: int) -> TrainingData:
    images = ws.read_table("images")
    images = images[images["active"]].sort_values("image_id").reset_index(drop=True)
    classes = sorted(images["sku_id"].unique().tolist())
    if len(classes) < min_classes:
        raise TrainingDataError(
            f"only {len(classes)} active class(es) (classes need >= min_samples accepted images); need >= {min_classes}"
        )
    cache = EmbeddingCache(ws)
    ids, X = cache.load(encoder["encoder_id"])
    index = {i: k for k, i in enumerate(ids)}
    present = images["image_id"].isin(index)
    if not present.all():
        missing = int((~present).sum())
        # Images that failed to embed are reported by the embedding asset; train on the rest.
        images = images[present].reset_index(drop=True)
        if missing > MAX_MISSING_SHARE * (len(images) + missing):
            raise TrainingDataError(f"{missing} active images have no embedding; re-materialise image_embeddings")

    def split(name: str) -> Split:
        part = images[images["split"] == name]
        rows = [index[i] for i in part["image_id"]]
        dim = X.shape[1] if X.size else 0
        return Split(
            part["image_id"].tolist(),
            X[rows] if rows else np.zeros((0, dim), np.float32),
            part["sku_id"].to_numpy(dtype=object).astype(str),
        )

    classes_tbl = ws.read_table("classes").set_index("sku_id")
    groups = {c: g for c, g in classes_tbl["group_id"].items() if c in set(classes) and isinstance(g, str) and g}
    names = {c: n for c, n in classes_tbl["sku_name"].items() if c in set(classes) and isinstance(n, str) and n}
    data = TrainingData(encoder, split("train"), split("val"), split("test"), classes, groups, names)
    missing_train = sorted(set(classes) - set(data.train.y))
    if missing_train:
        raise TrainingDataError(f"active classes without training images: {missing_train[:10]}")
    views = encoder.get("train_views") or {}
    if views.get("k"):
        data.fit_split = with_train_views(cache, data.train, views)
    return data


def with_train_views(cache: EmbeddingCache, train: Split, views: dict) -> Split:
    """``train`` followed by the cached rows of each train-time view (``views``: the ``train_views`` entry of the
    current-encoder document). A train image without a cached view row is left out of that view; more than
    :data:`MAX_MISSING_SHARE` of the view rows missing is a :class:`TrainingDataError`."""
    view_ids = list(views.get("encoder_ids") or [])
    if len(view_ids) != int(views["k"]):
        raise TrainingDataError(f"the current encoder names {len(view_ids)} train-view ids for k={views['k']}")
    dim = train.X.shape[1]
    ids, blocks, labels = [list(train.image_ids)], [train.X], [train.y]
    n_missing = 0
    for view_id in view_ids:
        vids, VX = cache.load(view_id)
        index = {i: k for k, i in enumerate(vids)}
        keep = np.fromiter((i in index for i in train.image_ids), dtype=bool, count=len(train))
        n_missing += int((~keep).sum())
        if not keep.any():
            continue
        if VX.shape[1] != dim:
            raise TrainingDataError(
                f"train-time view rows {view_id} have {VX.shape[1]} dims, the train rows {dim}: re-materialise "
                "image_embeddings"
            )
        kept = [i for i, k in zip(train.image_ids, keep) if k]
        ids.append(kept)
        blocks.append(VX[[index[i] for i in kept]])
        labels.append(train.y[keep])
    expected = len(train) * len(view_ids)
    if n_missing > MAX_MISSING_SHARE * expected:
        raise TrainingDataError(
            f"{n_missing} of {expected} train-time view rows ({len(view_ids)} views x {len(train)} train images, "
            f"seed {views.get('seed')}) have no cached embedding (more than {MAX_MISSING_SHARE:.0%}); "
            "re-materialise image_embeddings with the same SKUREC_ENCODER_TRAIN_VIEWS / _SEED"
        )
    return Split(
        [i for part in ids for i in part],
        np.concatenate(blocks, axis=0).astype(np.float32, copy=False),
        np.concatenate(labels).astype(str),
    )
