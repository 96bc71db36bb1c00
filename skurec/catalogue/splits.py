"""Which classes are trained on (tiers) and which split each accepted image is in, for :func:`.audit.audit`.

The audit gives each accepted image its first split (pinned by the manifest, or :func:`split_hash` of its image id)
when it builds its rows; :func:`tiers_and_splits` then sets the tiers and settles the splits. Rules (each one tested,
through the audit):

* Two tiers, one model. A class's *labelled* images are its accepted images not pinned to ``test``. A class with
  at least ``min_samples`` of them is in the **head** tier; one with at least ``min_shots`` (but fewer than
  ``min_samples``) is in the **tail** tier. Both are ``active`` (trained on, by the same hierarchy: its
  shared-covariance scorer handles a few-shot SKU). Classes below ``min(min_shots, min_samples)`` stay in the tables
  (``active=False``, ``status='below_min_samples'``, ``tier='untrained'``) and are reported, but are not trained on.
  A class left without any ``train`` image by pinned splits is not trained on either (``classes_without_train``).
* Split: ``val`` when a hash of the image id falls below ``val_fraction``, else ``train`` — so an image keeps its
  split forever, whatever images arrive later. A row's ``split`` column constrains this: ``test`` and ``val`` pin
  the row; ``train`` means "not test", so the validation split is carved out of pinned-train rows by the same hash,
  unless the row's manifest (its ``source``) lists explicit ``val`` rows itself, in which case those are the
  validation split and its ``train`` rows stay train. ``split_pinned`` is True when the manifest fixed the row's
  split (test, val, or train next to explicit val rows). An active class with no hashed ``val`` image gives its
  lowest-hash unpinned image to ``val`` when it keeps at least one ``train`` image; active classes still without a
  validation image are listed in the summary (``active_classes_without_val``). A tail class gets no such extra
  validation image (a 5-image SKU cannot give up one of its few training images): it keeps the stable hash split as
  long as that leaves at least one ``train`` image (else its highest-hash unpinned ``val`` image goes back to
  ``train``); how many tail classes have validation images is in the summary (``tail_validation``).
* Test split. A catalogue whose manifest pins ``test`` rows keeps exactly those (``test_split: "given"``). One with
  no test row at all gets a test split carved by the same stable hash (``test_split: "carved"``): an unpinned image of
  a **head** class whose hash falls in ``[val_fraction, val_fraction + test_fraction)`` is ``test`` (so ~10 % of the
  head's images, disjoint from validation; never a row a manifest marked ``train``, which means "not test"), unless
  that would leave its class without a train image; tail and
  untrained classes keep every image they have. Carved test images count towards the tiers like any labelled image
  (carving never moves a class to another tier). ``test_fraction=0`` disables it (``test_split: "none"``). Like every
  hashed split, a carved one is kept when images arrive (``keep_splits``); it is dropped when the catalogue gains a
  given test split or carving is disabled. The summary says which (``test_split``) and how much (``test_carve``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol

import pandas as pd

HEAD, TAIL, UNTRAINED = "head", "tail", "untrained"
TRAINED_TIERS = (HEAD, TAIL)


class SplitSettings(Protocol):
    """What the tiers and splits read of :class:`~skurec.catalogue.audit.AuditConfig` (its fields and defaults)."""

    @property
    def min_samples(self) -> int: ...
    @property
    def min_shots(self) -> int: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def test_fraction(self) -> float: ...


def split_hash(image_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by the image id alone."""
    return int(hashlib.sha256(f"{salt}:{image_id}".encode()).hexdigest()[:15], 16) / float(16**15)


