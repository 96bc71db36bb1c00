"""Coarse / fine heads (the case_study recipe's parts), hierarchical and flat models: accuracy, routing semantics, new SKUs, serialisation round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from skurec.models import (
    CoarseHead,
    DenseConfig,
    EmbeddingInputError,
    FineConfig,
    FineHead,
    FlatKNN,
    FlatPrototype,
    FlatSoftmax,
    HierarchicalClassifier,
    ModelFormatError,
    SoftmaxConfig,
    fit_flat_softmax,
    l2_normalize,
    load_classifier,
    topk_accuracy,
    train_coarse,
    train_fine,
)
from skurec.models.serialization import CONFIG_FILE, TENSORS_FILE

DIM = 32
COARSE_CFG = DenseConfig(max_epochs=25, patience=5, batch_size=128)
FINE_CFG = FineConfig(proj_dim=16, steps=60, episodes_per_step=4, eval_every=20, lda_samples=2000)


@dataclass
class Catalogue:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    superclass_of_class: dict[str, int]
    family_centres: np.ndarray


def make_catalogue(n_families: int = 6, per_family: int = 3, n_train: int = 30, seed: int = 0) -> Catalogue:
    """Separable families of similar SKUs in DIM dims; superclass = family."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_families, DIM)) * 2.0
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    labels: dict[str, list] = {"train": [], "val": [], "test": []}
    sc: dict[str, int] = {}
    for f in range(n_families):
        for k in range(per_family):
            name = f"sku-{f}-{k}"
            sc[name] = f
            mean = centres[f] + rng.standard_normal(DIM) * 0.7
            for split, n in (("train", n_train), ("val", 8), ("test", 10)):
                parts[split].append(mean + rng.standard_normal((n, DIM)) * 0.12)
                labels[split] += [name] * n
    arr = {s: l2_normalize(np.concatenate(parts[s])) for s in parts}
    return Catalogue(
        arr["train"],
        np.asarray(labels["train"]),
        arr["val"],
        np.asarray(labels["val"]),
        arr["test"],
        np.asarray(labels["test"]),
        sc,
        centres,
    )


@dataclass
class Trained:
    cat: Catalogue
    coarse: CoarseHead
    fine: FineHead
    hier: HierarchicalClassifier
    flat_linear: FlatSoftmax
    flat_proto: FlatPrototype


@pytest.fixture(scope="module")
def trained() -> Trained:
    cat = make_catalogue()
    coarse = train_coarse(
        cat.X_train, cat.y_train, cat.superclass_of_class, cat.X_val, cat.y_val, config=COARSE_CFG, device="cpu"
    )
    fine = train_fine(
        cat.X_train, cat.y_train, cat.superclass_of_class, cat.X_val, cat.y_val, config=FINE_CFG, device="cpu"
    )
    hier = HierarchicalClassifier(coarse, fine, cat.superclass_of_class, m=2)
    flat = fit_flat_softmax(
        cat.X_train, cat.y_train, cat.X_val, cat.y_val, SoftmaxConfig(max_epochs=10, min_steps=100), device="cpu"
    )
    return Trained(cat, coarse, fine, hier, flat, FlatPrototype.fit(cat.X_train, cat.y_train))


