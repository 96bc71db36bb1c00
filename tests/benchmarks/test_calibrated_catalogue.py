"""The benchmark catalogue generator (benchmarks/calibrated_catalogue.py): layout, real residuals per split,
calibration at the real class count, catalogue files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import calibrated_catalogue as cc  # noqa: E402

DIM = 24


def _real_shaped(seed: int = 0, n_fam: int = 12, dim: int = DIM):
    """A small stand-in for a real export: families of 1-4 SKUs, 12-30 train / 3 val / 10-25 test images per SKU,
    and a per-SKU train -> test shift (the test rows are another capture session)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 1, 2, 3, 4], n_fam)
    fam = np.repeat(np.arange(n_fam), sizes)
    n = fam.size
    centres = rng.standard_normal((n_fam, dim)) * 0.9
    means = centres[fam] + rng.standard_normal((n, dim)) * 0.45 + 4.0
    shift = rng.standard_normal((n, dim)) * 0.7
    X, fine, split = [], [], []
    for c in range(n):
        for s, k in (("train", rng.integers(12, 31)), ("val", 3), ("test", rng.integers(10, 26))):
            X.append(means[c] + rng.standard_normal((k, dim)) + (shift[c] if s == "test" else 0.0))
            fine += [f"c{c:02d}"] * k
            split += [s] * k
    X = np.concatenate(X).astype(np.float32)
    coarse = np.asarray([f"f{fam[int(f[1:])]:02d}" for f in fine])
    return cc.build_bank(cc.l2_normalize(X), np.asarray(fine), coarse, np.asarray(split), name="fixture")


@pytest.fixture(scope="module")
def bank():
    return _real_shaped()


def test_layout_siblings_families_and_determinism(bank) -> None:
    cat = cc.generate(bank, 120, seed=1)
    assert cat.n_classes == 120
    for s in cc.SPLITS:
        X, y, yc = getattr(cat, f"X_{s}"), getattr(cat, f"y_{s}"), getattr(cat, f"yc_{s}")
        assert X.dtype == np.float32 and X.shape[1] == DIM and y.shape == yc.shape == (X.shape[0],)
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
        assert np.issubdtype(y.dtype, np.integer) and np.issubdtype(yc.dtype, np.integer)
    assert len(cat.sibling_pairs) == 20  # a third of 120 SKUs in near-duplicate pairs
    fam = cat.family_of_class()
    assert all(fam[a] == fam[b] for a, b in cat.sibling_pairs.tolist())
    again = cc.generate(bank, 120, seed=1)
    np.testing.assert_array_equal(again.X_test, cat.X_test)
    assert not np.array_equal(cc.generate(bank, 120, seed=2).X_train, cat.X_train)
    topped = cc.generate(bank, 50, seed=0, train_per_class=60)
    assert np.all(np.bincount(topped.y_train) == 60)


def test_val_rows_are_not_training_copies_and_test_rows_carry_the_real_shift(bank) -> None:
    cat = cc.generate(bank, 2 * bank.n_classes, seed=3)
    d2 = ((cat.X_val[:, None, :] - cat.X_train[None, :, :]) ** 2).sum(-1)
    assert d2.min() > 1e-6  # no validation row equals any training row (of its own SKU, a sibling or any other)

    def mean_shift(c: cc.Catalogue) -> float:  # median |test mean - train mean| over SKUs
        k = c.n_classes
        out = []
        for j in range(k):
            a, b = c.X_train[c.y_train == j], c.X_test[c.y_test == j]
            if len(a) and len(b):
                out.append(np.linalg.norm(a.mean(0) - b.mean(0)))
        return float(np.median(out))

    real = mean_shift(cc.catalogue_from_bank(bank))
    gen = mean_shift(cat)
    assert 0.6 * real < gen < 1.6 * real
    # a fresh split of the training rows (no session change) moves class means far less
    half = cc.Catalogue(
        cat.X_train[::2],
        cat.y_train[::2],
        cat.yc_train[::2],
        cat.X_val,
        cat.y_val,
        cat.yc_val,
        cat.X_train[1::2],
        cat.y_train[1::2],
        cat.yc_train[1::2],
    )
    assert mean_shift(half) < 0.7 * gen


def test_calibration_matches_the_real_accuracies_at_the_real_class_count(bank) -> None:
    cal = cc.calibrate(bank, seeds=2, iters=7, log=lambda *_: None)
    metrics = [r["metric"] for r in cal.table]
    assert any(m.startswith("flat softmax test top-1") for m in metrics) and "cosine 1-NN test top-1" in metrics
    assert cal.within_tolerance, cc.format_calibration_table(cal)
    text = cc.format_calibration_table(cal)
    assert "nearest prototype test top-1" in text and "look-alike pair" in text
    assert cc.Calibration.from_json(cal.to_json()) == cal
    # the blend width is calibrated: widths tried widest first, the kept one is the first within tolerance
    assert cal.tried and cal.tried[-1]["ok"] and not any(t["ok"] for t in cal.tried[:-1])
    widths = [t["theta_max"] for t in cal.tried]
    assert widths == sorted(widths, reverse=True) and cal.params.theta_max == pytest.approx(widths[-1], abs=1e-3)
    assert "blend widths tried" in text


def test_a_single_blend_width_is_calibrated_when_asked(bank) -> None:
    base = cc.GeneratorParams(theta_max=0.5)
    cal = cc.calibrate(bank, seeds=1, iters=4, with_flat=False, log=lambda *_: None, base=base, theta_grid=None)
    assert [t["theta_max"] for t in cal.tried] == [0.5] and cal.params.theta_max == 0.5


def test_catalogue_npz_round_trip_and_clear_errors(bank, tmp_path) -> None:
    cat = cc.generate(bank, 30, seed=0)
    path = tmp_path / "cat.npz"
    cat.save_npz(path)
    back = cc.Catalogue.load_npz(path)
    np.testing.assert_allclose(back.X_test, cat.X_test, atol=1e-6)
    np.testing.assert_array_equal(back.sibling_pairs, cat.sibling_pairs)
    X, y = back.labelled("train")
    assert y[0].startswith("sku") and X.shape[0] == y.shape[0]
    arrays = {k: getattr(cat, k) for k in cc.CATALOGUE_KEYS}
    np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != "yc_test"})
    with pytest.raises(ValueError, match="missing arrays"):
        cc.Catalogue.load_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "strings.npz", **{**arrays, "y_val": arrays["y_val"].astype(str)})
    with pytest.raises(ValueError, match="integer ids"):
        cc.Catalogue.load_npz(tmp_path / "strings.npz")
