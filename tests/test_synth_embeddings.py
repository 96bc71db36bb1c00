"""Calibrated synthetic embedding generator: shapes, long tail, families, determinism, fit / match / JSON."""

from __future__ import annotations

import numpy as np
import pytest

from skurec.synth_embeddings import (
    EmbeddingCalibration,
    calibration_from_npz,
    catalogue_stats,
    default_calibration,
    fit_calibration,
    generate_catalogue,
    load_real_npz,
    match_calibration,
    split_half_accuracy,
)

DIM = 48


@pytest.fixture(scope="module")
def catalogue():
    return generate_catalogue(default_calibration(DIM), 60, seed=1, min_images=20, tail_scale=10, test_per_class=4)


def test_generated_catalogue_shape_long_tail_and_families(catalogue) -> None:
    cat = catalogue
    for X in (cat.X_train, cat.X_val, cat.X_test):
        assert X.dtype == np.float32 and X.shape[1] == DIM
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert cat.n_classes == 60 and len(set(cat.y_train)) == 60 and len(set(cat.y_val)) == 60
    per_class = np.unique(np.concatenate([cat.y_train, cat.y_val]), return_counts=True)[1]
    assert per_class.min() >= 20 and per_class.max() > per_class.min()  # audited minimum, long tail
    assert np.all(np.unique(cat.y_test, return_counts=True)[1] == 4)
    share = len(cat.near_duplicate_classes()) / cat.n_classes
    assert 0.25 <= share <= 0.42
    again = generate_catalogue(default_calibration(DIM), 60, seed=1, min_images=20, tail_scale=10, test_per_class=4)
    np.testing.assert_array_equal(again.X_train, cat.X_train)
    other = generate_catalogue(default_calibration(DIM), 60, seed=2, min_images=20, tail_scale=10, test_per_class=4)
    assert not np.array_equal(other.X_test, cat.X_test)


def test_fit_json_round_trip_and_match(catalogue) -> None:
    cat = catalogue
    fam = np.asarray([cat.family_of_class[c] for c in cat.y_train])
    cal = fit_calibration(cat.X_train, cat.y_train, fam, n_spectrum=16, X_val=cat.X_val, y_val=cat.y_val)
    stats = catalogue_stats(cat.X_train, cat.y_train, cat.family_of_class)
    assert cal.mean_sq_norm == pytest.approx(stats["mean_sq_norm"])
    assert cal.n_classes == 60 and sum(cal.family_sizes) == 60 and len(cal.within_spectrum) == 16
    assert 0.0 <= cal.split_half_top1 <= 1.0 and 0.0 <= cal.real_proto_val_top1 <= 1.0
    assert EmbeddingCalibration.from_json(cal.to_json()) == cal
    matched = match_calibration(cal, iters=6)
    assert matched.matched["split_half_top1"] == pytest.approx(cal.split_half_top1, abs=0.1)
    assert matched.matched["split_half_top1_within_family"] == pytest.approx(cal.split_half_top1_within_family,
                                                                              abs=0.1)
    with pytest.raises(ValueError, match="lacks fields"):
        EmbeddingCalibration.from_json('{"dim": 3}')
    with pytest.raises(ValueError, match="fit it from real data"):
        match_calibration(default_calibration(DIM))


def test_split_half_accuracy_tracks_separability() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, DIM))
    codes = np.repeat(np.arange(10), 20)
    for noise, lo, hi in ((0.05, 0.99, 1.0), (3.0, 0.0, 0.6)):
        X = centres[codes] + rng.standard_normal((200, DIM)) * noise
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        assert lo <= split_half_accuracy(X.astype(np.float32), codes) <= hi


def test_npz_loading_and_clear_errors(tmp_path, catalogue) -> None:
    cat = catalogue
    fam = np.asarray([cat.family_of_class[c] for c in cat.y_train])
    good = tmp_path / "real.npz"
    split = np.where(np.arange(len(cat.y_train)) % 5 == 0, "val", "train")
    np.savez(good, X=cat.X_train * 3.0, fine=cat.y_train, coarse=fam, split=split)
    data = load_real_npz(good)
    np.testing.assert_allclose(np.linalg.norm(data["X"], axis=1), 1.0, atol=1e-5)
    cal = calibration_from_npz(good, n_spectrum=8, match=False)
    assert cal.source == "real:real.npz" and cal.n_images == int((split == "train").sum())
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=cat.X_train)
    with pytest.raises(ValueError, match="missing arrays"):
        load_real_npz(bad)
