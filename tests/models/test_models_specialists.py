"""Specialist hierarchy: LDA statistics, confusion superclasses, LDA router, specialist head, end-to-end trainer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from skurec.models import (
    HierarchicalClassifier,
    LDARouter,
    ModelFormatError,
    SpecialistConfig,
    SpecialistHead,
    SpecialistHierarchyConfig,
    confusion_superclasses,
    l2_normalize,
    lda_statistics,
    load_classifier,
    train_lda_router,
    train_specialist_hierarchy,
    train_specialists,
)
from skurec.models.confusion_superclasses import capped_linkage
from skurec.models.lda import lda_rows
from skurec.models.serialization import TENSORS_FILE

DIM = 24


@dataclass
class Cat:
    X: np.ndarray
    y: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    Xt: np.ndarray
    yt: np.ndarray
    family: dict[str, int]


def make_catalogue(n_fam: int = 5, per_fam: int = 3, n_train: int = 40, seed: int = 0, local_axes: bool = True) -> Cat:
    """Families of look-alike SKUs. Siblings of family ``f`` differ along a direction ``u_f``; with ``local_axes``
    family ``f + 1`` varies a lot *along u_f* (a nuisance there). A pooled covariance therefore distrusts ``u_f``
    everywhere, while family ``f``'s own covariance is tight along it: local whitening is what separates its
    siblings (heteroscedastic families, the case superclass-local specialists exist for)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_fam, DIM)) * 3.0
    u = rng.standard_normal((n_fam, DIM))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    out = {"train": ([], []), "val": ([], []), "test": ([], [])}
    family = {}
    for f in range(n_fam):
        for k in range(per_fam):
            name = f"f{f}-k{k}"
            family[name] = f
            mean = centres[f] + (k - (per_fam - 1) / 2) * 0.7 * u[f] + rng.standard_normal(DIM) * 0.02
            for split, n in (("train", n_train), ("val", 15), ("test", 15)):
                e = rng.standard_normal((n, DIM)) * 0.1
                if local_axes:
                    e += rng.standard_normal((n, 1)) * 1.5 * u[(f - 1) % n_fam][None, :]
                out[split][0].append(mean + e)
                out[split][1].extend([name] * n)
    arr = {
        s: (l2_normalize(np.concatenate(v[0]) + 8.0 * np.ones(DIM) / np.sqrt(DIM)), np.asarray(v[1]))
        for s, v in out.items()
    }
    return Cat(*arr["train"], *arr["val"], *arr["test"], family)


@pytest.fixture(scope="module")
def cat() -> Cat:
    return make_catalogue()


@pytest.fixture(scope="module")
def trained(cat: Cat):
    return train_specialist_hierarchy(
        cat.X, cat.y, cat.Xv, cat.yv, SpecialistHierarchyConfig(max_sizes=(3, 5), specialists=SpecialistConfig(rank=4))
    )


def _codes(y: np.ndarray) -> tuple[list[str], np.ndarray]:
    classes = sorted(np.unique(y).tolist())
    idx = {c: i for i, c in enumerate(classes)}
    return classes, np.asarray([idx[c] for c in y])


def test_lda_statistics_match_numpy(cat: Cat) -> None:
    classes, codes = _codes(cat.y)
    st = lda_statistics(cat.X, codes, len(classes))
    means = np.stack([cat.X[codes == c].mean(0) for c in range(len(classes))])
    R = cat.X - means[codes]
    Sw = R.T @ R / (len(cat.X) - len(classes))
    assert np.allclose(st.means, means, atol=1e-6)
    assert np.allclose((st.evecs * st.evals) @ st.evecs.T, Sw, atol=1e-5)
    lam = 0.3
    Sigma = (1 - lam) * Sw + lam * np.trace(Sw) / DIM * np.eye(DIM)
    assert np.allclose(st.precision(lam), np.linalg.inv(Sigma), rtol=1e-4, atol=1e-3)
    H = st.whitener(lam)
    assert np.allclose(H.T @ H, st.precision(lam), rtol=1e-6, atol=1e-6)
    W, b = lda_rows(st.means, st.mu0, st.precision(lam))
    x = cat.Xv[:5].astype(np.float64)
    logdens = np.stack([-0.5 * np.einsum("nd,dk,nk->n", x - m, st.precision(lam), x - m) for m in st.means], 1)
    g = x @ W.T + b
    # equal up to a per-row constant (the -x'Px/2 term): identical softmax
    assert np.allclose(g - g.max(1, keepdims=True) - (logdens - logdens.max(1, keepdims=True)), 0, atol=1e-2)