def hard_split(model: HierarchicalClassifier, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Explicit two-stage reference: argmax superclass, then the fine softmax over that superclass's SKUs."""
    proba = model.coarse.predict_proba(X)
    members: dict[int, list[str]] = {}
    for c, s in model.superclass_of_class().items():
        members.setdefault(s, []).append(c)
    labels = np.full((len(X), k), "", dtype=object)
    scores = np.zeros((len(X), k), dtype=np.float64)
    for i in range(len(X)):
        s = int(np.argmax(proba[i]))
        cands = [c for c in model.classes if c in members.get(s, [])]
        pred = model.fine.predict_within(X[i : i + 1], cands, k=k)
        n = min(k, len(cands))
        labels[i, :n] = pred.labels[0, :n]
        scores[i, :n] = proba[i, s] * pred.scores[0, :n]
    return labels.astype(str), scores


def test_all_models_are_near_perfect_on_a_separable_catalogue(trained: Trained) -> None:
    cat = trained.cat
    for name, model in {
        "soft": trained.hier,
        "hard": trained.hier.with_m(1),
        "flat_linear": trained.flat_linear,
        "flat_prototype": trained.flat_proto,
        "flat_knn": FlatKNN(cat.X_train, cat.y_train, device="cpu"),
    }.items():
        pred = model.predict_topk(cat.X_test, k=3)
        assert pred.labels.shape == (len(cat.y_test), 3) and pred.scores.shape == (len(cat.y_test), 3)
        assert topk_accuracy(pred.labels, cat.y_test, 1) >= 0.98, name
    assert trained.coarse.metrics["val_top1"] >= 0.98 and "val_top3" in trained.coarse.metrics
    assert trained.fine.metrics["episode_mode"] == "superclass"
    assert trained.fine.metrics["val_within_top1"] >= 0.98


def test_m1_is_exactly_the_hard_two_stage_split(trained: Trained) -> None:
    cat = trained.cat
    # perturb the inputs so that some images are routed to the wrong superclass: the comparison must cover them
    rng = np.random.default_rng(5)
    X = l2_normalize(cat.X_test + rng.standard_normal(cat.X_test.shape).astype(np.float32) * 0.25)
    soft1 = trained.hier.predict_topk(X, k=3, m=1)
    ref_labels, ref_scores = hard_split(trained.hier, X, 3)
    np.testing.assert_array_equal(soft1.labels, ref_labels)
    np.testing.assert_allclose(soft1.scores, ref_scores, rtol=1e-5, atol=1e-7)
    # a superclass has 3 SKUs, so top-3 of the hard split never pads here; with k=5 it must pad with ""
    padded = trained.hier.predict_topk(X, k=5, m=1)
    assert (padded.labels[:, 3:] == "").all() and (padded.scores[:, 3:] == 0).all()


def test_predictions_never_leave_the_routed_superclasses(trained: Trained) -> None:
    cat = trained.cat
    rng = np.random.default_rng(7)
    X = l2_normalize(rng.standard_normal((200, DIM)).astype(np.float32))  # off-distribution inputs
    sc = trained.hier.superclass_of_class()
    for m in (1, 2):
        pred = trained.hier.predict_topk(X, k=3, m=m)
        routed = np.argsort(-pred.coarse_proba, axis=1, kind="stable")[:, :m]
        for i in range(len(X)):
            for lab in pred.labels[i]:
                if lab:
                    assert sc[lab] in routed[i], (m, i, lab)
        top = pred.labels[:, 0]
        assert (pred.superclass == np.asarray([sc[t] for t in top])).all()
    # the conditional probabilities inside one superclass sum to 1
    fam0 = [c for c, s in sc.items() if s == 0]
    within = trained.fine.predict_within(cat.X_test[:5], fam0, k=len(fam0))
    np.testing.assert_allclose(within.scores.sum(axis=1), 1.0, atol=1e-5)
    assert set(within.labels.ravel()) <= set(fam0)


def test_soft_routing_scores_are_joint_probabilities(trained: Trained) -> None:
    pred = trained.hier.predict_topk(trained.cat.X_test, k=3, m=2)
    assert (np.diff(pred.scores, axis=1) <= 1e-7).all()
    assert (pred.scores >= 0).all() and (pred.scores <= 1 + 1e-6).all()
    np.testing.assert_allclose(pred.coarse_proba.sum(axis=1), 1.0, atol=1e-5)


def test_training_is_deterministic_on_cpu_and_reports_progress(trained: Trained) -> None:
    cat = trained.cat
    events: list[tuple[str, int]] = []
    again = train_coarse(
        cat.X_train,
        cat.y_train,
        cat.superclass_of_class,
        cat.X_val,
        cat.y_val,
        config=COARSE_CFG,
        device="cpu",
        progress=lambda st, i, n, m: events.append((st, i)),
    )
    for k, v in trained.coarse.module.state_dict().items():
        assert torch.equal(v, again.module.state_dict()[k]), k
    assert events and events[0] == ("coarse", 1)
    fine2 = train_fine(
        cat.X_train, cat.y_train, cat.superclass_of_class, cat.X_val, cat.y_val, config=FINE_CFG, device="cpu"
    )
    np.testing.assert_array_equal(fine2.class_means, trained.fine.class_means)


def test_round_trip_gives_identical_predictions(trained: Trained) -> None:
    cat = trained.cat
    knn = FlatKNN(cat.X_train, cat.y_train, device="cpu")
    for model in (trained.hier, trained.coarse, trained.fine, trained.flat_linear, trained.flat_proto, knn):
        files = model.to_files()
        assert all(isinstance(v, bytes) for v in files.values())
        assert not any(b"pickle" in k.encode() for k in files)
        loaded = load_classifier(files)
        assert type(loaded) is type(model)
        if isinstance(model, CoarseHead):
            np.testing.assert_array_equal(loaded.predict_proba(cat.X_test), model.predict_proba(cat.X_test))
        elif isinstance(model, FineHead):
            np.testing.assert_array_equal(
                loaded.class_logits(cat.X_test).numpy(), model.class_logits(cat.X_test).numpy()
            )
        else:
            a, b = model.predict_topk(cat.X_test, 3), loaded.predict_topk(cat.X_test, 3)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.scores, b.scores)
    assert load_classifier(trained.hier.to_files()).m == 2


