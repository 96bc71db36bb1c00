"""What training the specialist hierarchy costs, stage by stage, against the strong flat softmax (issues 11, 18).

In the pipeline the hierarchy is trained by ``superclasses`` (the whole
:func:`~skurec.models.train_specialist_hierarchy`, once per superclass size cap, to choose the cap), which hands the
chosen router and specialists on to ``coarse_model`` and ``fine_model``; those two refit their stage (the router from
the LDA statistics; the specialists and the routing width) only when their run config differs from the fit's, and
those refits are the ``coarse`` / ``fine`` stages timed here (an upper bound of what a default run spends in them). This script runs the same core calls in one
process on the same rows and prints the seconds of each stage, the three assets' total and its ratio to
:func:`~skurec.models.fit_flat_softmax` (the ``flat_baselines`` asset's fit)::

    python3 benchmarks/hierarchy_cost.py --skus 2000 --images 60 --dim 32          # synthetic (seeded)
    python3 benchmarks/hierarchy_cost.py --npz bench_out/grocery_embeddings/grocery_efficientnet_lite2.npz \\
        bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz                              # real features (81 SKUs)
    python3 benchmarks/hierarchy_cost.py --skus 2000 --profile 30                   # + cProfile, top 30 by cumtime

Synthetic catalogue: SKU means uniform on the sphere, a third of them paired with a look-alike (the partner's mean a
small rotation away), images ``normalise(mean + noise)`` with a shared anisotropic noise covariance; each image in
validation with probability 0.1, the audit's default ``val_fraction``. The stage seconds of the ``superclasses`` step
come from the report of :func:`~skurec.models.train_specialist_hierarchy`. A benchmark, not a test: run it by hand;
timings on a shared machine vary several-fold with its load (print ``/proc/loadavg`` beside them).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skurec.models import (  # noqa: E402
    HierarchicalClassifier,
    choose_route_m,
    fit_flat_softmax,
    l2_normalize,
    train_lda_router,
    train_specialist_hierarchy,
    train_specialists,
)
from skurec.models.lda import rows_sha256, statistics_files, statistics_from_files  # noqa: E402


def synthetic(
    n_skus: int, n_images: int, dim: int, seed: int = 0, noise: float = 0.55, lookalike: float = 0.25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, split)``: the seeded Gaussian catalogue of the module docstring (split ``train`` / ``val``)."""
    rng = np.random.default_rng(seed)
    means = l2_normalize(rng.normal(size=(n_skus, dim)))
    n_pairs = n_skus // 6
    a, b = np.arange(0, 2 * n_pairs, 2), np.arange(1, 2 * n_pairs, 2)
    means[b] = l2_normalize(means[a] + lookalike * l2_normalize(rng.normal(size=(n_pairs, dim))))
    mix = rng.normal(size=(dim, dim)) * np.geomspace(1.5, 0.5, dim)[None, :] / np.sqrt(dim)
    y = np.repeat(np.arange(n_skus), n_images)
    X = l2_normalize(means[y] + noise * (rng.normal(size=(len(y), dim)) @ mix.T)).astype(np.float32)
    split = np.where(rng.random(len(y)) < 0.1, "val", "train")
    return X, np.asarray([f"sku-{j:05d}" for j in y]), split