def test_capped_linkage_merges_closest_first_and_respects_the_cap() -> None:
    pts = np.array([0.0, 0.1, 0.2, 5.0, 5.1, 9.0])
    dist = np.abs(pts[:, None] - pts[None, :])
    assert capped_linkage(dist, 3).tolist() == [0, 0, 0, 1, 1, 1]
    assert capped_linkage(dist[:5, :5], 3).tolist() == [0, 0, 0, 1, 1]
    lab = capped_linkage(dist, 2)
    assert np.bincount(lab).max() <= 2 and lab[0] == lab[1] and lab[3] == lab[4]
    assert capped_linkage(dist, 1).tolist() == list(range(6))


def test_confusion_superclasses_group_look_alikes(cat: Cat) -> None:
    sc = confusion_superclasses(cat.X, cat.y, max_size=3)
    assert sc.sizes().max() <= 3 and sc.n_superclasses == 5
    groups = {}
    for c, s in sc.superclass_of_class().items():
        groups.setdefault(s, set()).add(cat.family[c])
    assert all(len(f) == 1 for f in groups.values())  # every superclass is one family of look-alikes
    again = confusion_superclasses(cat.X, cat.y, max_size=3)
    assert np.array_equal(sc.assignment, again.assignment) and sc.projection_2d.shape == (15, 2)


def test_router_aggregates_the_global_lda_and_is_calibrated(cat: Cat) -> None:
    router = train_lda_router(cat.X, cat.y, cat.family, cat.Xv, cat.yv)
    P = router.predict_proba(cat.Xt)
    assert P.shape == (len(cat.Xt), 5) and np.allclose(P.sum(1), 1, atol=1e-5)
    # T = 1: the superclass probability is exactly the sum of the SKU posteriors of its members
    g = torch.softmax(router.class_logits(cat.Xt).double(), 1).numpy()
    T1 = LDARouter(router.classes, router.W, router.b, router.sc_of_index, 5, router.precision, router.mu0, 1.0)
    summed = np.stack([g[:, router.sc_of_index == s].sum(1) for s in range(5)], 1)
    assert np.allclose(T1.predict_proba(cat.Xt), summed, atol=1e-5)
    assert router.temperature > 0 and router.metrics["val_top1"] >= 0.9
    files = router.to_files()
    again = load_classifier(files)
    assert isinstance(again, LDARouter) and np.allclose(again.predict_proba(cat.Xt), P)


def test_specialists_beat_the_pooled_model_within_superclass_when_covariances_differ(cat: Cat) -> None:
    router = train_lda_router(cat.X, cat.y, cat.family, cat.Xv, cat.yv)
    head = train_specialists(cat.X, cat.y, cat.family, router, cat.Xv, cat.yv, SpecialistConfig(rank=4))
    G, F = head.expert_logits(cat.Xt)
    classes = head.classes
    truth_sc = np.asarray([cat.family[c] for c in cat.yt])
    same = head.sc_of_index[None, :] == truth_sc[:, None]

    def within(L: torch.Tensor) -> float:
        pred = np.where(same, L.numpy(), -np.inf).argmax(1)
        return float(np.mean(np.asarray(classes)[pred] == cat.yt))

    assert within(F) > within(G) + 0.03, (within(F), within(G))
    assert head.beta > 0 and head.metrics["val_within_top1_specialist"] >= head.metrics["val_within_top1_global"]


def test_beta_zero_hierarchy_over_all_superclasses_is_the_flat_lda(cat: Cat) -> None:
    router = train_lda_router(cat.X, cat.y, cat.family, cat.Xv, cat.yv)
    router = LDARouter(
        router.classes, router.W, router.b, router.sc_of_index, 5, router.precision, router.mu0, 1.0, router.shrinkage
    )
    head = train_specialists(cat.X, cat.y, cat.family, router, cat.Xv, cat.yv, SpecialistConfig(betas=(0.0,)))
    assert head.beta == 0.0
    model = HierarchicalClassifier(router, head, cat.family, m=5)
    pred = model.predict_topk(cat.Xt, k=3)
    flat = torch.log_softmax(router.class_logits(cat.Xt).double(), 1)
    vals, idx = torch.sort(flat, dim=1, descending=True, stable=True)
    assert (pred.labels[:, 0] == np.asarray(router.classes)[idx[:, 0].numpy()]).all()
    assert np.allclose(pred.scores, vals[:, :3].exp().numpy(), atol=1e-5)


