"""Scale benchmark: hierarchical vs the strongest flat baselines as the catalogue grows (real 81 SKUs -> 2000).

Catalogues come from :mod:`calibrated_catalogue` (new class means + *real* train / val / test residuals of the
Grocery Store embeddings, a third of the SKUs near-duplicate pairs, the real train -> test capture-session shift).
Every run first calibrates the generator on each ``--real-npz`` (one export per packaged encoder, made by
``export_grocery_embeddings.py``) and prints the calibration table (real vs generated at the real class count:
tuned flat logistic regression, nearest prototype and 1-NN test top-1, look-alike pair confusability). Then, on the
first ``--real-npz``, it evaluates the real data set itself (``real`` in ``--sizes``) and generated catalogues of
the other sizes.

Models, trained with the same public functions as the pipeline: the specialist hierarchy
(:func:`~skurec.models.train_specialist_hierarchy`: ``specialist_soft`` at its validation-chosen routing width,
``specialist_hard`` m=1), the coarse/fine hierarchical classifier
(:func:`~skurec.models.derive_superclasses` -> :func:`~skurec.models.train_coarse` +
:func:`~skurec.models.train_fine` -> :class:`~skurec.models.HierarchicalClassifier`, soft routing m=3 and hard
m=1) and the flat baselines: :func:`~skurec.models.fit_flat_logreg` (the tuned logistic regression, ``C`` chosen
on validation), :class:`~skurec.models.FlatPrototype` and cosine k-NN (:class:`~skurec.models.FlatKNN`).

``--catalogue-npz FILE`` runs every model on any embedding catalogue instead (arrays ``X_train, y_train, yc_train,
X_val, y_val, yc_val, X_test, y_test, yc_test``; integer labels; ``yc`` = family id, used as the group id).

Prints the results table (test top-1 / top-3, similar-subset top-1, train seconds per model, gap hierarchical - best
flat) and writes everything as JSON with ``--out``. Heavy: run it once, not in tests.

Examples::

    python3 benchmarks/scale.py --real-npz bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz \\
        bench_out/grocery_embeddings/grocery_efficientnet_lite2.npz --sizes real 500 1000 2000 --out bench_out/scale.json
    python3 benchmarks/scale.py --catalogue-npz my_catalogue.npz --out bench_out/mine.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibrated_catalogue import (  # noqa: E402
    THETA_GRID,
    Catalogue,
    GeneratorParams,
    bank_from_npz,
    calibrate,
    catalogue_from_bank,
    format_calibration_table,
    generate,
)

from skurec.evaluation import evaluate, predict_all  # noqa: E402
from skurec.models import (  # noqa: E402
    DenseConfig,
    FineConfig,
    FlatKNN,
    FlatPrototype,
    HierarchicalClassifier,
    class_prototypes,
    derive_superclasses,
    fit_flat_logreg,
    similar_class_set,
    similar_groups,
    train_coarse,
    train_fine,
    train_specialist_hierarchy,
)

HIER = ("specialist_soft", "specialist_hard", "hierarchical_soft", "hierarchical_hard")
FLAT = ("flat_linear", "flat_prototype", "flat_knn")
MODELS = (*HIER, *FLAT, "coarse_only")


def n_superclasses_for(n_classes: int, max_superclasses: int = 100, per_superclass: float = 8.0) -> int:
    """Same rule as the pipeline's default: about 8 SKUs per superclass, at most 100."""
    return int(min(max_superclasses, n_classes, max(2, round(n_classes / per_superclass))))


def coarse_hidden_for(n_classes: int, requested: int) -> int:
    """The pipeline's default coarse head: linear below 500 SKUs, a 512-wide MLP from 500 up (``requested`` >= 0
    overrides)."""
    return requested if requested >= 0 else (512 if n_classes >= 500 else 0)