def real(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exported Grocery features, loaded as ``benchmarks/compare_hierarchies.py`` does (parts concatenated)."""
    parts, y, split = [], None, None
    for p in paths:
        d = np.load(p, allow_pickle=False)
        y, split = d["fine"].astype(str), d["split"].astype(str)
        parts.append(l2_normalize(d["X"].astype(np.float32)))
    return l2_normalize(np.concatenate(parts, axis=1)), y, split


def top1(model, X: np.ndarray, y: np.ndarray, **kw) -> float:  # type: ignore[no-untyped-def]
    return float(np.mean(model.predict_topk(X, k=1, **kw).labels[:, 0] == y))


def pipeline(X, y, Xv, yv) -> tuple[dict[str, float], dict]:  # type: ignore[no-untyped-def]
    """The three hierarchy assets' core calls, timed (no Dagster; the statistics artifact is written to and read
    from bytes as the assets do): seconds by stage and what was chosen."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    chosen = train_specialist_hierarchy(X, y, Xv, yv)
    files = statistics_files(chosen.stats, chosen.model.classes, rows_sha256(X, y))
    t["superclasses"] = time.perf_counter() - t0
    for k, v in chosen.report.get("stage_seconds", {}).items():
        t[f"  superclasses.{k}"] = v
    sc_map = chosen.superclasses.superclass_of_class()
    S = chosen.superclasses.n_superclasses

    def load_stats():  # type: ignore[no-untyped-def]
        stats, classes, digest = statistics_from_files(files)
        assert classes == chosen.model.classes and digest == rows_sha256(X, y)
        return stats

    t0 = time.perf_counter()
    router = train_lda_router(
        X, y, sc_map, Xv, yv, shrinkage=chosen.report["shrinkage"], n_superclasses=S, stats=load_stats()
    )
    t["coarse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fine = train_specialists(X, y, sc_map, router, Xv, yv, stats=load_stats())
    t["  fine.specialists"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = HierarchicalClassifier(router, fine, sc_map, m=S)
    m, by_m = choose_route_m(model, Xv, yv)
    t["  fine.route_m"] = time.perf_counter() - t1
    model = model.with_m(m)
    t1 = time.perf_counter()
    soft = by_m[m] if m in by_m else top1(model, Xv, yv, m=m)
    hard = by_m[1] if 1 in by_m else top1(model, Xv, yv, m=1)
    t["  fine.val_metrics"] = time.perf_counter() - t1
    t["fine"] = time.perf_counter() - t0
    t["hierarchy total"] = t["superclasses"] + t["coarse"] + t["fine"]
    rep = chosen.report
    info = {
        "shrinkage": rep["shrinkage"],
        "max_size": rep["max_size"],
        "n_superclasses": S,
        "beta": float(fine.beta),
        "m": m,
        "val_top1_soft": soft,
        "val_top1_hard": hard,
        "val_top1_flat_lda": rep.get("val_flat_lda_top1"),
        "candidates": [
            (c["max_size"], c["n_superclasses"], round(c["val_top1"], 4), c["beta"]) for c in rep["candidates"]
        ],
    }
    return t, info


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skus", type=int, default=2000)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--npz", nargs="+", help="exported real features instead of the synthetic catalogue")
    ap.add_argument("--no-flat", action="store_true", help="skip the flat logistic regression")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile the hierarchy, print the top N")
    args = ap.parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    X, y, split = real(args.npz) if args.npz else synthetic(args.skus, args.images, args.dim, args.seed)
    tr, va = split == "train", split == "val"
    X, y, Xv, yv = X[tr], y[tr], X[va], y[va]
    print(
        f"{len(set(y))} SKUs, dim {X.shape[1]}: {len(y)} train / {len(yv)} val rows; torch threads "
        f"{torch.get_num_threads()}; load {_load()}",
        flush=True,
    )
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    t, info = pipeline(X, y, Xv, yv)
    if prof:
        prof.disable()
    for k, v in info.items():
        print(f"  {k}: {v}")
    if not args.no_flat:
        t0 = time.perf_counter()
        flat = fit_flat_softmax(X, y, Xv, yv)
        t["flat (fit_flat_softmax)"] = time.perf_counter() - t0
        print(
            f"  flat val top-1: {top1(flat, Xv, yv):.4f} (weight decay {flat.metrics.get('weight_decay')}, epoch {flat.metrics.get('epoch')})"
        )
    print(f"\n{'stage':34}{'seconds':>9}")
    for k, v in t.items():
        print(f"{k:34}{v:9.2f}")
    if not args.no_flat:
        print(f"\nhierarchy / flat training time: {t['hierarchy total'] / t['flat (fit_flat_softmax)']:.2f}")
    print(f"load at the end: {_load()}")
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.profile)
        print(s.getvalue())
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
        print(s.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