def test_m1_is_exactly_the_hard_split(trained, cat: Cat) -> None:
    model = trained.model
    hard = model.predict_topk(cat.Xt, k=3, m=1)
    top_sc = model.coarse.predict_proba(cat.Xt).argmax(1)
    logits = model.fine.class_logits(cat.Xt).numpy()
    for i in range(0, len(cat.Xt), 7):
        members = np.flatnonzero(model.sc_of_index == top_sc[i])
        order = members[np.argsort(-logits[i, members], kind="stable")][:3]
        expected = [model.classes[j] for j in order] + [""] * (3 - len(order))
        assert hard.labels[i].tolist() == expected
        assert hard.superclass[i] == top_sc[i]


def test_trained_hierarchy_is_accurate_and_not_below_flat(trained, cat: Cat) -> None:
    rep = trained.report
    assert rep["val_top1"] >= rep["val_flat_lda_top1"] - 1e-9  # validation never chooses worse than flat
    acc = float(np.mean(trained.model.predict_topk(cat.Xt, 1).labels[:, 0] == cat.yt))
    assert acc >= 0.9
    assert trained.model.m == rep["m"] and 1 <= rep["m"] <= rep["n_superclasses"]


def test_round_trip_and_corruption(trained, cat: Cat) -> None:
    files = trained.model.to_files()
    again = load_classifier(files)
    assert isinstance(again.coarse, LDARouter) and isinstance(again.fine, SpecialistHead)
    a, b = trained.model.predict_topk(cat.Xt, 3), again.predict_topk(cat.Xt, 3)
    assert (a.labels == b.labels).all() and np.allclose(a.scores, b.scores)
    assert again.m == trained.model.m and again.fine.beta == trained.model.fine.beta
    blob = bytearray(files["fine/" + TENSORS_FILE])
    blob[-5] ^= 0xFF
    with pytest.raises(ModelFormatError, match="fine/"):
        load_classifier({**files, "fine/" + TENSORS_FILE: bytes(blob)})


def test_add_classes_without_retraining(cat: Cat) -> None:
    keep = ~np.char.startswith(cat.y.astype(str), "f4-k2")
    keep_v = ~np.char.startswith(cat.yv.astype(str), "f4-k2")
    res = train_specialist_hierarchy(
        cat.X[keep],
        cat.y[keep],
        cat.Xv[keep_v],
        cat.yv[keep_v],
        SpecialistHierarchyConfig(max_sizes=(3,), specialists=SpecialistConfig(rank=4)),
    )
    old = res.model
    assert "f4-k2" not in old.classes
    out = old.add_classes(cat.X[~keep], cat.y[~keep])
    new = out.model
    assert new.classes == old.classes + ["f4-k2"] and new.coarse.classes == new.classes
    sibling_sc = old.superclass_of_class()["f4-k0"]
    assert out.superclass_of_new == {"f4-k2": sibling_sc}
    # old parameters untouched: the old SKUs' rows are identical
    n_old = len(old.classes)
    assert np.array_equal(new.fine.Ws[:n_old], old.fine.Ws) and np.array_equal(new.coarse.W[:n_old], old.coarse.W)
    # the new SKU's specialist row equals a fresh closed-form row from its mean
    W_new, _ = old.fine.specialist_rows(
        cat.X[~keep].astype(np.float64).mean(0, keepdims=True), np.asarray([sibling_sc])
    )
    assert np.allclose(new.fine.Ws[-1], W_new[0], rtol=1e-4, atol=1e-4)
    test_new = cat.yt == "f4-k2"
    acc_new = float(np.mean(new.predict_topk(cat.Xt[test_new], 1).labels[:, 0] == "f4-k2"))
    assert acc_new >= 0.8
    again = load_classifier(new.to_files())
    assert (again.predict_topk(cat.Xt, 2).labels == new.predict_topk(cat.Xt, 2).labels).all()


def test_route_m_is_chosen_on_validation_top1_then_top3(trained, cat: Cat) -> None:
    from skurec.models import choose_route_m

    model = trained.model
    m, top1 = choose_route_m(model, cat.Xv, cat.yv, m_grid=(1, 2, 3), tolerance=0.0)

    def top3(width: int) -> float:
        labels = model.predict_topk(cat.Xv, k=3, m=width).labels
        return float(np.mean((labels == cat.yv[:, None]).any(axis=1)))

    best = max(top1.values())
    eligible = [w for w, v in top1.items() if v >= best]
    assert m in eligible and top1[m] == best
    assert top3(m) == max(top3(w) for w in eligible)  # among equal top-1 widths, the best top-3 wins