def run_one(cat: Catalogue, args: argparse.Namespace) -> dict[str, Any]:
    """Train every model on one catalogue and evaluate it on its test split; returns the JSON result row."""
    X_tr, y_tr = cat.labelled("train")
    X_va, y_va = cat.labelled("val")
    X_te, y_te = cat.labelled("test")
    has_val = len(y_va) > 0
    fam = {f"{Catalogue.sku(np.asarray([c]))[0]}": f"fam{f}" for c, f in cat.family_of_class().items()}
    times: dict[str, float] = {}
    t = time.perf_counter()
    protos = class_prototypes(X_tr, y_tr)
    sc = derive_superclasses(
        protos.vectors, protos.classes, n_superclasses=n_superclasses_for(len(protos.classes)), seed=args.seed
    )
    sc_map = sc.superclass_of_class()
    times["superclasses_s"] = time.perf_counter() - t
    groups = similar_groups(protos.vectors, protos.classes, given_groups=fam)
    similar = similar_class_set(groups)
    hidden = coarse_hidden_for(len(protos.classes), args.coarse_hidden)
    t = time.perf_counter()
    coarse = train_coarse(
        X_tr,
        y_tr,
        sc_map,
        X_va if has_val else None,
        y_va if has_val else None,
        config=DenseConfig(hidden=hidden, max_epochs=8 if hidden else 20, seed=args.seed),
        n_superclasses=sc.n_superclasses,
    )
    times["coarse_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fine = train_fine(
        X_tr, y_tr, sc_map, X_va if has_val else None, y_va if has_val else None, config=FineConfig(seed=args.seed)
    )
    times["fine_s"] = time.perf_counter() - t
    hier = HierarchicalClassifier(coarse, fine, sc_map, m=3)
    times["hierarchical_s"] = times["superclasses_s"] + times["coarse_s"] + times["fine_s"]
    t = time.perf_counter()
    flat = fit_flat_logreg(X_tr, y_tr, X_va if has_val else None, y_va if has_val else None)
    times["flat_linear_s"] = time.perf_counter() - t
    t = time.perf_counter()
    proto = FlatPrototype.fit(X_tr, y_tr)
    times["flat_prototype_s"] = time.perf_counter() - t
    t = time.perf_counter()
    knn = FlatKNN(X_tr, y_tr)
    times["flat_knn_s"] = time.perf_counter() - t
    models = {
        "hierarchical_soft": hier,
        "hierarchical_hard": hier.with_m(1),
        "flat_linear": flat,
        "flat_prototype": proto,
        "flat_knn": knn,
    }
    specialist_report = None
    if args.specialist and has_val:
        t = time.perf_counter()
        spec = train_specialist_hierarchy(X_tr, y_tr, X_va, y_va)
        times["specialist_s"] = time.perf_counter() - t
        models = {"specialist_soft": spec.model, "specialist_hard": spec.model.with_m(1), **models}
        specialist_report = spec.report
    t = time.perf_counter()
    preds = predict_all(models, X_te)
    times["predict_all_s"] = time.perf_counter() - t
    result = evaluate(models, X_te, y_te, similar, coarse=(coarse, sc_map), predictions=preds)
    sizes = sc.sizes()
    m = result["variants"]["all"]["models"]
    best_flat = max(FLAT, key=lambda k: m[k]["top1"])
    best_hier = max((k for k in HIER if k in m), key=lambda k: m[k]["top1"])
    per_class = np.bincount(cat.y_train)
    return {
        "name": cat.name,
        "n_classes": len(protos.classes),
        "n_train": int(len(y_tr)),
        "n_val": int(len(y_va)),
        "n_test": int(len(y_te)),
        "train_per_class_median": float(np.median(per_class[per_class > 0])),
        "n_superclasses": sc.n_superclasses,
        "superclass_method": sc.method,
        "coarse_hidden": hidden,
        "superclass_sizes": [int(sizes.min()), float(np.median(sizes)), int(sizes.max())],
        "n_similar_classes": len(similar),
        "n_sibling_pairs": int(len(cat.sibling_pairs)),
        "times": {k: round(v, 2) for k, v in times.items()},
        "coarse_metrics": coarse.metrics,
        "fine_metrics": fine.metrics,
        "flat_linear_metrics": flat.metrics,
        "specialist_report": specialist_report,
        "best_flat": best_flat,
        "best_hierarchical": best_hier,
        "gap_best_hierarchical_minus_best_flat": round(m[best_hier]["top1"] - m[best_flat]["top1"], 4),
        "gap_soft_minus_best_flat": round(m["hierarchical_soft"]["top1"] - m[best_flat]["top1"], 4),
        "gap_hard_minus_best_flat": round(m["hierarchical_hard"]["top1"] - m[best_flat]["top1"], 4),
        **result,
    }