def tiers_and_splits(
    images: pd.DataFrame, config: SplitSettings, keep_splits: pd.DataFrame | None
) -> tuple[pd.DataFrame, dict[str, str], list[str], str]:
    """Each class's tier, the settled splits and the ``active`` flag of the audit's accepted ``images`` (with their
    first split, ``split_pinned``, the hash ``_h`` and ``_not_test``: the manifest said ``train``); returns the images
    (without ``_h`` and ``_not_test``), the tiers,
    the classes that pinned splits leave without a train image (reported, not trained) and where the test split
    comes from (``given``, ``carved`` or ``none``)."""
    tier = class_tiers(images, config)
    given = bool(((images["split"] == "test") & images["split_pinned"]).any()) if len(images) else False
    carving = not given and config.test_fraction > 0
    if carving:
        _carve_test(images, tier, config)
    images["active"] = images["sku_id"].map(tier).isin(TRAINED_TIERS).astype(bool)
    _settle_splits(images, tier)
    # The previous audit's hashed (unpinned) splits stay: an image never changes split when a batch arrives. A carved
    # test split stays while carving goes on; a given test split (or test_fraction 0) drops it.
    if keep_splits is not None and len(keep_splits) and len(images):
        before = keep_splits.loc[~keep_splits["split_pinned"].astype(bool)].set_index("image_id")["split"]
        if not carving:
            before = before[before != "test"]
        again = ~images["split_pinned"] & images["image_id"].isin(before.index)
        images.loc[again, "split"] = images.loc[again, "image_id"].map(before).to_numpy()
    # A class that pinned splits leave without a train image cannot be trained on: reported, not active.
    train_skus = set(images.loc[images["split"] == "train", "sku_id"])
    no_train = sorted(s for s, t in tier.items() if t in TRAINED_TIERS and s not in train_skus)
    for sku in no_train:
        tier[sku] = UNTRAINED
    images["active"] = images["sku_id"].map(tier).isin(TRAINED_TIERS).astype(bool)
    carved = carving and bool((images["split"] == "test").any())
    return (
        images.drop(columns=["_h", "_not_test"]),
        tier,
        no_train,
        "given" if given else "carved" if carved else "none",
    )


def _carve_test(images: pd.DataFrame, tier: Mapping[str, str], config: SplitSettings) -> None:
    """In place: the unpinned train images of head classes whose hash falls in ``[val_fraction, val_fraction +
    test_fraction)`` become ``test`` (not those a manifest marked ``train``), in every head class that keeps a train
    image afterwards."""
    lo, hi = config.val_fraction, min(1.0, config.val_fraction + config.test_fraction)
    head = images["sku_id"].map(tier).eq(HEAD)
    is_train = images["split"] == "train"
    free = ~images["split_pinned"].astype(bool) & ~images["_not_test"].astype(bool)
    carve = head & is_train & free & (images["_h"] >= lo) & (images["_h"] < hi)
    left = (is_train & ~carve).groupby(images["sku_id"]).sum()
    carve &= images["sku_id"].map(left).gt(0)
    images.loc[carve, "split"] = "test"


def class_tiers(images: pd.DataFrame, config: SplitSettings) -> dict[str, str]:
    """``sku_id -> tier`` from the labelled (non-``test``) image count: ``head`` (>= ``min_samples``), ``tail``
    (>= ``min(min_shots, min_samples)``) or ``untrained``."""
    if images.empty:
        return {}
    labelled = images.assign(_n=(images["split"] != "test").astype(int)).groupby("sku_id")["_n"].sum()
    floor = min(config.min_shots, config.min_samples)
    return {
        str(sku): HEAD if n >= config.min_samples else TAIL if n >= max(1, floor) else UNTRAINED
        for sku, n in labelled.items()
    }


def _settle_splits(images: pd.DataFrame, tier: Mapping[str, str]) -> None:
    """In place: every head class gets a validation image (its lowest-hash unpinned image) when it keeps a train
    image; every active class whose hash split left it no train image gets its highest-hash unpinned val image back.
    (All classes at once: a per-class loop costs ~1 ms a class, the whole audit's time at 500 SKUs.)"""
    active = images[images["active"]]
    if active.empty:
        return
    sku = active["sku_id"]
    n_train = (active["split"] == "train").groupby(sku).sum()
    has_val = (active["split"] == "val").groupby(sku).any()
    free = active[~active["split_pinned"].astype(bool)]
    # no train image: the highest-hash unpinned val image goes back to train
    no_train = set(n_train.index[n_train == 0])
    back = free[(free["split"] == "val") & free["sku_id"].isin(no_train)]
    to_train = back.groupby("sku_id")["_h"].idxmax()
    # a head class with >= 2 train images and no val image: its lowest-hash unpinned image becomes val
    is_head = pd.Series({s: tier.get(s) == HEAD for s in n_train.index}, dtype=bool)
    needs_val = set(n_train.index[(n_train >= 2) & ~has_val & is_head.reindex(n_train.index).to_numpy()])
    to_val = free[free["sku_id"].isin(needs_val)].groupby("sku_id")["_h"].idxmin()
    images.loc[to_train.to_numpy(), "split"] = "train"
    images.loc[to_val.to_numpy(), "split"] = "val"


def tiers_of_classes(classes: pd.DataFrame) -> dict[str, str]:
    """``sku_id -> tier`` from a classes table; a table written before tiers existed: active classes are head."""
    if classes is None or classes.empty:
        return {}
    if "tier" in classes.columns:
        return {str(s): str(t) for s, t in zip(classes["sku_id"], classes["tier"])}
    return {str(s): HEAD if st == "active" else UNTRAINED for s, st in zip(classes["sku_id"], classes["status"])}
