"""The hierarchy's vectorised training and scoring paths equal their plain references, and the LDA statistics
artifact (written once by ``superclasses``, reused by ``coarse_model`` / ``fine_model``) round-trips and is refused
when stale."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest
import torch
from support.files import write_folder_catalogue

from skurec import layout
from skurec.models import (
    HierarchicalClassifier,
    LDARouter,
    ModelFormatError,
    SpecialistConfig,
    fit_lda_statistics,
    l2_normalize,
    rows_sha256,
    statistics_files,
    statistics_from_files,
    train_lda_router,
    train_specialists,
)
from skurec.models._common import GroupSlots, grouped_log_softmax, topk_stable
from skurec.models.confusion_superclasses import capped_linkage
from skurec.models.hierarchical import routed_topk
from skurec.models.lda import lda_rows
from skurec.models.lda_router import TEMPERATURE_GRID, fit_temperature, group_logsumexp
from skurec.models.local_whitening import _local_factors, local_factors
from skurec.models.serialization import TENSORS_FILE
from skurec.models.specialist_search import search_beta
from skurec.models.superclasses import canonical_labels
from skurec.store.training_artifacts import StaleArtifactError, load_lda_statistics, write_lda_statistics
from skurec.store.workspace import Workspace


def _catalogue(n_classes: int = 24, per_class: int = 30, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim))
    means[1::2] = means[::2] + 0.3 * rng.standard_normal((n_classes // 2, dim))  # look-alike pairs
    y = np.repeat([f"s{c:02d}" for c in range(n_classes)], per_class)
    X = l2_normalize(np.repeat(means, per_class, 0) + 0.4 * rng.standard_normal((len(y), dim)))
    split = rng.random(len(y)) < 0.25
    return X[~split], y[~split], X[split], y[split]


# ------------------------------------------------------------------------------------------------ references
def _reference_capped_linkage(dist: np.ndarray, max_size: int) -> np.ndarray:
    C = dist.shape[0]
    parent, size = np.arange(C), np.ones(C, dtype=np.int64)

    def find(a: int) -> int:
        while parent[a] != a:
            a = int(parent[a])
        return a

    iu, ju = np.triu_indices(C, 1)
    for o in np.argsort(dist[iu, ju], kind="stable").tolist():
        a, b = find(int(iu[o])), find(int(ju[o]))
        if a != b and size[a] + size[b] <= max_size:
            parent[b] = a
            size[a] += size[b]
    return canonical_labels(np.asarray([find(i) for i in range(C)]))


def _reference_routed_topk(coarse_logp, fine_logits, sc, n_sc, m, k):
    """The dense scoring: every SKU's key, the non-routed ones masked, one stable sort over all SKUs."""
    sct = torch.from_numpy(sc)
    cond = grouped_log_softmax(fine_logits.double(), sct, n_sc)
    _, routed_sc = topk_stable(coarse_logp.exp(), m)
    routed = torch.zeros_like(coarse_logp, dtype=torch.bool).scatter_(1, routed_sc, True)
    cand = routed[:, sct]
    key = (coarse_logp[:, sct] + cond).masked_fill(~cand, float("-inf"))
    vals, idx = topk_stable(key, k)
    return vals, idx, torch.gather(cand, 1, idx)


def test_capped_linkage_equals_the_plain_kruskal_walk_with_ties() -> None:
    rng = np.random.default_rng(3)
    for C, cap in ((60, 3), (150, 4), (150, 8), (40, 2), (30, 1)):
        P = rng.standard_normal((C, 3))
        D = np.round(((P[:, None] - P[None]) ** 2).sum(-1), 1)  # rounding: many equal distances
        assert np.array_equal(capped_linkage(D, cap), _reference_capped_linkage(D, cap)), (C, cap)


@pytest.mark.parametrize("balanced", [True, False])
def test_routed_topk_equals_dense_scoring_for_every_width(balanced: bool) -> None:
    rng = np.random.default_rng(1 if balanced else 2)
    C, S, n = 40, 11, 64
    sc = np.repeat(np.arange(S), 4)[:C] if balanced else np.minimum(rng.geometric(0.35, C) - 1, S - 1)
    sc[:S] = np.arange(S)  # every superclass has a SKU
    fine = torch.from_numpy(np.round(rng.standard_normal((n, C)), 1).astype(np.float32))  # ties inside superclasses
    coarse_logp = torch.log_softmax(torch.from_numpy(rng.standard_normal((n, S)) * 3), dim=1)
    coarse_logp[:4] = torch.log_softmax(torch.zeros((4, S), dtype=torch.float64), 1)  # tied router rows
    slots = GroupSlots.of(sc, S)
    for m in (1, 2, 3, 5, S):
        for k in (1, 3, 7):
            vals, idx, valid = routed_topk(coarse_logp, coarse_logp.exp(), fine, slots, m, k)
            rv, ri, rvalid = _reference_routed_topk(coarse_logp, fine, sc, S, m, k)
            assert torch.equal(valid, rvalid), (m, k)
            assert torch.equal(torch.where(valid, idx, -1), torch.where(rvalid, ri, -1)), (m, k)
            assert torch.allclose(torch.where(valid, vals, 0.0), torch.where(rvalid, rv, 0.0), atol=1e-12), (m, k)