def _f(x: Any) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def print_results(rows: list[dict[str, Any]]) -> None:
    print(
        "\n### results (test split; similar = SKUs in families of >= 2 / look-alike groups; coarse_only = "
        "superclass accuracy)"
    )
    print("| catalogue | SKUs | train imgs | model | top-1 | top-3 | similar top-1 | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, s, t = r["variants"]["all"]["models"], r["variants"]["similar"]["models"], r["times"]
        secs = {
            "hierarchical_soft": t["hierarchical_s"],
            "hierarchical_hard": t["hierarchical_s"],
            "specialist_soft": t.get("specialist_s", 0.0),
            "specialist_hard": t.get("specialist_s", 0.0),
            "flat_linear": t["flat_linear_s"],
            "flat_prototype": t["flat_prototype_s"],
            "flat_knn": t["flat_knn_s"],
            "coarse_only": t["superclasses_s"] + t["coarse_s"],
        }
        for name in MODELS:
            if name in a:
                print(
                    f"| {r['name']} | {r['n_classes']} | {r['n_train']} | {name} | {_f(a[name]['top1'])} | "
                    f"{_f(a[name]['top3'])} | {_f(s[name]['top1'])} | {secs[name]:.1f} |"
                )
    print("\n### gap hierarchical - best flat (test top-1) and training time")
    print(
        "| catalogue | SKUs | best flat | best hierarchical | gap | hierarchical_soft - best flat | "
        "coarse+fine s | specialist s | flat linear s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["times"]
        spec = f"{t['specialist_s']:.1f}" if "specialist_s" in t else "-"
        print(
            f"| {r['name']} | {r['n_classes']} | {r['best_flat']} | {r['best_hierarchical']} | "
            f"{r['gap_best_hierarchical_minus_best_flat']:+.3f} | {r['gap_soft_minus_best_flat']:+.3f} | "
            f"{t['hierarchical_s']:.1f} | {spec} | {t['flat_linear_s']:.1f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--real-npz",
        type=Path,
        nargs="+",
        help="real embedding exports (X, fine, coarse, split); the first one drives --sizes",
    )
    src.add_argument("--catalogue-npz", type=Path, help="run every model on this catalogue only")
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=["real", "500", "1000", "2000"],
        help="'real' (the real data set itself) and/or generated catalogue sizes",
    )
    ap.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help="train images per generated SKU (default: the source class's real count)",
    )
    ap.add_argument("--calibration-seeds", type=int, default=3)
    ap.add_argument(
        "--theta-max",
        type=float,
        default=None,
        help="largest blend angle of a generated SKU (radians); default: calibrated from THETA_GRID, widest first",
    )
    ap.add_argument(
        "--neighbours",
        type=int,
        default=GeneratorParams.neighbours,
        help="the second blend component is one of this many nearest real classes (default %(default)s)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--coarse-hidden", type=int, default=-1, help="coarse head width (-1 = the pipeline's rule)")
    ap.add_argument(
        "--no-specialist",
        dest="specialist",
        action="store_false",
        help="skip the specialist hierarchy (train_specialist_hierarchy)",
    )
    ap.add_argument("--save-catalogues", type=Path, help="also write each generated catalogue as .npz here")
    ap.add_argument("--out", type=Path, help="write all results as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    calibrations = []
    if args.catalogue_npz:
        cat = Catalogue.load_npz(args.catalogue_npz)
        print(
            f"catalogue {args.catalogue_npz.name}: {cat.n_classes} SKUs, {len(cat.y_train)} / {len(cat.y_val)} / "
            f"{len(cat.y_test)} train / val / test images",
            flush=True,
        )
        rows.append(run_one(cat, args))
    else:
        banks = [bank_from_npz(p) for p in args.real_npz]
        for bank in banks:
            base = GeneratorParams(neighbours=args.neighbours)
            grid = THETA_GRID if args.theta_max is None else (args.theta_max,)
            cal = calibrate(bank, seeds=args.calibration_seeds, seed=args.seed, base=base, theta_grid=grid)
            calibrations.append(cal)
            print("\n" + format_calibration_table(cal) + "\n", flush=True)
        bank, cal = banks[0], calibrations[0]
        for size in args.sizes:
            t = time.perf_counter()
            cat = (
                catalogue_from_bank(bank)
                if size == "real"
                else generate(bank, int(size), cal.params, seed=args.seed, train_per_class=args.train_per_class)
            )
            gen_s = time.perf_counter() - t
            if args.save_catalogues and size != "real":
                args.save_catalogues.mkdir(parents=True, exist_ok=True)
                cat.save_npz(args.save_catalogues / f"{bank.name}-{size}.npz")
            print(
                f"{cat.name}: {cat.n_classes} SKUs, {len(cat.y_train)} / {len(cat.y_val)} / {len(cat.y_test)} "
                f"train / val / test images ({gen_s:.1f}s) ...",
                flush=True,
            )
            row = run_one(cat, args)
            row["times"]["generate_s"] = round(gen_s, 2)
            rows.append(row)
            m = row["variants"]["all"]["models"]
            print(
                "  " + " ".join(f"{k} {m[k]['top1']:.3f}" for k in MODELS if k in m) + f"; times {row['times']}",
                flush=True,
            )
    for cal in calibrations:
        print("\n" + format_calibration_table(cal))
    print_results(rows)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; torch threads {torch.get_num_threads()}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"calibrations": [json.loads(c.to_json()) for c in calibrations], "rows": rows}, indent=1, default=float
            )
        )


if __name__ == "__main__":
    main()