def _rewrite_config(files: dict[str, bytes], prefix: str, **changes: object) -> dict[str, bytes]:
    cfg = json.loads(files[prefix + CONFIG_FILE])
    cfg.update(changes)
    return {**files, prefix + CONFIG_FILE: json.dumps(cfg).encode()}


def test_corrupted_or_mismatched_files_raise_clear_errors(trained: Trained) -> None:
    files = trained.hier.to_files()
    flipped = bytearray(files["fine/" + TENSORS_FILE])
    flipped[-10] ^= 0xFF
    with pytest.raises(ModelFormatError, match="corrupted"):
        load_classifier({**files, "fine/" + TENSORS_FILE: bytes(flipped)})
    with pytest.raises(ModelFormatError, match="coarse/ part: missing 'config.json'"):
        load_classifier({k: v for k, v in files.items() if k != "coarse/" + CONFIG_FILE})
    with pytest.raises(ModelFormatError, match="not valid UTF-8 JSON"):
        load_classifier({**files, CONFIG_FILE: b"{not json"})
    # a class list that does not match the weights (config edited, tensors kept)
    fine_cfg = json.loads(files["fine/" + CONFIG_FILE])
    bad = _rewrite_config(files, "fine/", classes=fine_cfg["classes"] + ["sku-extra"])
    with pytest.raises(ModelFormatError, match="shape"):
        load_classifier(bad)
    proto = trained.flat_proto.to_files()
    with pytest.raises(ModelFormatError, match="implies"):
        FlatPrototype.from_files(_rewrite_config(proto, "", dim=DIM + 1))
    with pytest.raises(ModelFormatError, match="expected 'flat_softmax'"):
        FlatSoftmax.from_files(proto)
    with pytest.raises(ModelFormatError, match="unknown model kind"):
        load_classifier(_rewrite_config(proto, "", kind="mystery"))
    with pytest.raises(EmbeddingInputError, match="embedding width"):
        trained.hier.predict_topk(np.ones((2, DIM + 3), np.float32) / np.sqrt(DIM + 3))


def test_add_classes_makes_a_new_sku_predictable_without_retraining(trained: Trained) -> None:
    cat = trained.cat
    rng = np.random.default_rng(11)
    # a new SKU inside family 2 (well away from its siblings), and extra images for an existing SKU
    mean = cat.family_centres[2] + rng.standard_normal(DIM) * 0.7
    X_new = l2_normalize(mean + rng.standard_normal((25, DIM)) * 0.12)
    X_more = cat.X_val[cat.y_val == "sku-0-0"]
    result = trained.hier.add_classes(
        np.concatenate([X_new[:15], X_more]), np.asarray(["sku-new"] * 15 + ["sku-0-0"] * len(X_more))
    )
    model = result.model
    assert model is not trained.hier and "sku-new" not in trained.hier.classes
    assert result.superclass_of_new == {"sku-new": 2} and result.refreshed == ["sku-0-0"]
    assert model.superclass_of_class()["sku-new"] == 2
    assert model.fine.counts[model.classes.index("sku-0-0")] == 30 + len(X_more)
    pred = model.predict_topk(X_new[15:], k=3)
    assert np.mean(pred.labels[:, 0] == "sku-new") >= 0.9
    old = model.predict_topk(cat.X_test, k=1)
    assert np.mean(old.labels[:, 0] == cat.y_test) >= 0.97
    for rule in ("nearest_class", "centroid"):
        assert trained.hier.add_classes(X_new[:15], np.asarray(["sku-new"] * 15), attach=rule).superclass_of_new == {
            "sku-new": 2
        }
    with pytest.raises(ValueError, match="attach rule"):
        trained.hier.add_classes(X_new[:15], np.asarray(["sku-new"] * 15), attach="random")
    # the extended model serialises like any other
    again = load_classifier(model.to_files())
    np.testing.assert_array_equal(again.predict_topk(X_new, 3).labels, model.predict_topk(X_new, 3).labels)


def test_bad_training_inputs_are_rejected(trained: Trained) -> None:
    cat = trained.cat
    with pytest.raises(ValueError, match="FineConfig.n_query"):
        train_fine(cat.X_train, cat.y_train, cat.superclass_of_class, config=FineConfig(n_query=0))
    with pytest.raises(EmbeddingInputError, match="without a superclass"):
        train_coarse(cat.X_train, cat.y_train, {"sku-0-0": 0})
    with pytest.raises(EmbeddingInputError, match="both X_val and y_val"):
        fit_flat_softmax(cat.X_train, cat.y_train, X_val=cat.X_val)
    with pytest.raises(EmbeddingInputError, match="no superclass"):
        HierarchicalClassifier(trained.coarse, trained.fine, {"sku-0-0": 0})