def test_group_slots_logsumexp_and_fit_temperature_equal_their_references() -> None:
    rng = np.random.default_rng(4)
    g = torch.from_numpy((rng.standard_normal((30, 25)) * 20).astype(np.float32))
    groups = rng.integers(0, 7, 25)
    groups[groups == 3] = 4  # an empty group
    got = group_logsumexp(g, torch.from_numpy(groups), 7)
    ref = torch.stack(
        [
            torch.logsumexp(g.double()[:, groups == s], 1) if (groups == s).any() else torch.full((30,), -np.inf)
            for s in range(7)
        ],
        1,
    )
    assert got.dtype == torch.float64 and torch.isinf(got[:, 3]).all()
    present = [s for s in range(7) if (groups == s).any()]
    assert torch.allclose(got[:, present], ref[:, present], atol=1e-5)
    for seed in range(30):
        r = np.random.default_rng(seed)
        L = torch.from_numpy(r.standard_normal((80, 6)) * r.uniform(0.2, 30))
        t = r.integers(0, 6, 80)
        nll = [float(torch.nn.functional.cross_entropy(L / T, torch.from_numpy(t))) for T in TEMPERATURE_GRID]
        assert fit_temperature(L, t) == TEMPERATURE_GRID[int(np.argmin(nll))]


def test_local_factors_batch_the_per_superclass_decomposition() -> None:
    X, y, _, _ = _catalogue(n_classes=20, per_class=30, dim=40)  # superclasses both narrower and wider than d
    classes, stats = fit_lda_statistics(X, y)
    codes = np.searchsorted(classes, y)
    sc = np.repeat(np.arange(7), 3)[:20]
    H = stats.whitener(0.3)
    Mz = (stats.means - stats.mu0) @ H.T
    U, g = local_factors(X, codes, sc, 7, Mz, H, stats.mu0, rank=6, mix=0.8)
    Hf, m0 = torch.from_numpy(H.astype(np.float32)), torch.from_numpy(stats.mu0.astype(np.float32))
    for s in range(7):
        rows = np.flatnonzero(sc[codes] == s)
        U0, g0 = _local_factors(X[rows], codes[rows], Mz, Hf, m0, 6, 0.8)
        # the local precision factor U' diag(gamma) U (signs of singular vectors are arbitrary)
        assert np.allclose((U[s].T * g[s]) @ U[s], (U0.T * g0) @ U0, atol=1e-4), s


def test_beta_search_equals_the_dense_hierarchy_scores() -> None:
    X, y, Xv, yv = _catalogue()
    classes = sorted(set(y))
    family = {c: i // 3 for i, c in enumerate(classes)}
    router = train_lda_router(X, y, family, Xv, yv)
    head = train_specialists(X, y, family, router, Xv, yv, SpecialistConfig(rank=4))
    G, F = head.expert_logits(Xv)
    route = torch.log_softmax(router.logits(Xv).double(), 1)
    cv = torch.from_numpy(np.searchsorted(classes, yv))
    sct = torch.from_numpy(head.sc_of_index)
    same = sct[None, :] == sct[cv][:, None]
    betas = (0.0, 0.5, 2.0)
    found = search_beta(G, F, route, head.sc_of_index, head.n_superclasses, cv.numpy(), betas, (1.0, 0.5))
    for b in betas:
        for s in (1.0, 0.5):
            fine = grouped_log_softmax(s * (G.double() + b * F.double()), sct, head.n_superclasses)
            top1 = float(((route[:, sct] + fine).argmax(1) == cv).double().mean())
            within = float((fine.masked_fill(~same, -np.inf).argmax(1) == cv).double().mean())
            assert found[(b, s)] == pytest.approx((top1, within), abs=1e-12), (b, s)
    assert head.metrics["val_within_top1_global"] == pytest.approx(
        float((G.masked_fill(~same, -np.inf).argmax(1) == cv).double().mean())
    )


def test_statistics_round_trip_through_safetensors_and_rows_without_the_precision() -> None:
    X, y, _, _ = _catalogue()
    classes, stats = fit_lda_statistics(X, y)
    files = statistics_files(stats, classes, rows_sha256(X, y))
    again, classes2, digest = statistics_from_files(files)
    assert classes2 == classes and digest == rows_sha256(X, y)
    for name in ("mu0", "means", "counts", "evals", "evecs"):
        assert np.array_equal(getattr(again, name), getattr(stats, name)), name
    W, b = again.rows(0.3)
    W0, b0 = lda_rows(stats.means, stats.mu0, stats.precision(0.3))
    assert np.allclose(W, W0, rtol=1e-5, atol=1e-4) and np.allclose(b, b0, rtol=1e-5, atol=1e-4)
    blob = bytearray(files[TENSORS_FILE])
    blob[-3] ^= 0xFF
    with pytest.raises(ModelFormatError):
        statistics_from_files({**files, TENSORS_FILE: bytes(blob)})
    assert rows_sha256(X[::-1], y[::-1]) != digest  # the rows, in order


def test_weight_zero_over_all_superclasses_stays_the_flat_lda() -> None:
    X, y, Xv, yv = _catalogue()
    classes = sorted(set(y))
    family = {c: i // 3 for i, c in enumerate(classes)}
    r = train_lda_router(X, y, family, Xv, yv)
    S = r.n_superclasses
    router = LDARouter(r.classes, r.W, r.b, r.sc_of_index, S, r.precision, r.mu0, 1.0, r.shrinkage)
    head = train_specialists(X, y, family, router, Xv, yv, SpecialistConfig(betas=(0.0,)))
    assert head.beta == 0.0 and np.array_equal(head.Wg, router.W)
    pred = HierarchicalClassifier(router, head, family, m=S).predict_topk(Xv, k=3)
    flat = torch.log_softmax(router.class_logits(Xv).double(), 1)
    vals, idx = torch.sort(flat, dim=1, descending=True, stable=True)
    assert (pred.labels[:, 0] == np.asarray(router.classes)[idx[:, 0].numpy()]).all()
    assert np.allclose(pred.scores, vals[:, :3].exp().numpy(), atol=1e-5)


def test_lda_statistics_artifact_is_refused_when_stale(tmp_path) -> None:
    X, y, _, _ = _catalogue()
    ws = Workspace(str(tmp_path))
    classes, stats = fit_lda_statistics(X, y)
    digest = write_lda_statistics(ws, stats, classes, X, y)
    loaded = load_lda_statistics(ws, X, y, digest)
    assert np.array_equal(loaded.evecs, stats.evecs)
    with pytest.raises(StaleArtifactError, match="records no LDA statistics"):
        load_lda_statistics(ws, X, y, None)
    with pytest.raises(StaleArtifactError, match="computed on other training rows"):
        load_lda_statistics(ws, X[1:], y[1:], digest)  # e.g. the fit rows changed, superclasses not re-run
    classes2, stats2 = fit_lda_statistics(X[1:], y[1:])
    other = write_lda_statistics(ws, stats2, classes2, X[1:], y[1:])
    with pytest.raises(StaleArtifactError, match="not the one the superclasses were derived from"):
        load_lda_statistics(ws, X, y, digest)
    assert other != digest


def test_coarse_and_fine_refuse_statistics_of_other_rows(tmp_path) -> None:
    from skurec_assets.embeddings import image_embeddings
    from skurec_assets.ingest import audited_catalogue
    from skurec_assets.training import coarse_model, fine_model, superclasses_asset
    from skurec_resources import CatalogueResource, EncoderResource, StorageResource

    cat = write_folder_catalogue(tmp_path / "cat", {f"k{i}": 6 for i in range(5)})
    resources = {
        "storage": StorageResource(workdir=str(tmp_path / "work")),
        "catalogue": CatalogueResource(location=str(cat), min_samples=3),
        "encoder": EncoderResource(name="tiny_random_vit", batch_size=8, device="cpu"),
    }
    assets = [audited_catalogue, image_embeddings, superclasses_asset, coarse_model, fine_model]
    assert dg.materialize(assets, resources=resources).success
    ws = Workspace(str(tmp_path / "work"))
    doc = ws.read_json(layout.SUPERCLASSES_JSON)
    files = ws.read_json(f"{layout.LDA_STATISTICS_DIR}/_files.json")
    assert doc["lda_statistics_digest"] and set(files) == {"config.json", "tensors.safetensors"}
    # statistics of other rows under the recorded digest: the rows digest refuses them
    from skurec.embeddings.training_data import load_training_data

    fit = load_training_data(ws).fit
    X2 = l2_normalize(fit.X + 0.01)
    classes2, stats2 = fit_lda_statistics(X2, fit.y)
    doc["lda_statistics_digest"] = write_lda_statistics(ws, stats2, classes2, X2, fit.y)
    ws.write_json(layout.SUPERCLASSES_JSON, doc)
    for asset in (coarse_model, fine_model):
        with pytest.raises(StaleArtifactError, match="other training rows"):
            dg.materialize([asset], resources=resources)
    # a statistics folder the superclasses were not derived from: the digest refuses it
    doc["lda_statistics_digest"] = "0" * 64
    ws.write_json(layout.SUPERCLASSES_JSON, doc)
    with pytest.raises(StaleArtifactError, match="not the one"):
        dg.materialize([coarse_model], resources=resources)
