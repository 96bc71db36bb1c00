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
``specialist_hard`` m=1; its global scorer chosen on validation among the shrinkage LDA, the flat softmax and their
calibrated combination, handed the flat softmax below so it is fitted once), ``global_scorer`` (that global scorer
alone: beta 0, all superclasses) and the flat baselines: :func:`~skurec.models.fit_flat_softmax` (``flat_softmax``:
THE flat model, L2 strength and stopping chosen on validation over all SKUs), ``probe`` (the issue's reference: a
plain Adam softmax, standardised inputs, 30 epochs, no tuning, on the same train rows), :class:`~skurec.models.
FlatPrototype` and cosine k-NN (:class:`~skurec.models.FlatKNN`), and ``case_study``: the published coarse-to-fine
recipe as one configuration of the same family (``train_hierarchy(recipe="case_study")``: prototypes -> UMAP ->
agglomerative superclasses, about 100 at 1-2k SKUs, a dense coarse head, the few-shot fine head under soft routing with
``m`` chosen on validation; ``--no-case-study`` skips it).

``--catalogue-npz FILE`` runs every model on any embedding catalogue instead (arrays ``X_train, y_train, yc_train,
X_val, y_val, yc_val, X_test, y_test, yc_test``; integer labels; ``yc`` = family id, used as the group id).

Prints the results table (test top-1 / top-3, similar-subset top-1, train seconds per model) and the gaps of the
deployed hierarchy to the best flat model in top-1 and top-3 and of the specialists over the global scorer and writes everything as JSON with ``--out``. Heavy: run it once, not in tests.

Examples::

    python3 benchmarks/scale.py --real-npz bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz \\
        bench_out/grocery_embeddings/grocery_efficientnet_lite2.npz --sizes real 500 1000 2000 --out bench_out/scale.json
    python3 benchmarks/scale.py --catalogue-npz my_catalogue.npz --out bench_out/mine.json
    python3 benchmarks/scale.py --real-npz bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz \
        --sizes real 500 1000 2000 --save-catalogues bench_out/cats --save-only   # calibrate + save, train nothing
    python3 benchmarks/scale.py --catalogue-npz bench_out/cats/gen-500.npz --threads 1   # one saved catalogue
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
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
    CaseStudyConfig,
    DenseConfig,
    FineConfig,
    FlatKNN,
    FlatPrototype,
    class_prototypes,
    fit_flat_softmax,
    global_scorer_hierarchy,
    similar_class_set,
    similar_groups,
    train_hierarchy,
    train_specialist_hierarchy,
)
from skurec.models._common import encode_labels  # noqa: E402

HIER = ("specialist_soft", "specialist_hard", "case_study")
FLAT = ("flat_softmax", "probe", "global_scorer", "flat_prototype", "flat_knn")
MODELS = (*HIER, *FLAT, "coarse_only")
#: The flat models "best flat" is taken over (the hierarchy's own global scorer is reported, not counted: it is part
#: of the hierarchy and chosen with it).
BEST_FLAT = ("flat_softmax", "probe", "flat_prototype", "flat_knn")


class AdamProbe:
    """The reference linear probe of issue #18: standardised inputs, one linear layer, plain Adam (lr 1e-3, batch
    256), 30 epochs, no regularisation, no validation, no tuning (float32). Trained on the same rows as every model."""

    def __init__(
        self, X: np.ndarray, y: np.ndarray, epochs: int = 30, lr: float = 1e-3, batch: int = 256, seed: int = 0
    ):
        self.classes = sorted(np.unique(y).tolist())
        c = torch.from_numpy(encode_labels(y, self.classes))
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        self.mu, self.sd = Xt.mean(0), Xt.std(0).clamp(min=1e-6)
        Z = (Xt - self.mu) / self.sd
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(X.shape[1], len(self.classes))
        opt = torch.optim.Adam(self.lin.parameters(), lr=lr)
        for _ in range(epochs):
            perm = torch.randperm(len(Z), generator=g)
            for i in range(0, len(Z), batch):
                j = perm[i : i + batch]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(self.lin(Z[j]), c[j]).backward()
                opt.step()

    def predict_topk(self, X: np.ndarray, k: int = 3):
        from skurec.models._common import Predictions

        with torch.no_grad():
            p = torch.softmax(self.lin((torch.from_numpy(np.ascontiguousarray(X, np.float32)) - self.mu) / self.sd), 1)
        vals, idx = torch.topk(p, min(k, len(self.classes)), dim=1)
        labels = np.asarray(self.classes)[idx.numpy()]
        return Predictions(labels=labels, scores=vals.numpy(), superclass=np.full(len(X), -1, dtype=np.int64))


def run_one(cat: Catalogue, args: argparse.Namespace) -> dict[str, Any]:
    """Train every model on one catalogue and evaluate it on its test split; returns the JSON result row."""
    X_tr, y_tr = cat.labelled("train")
    X_va, y_va = cat.labelled("val")
    X_te, y_te = cat.labelled("test")
    has_val = len(y_va) > 0
    if not has_val:
        raise SystemExit("scale.py needs a validation split (every choice is made on it)")
    fam = {f"{Catalogue.sku(np.asarray([c]))[0]}": f"fam{f}" for c, f in cat.family_of_class().items()}
    times: dict[str, float] = {}
    protos = class_prototypes(X_tr, y_tr)
    groups = similar_groups(protos.vectors, protos.classes, given_groups=fam)
    similar = similar_class_set(groups)
    if args.probe_only:  # the reference row alone (a separate process on a loaded machine)
        t = time.perf_counter()
        probe = AdamProbe(X_tr, y_tr)
        times["probe_s"] = time.perf_counter() - t
        res = evaluate({"probe": probe}, X_te, y_te, similar)
        m = res["variants"]["all"]["models"]["probe"]
        print(
            f"| {cat.name} | {len(protos.classes)} | probe | {_f(m['top1'])} | {_f(m['top3'])} | {times['probe_s']:.1f} |"
        )
        return {"name": cat.name, "n_classes": len(protos.classes), "times": times, "probe_only": True, **res}
    t = time.perf_counter()
    flat = fit_flat_softmax(X_tr, y_tr, X_va, y_va)
    times["flat_softmax_s"] = time.perf_counter() - t
    t = time.perf_counter()
    spec = train_specialist_hierarchy(X_tr, y_tr, X_va, y_va, flat=flat)
    times["specialist_s"] = time.perf_counter() - t + times["flat_softmax_s"]  # the hierarchy includes its softmax
    models: dict[str, Any] = {
        "specialist_soft": spec.model,
        "specialist_hard": spec.model.with_m(1),
        "flat_softmax": flat,
        "global_scorer": global_scorer_hierarchy(spec.model),
    }
    if args.probe:
        t = time.perf_counter()
        models["probe"] = AdamProbe(X_tr, y_tr)
        times["probe_s"] = time.perf_counter() - t
    t = time.perf_counter()
    models["flat_prototype"] = FlatPrototype.fit(X_tr, y_tr)
    times["flat_prototype_s"] = time.perf_counter() - t
    t = time.perf_counter()
    models["flat_knn"] = FlatKNN(X_tr, y_tr)
    times["flat_knn_s"] = time.perf_counter() - t
    coarse = (spec.model.coarse, spec.model.superclass_of_class())
    if args.case_study:  # the published recipe as one configuration of the same family
        t = time.perf_counter()
        coarse_cfg = (
            DenseConfig(seed=args.seed)
            if args.coarse_hidden < 0
            else DenseConfig(hidden=args.coarse_hidden, seed=args.seed)
        )
        case = CaseStudyConfig(seed=args.seed, coarse=coarse_cfg, fine=FineConfig(seed=args.seed))
        cs = train_hierarchy(X_tr, y_tr, X_va, y_va, "case_study", case_study=case)
        times["case_study_s"] = time.perf_counter() - t
        models["case_study"] = cs.model
        case_report = {k: v for k, v in cs.report.items() if k != "candidates"}
    t = time.perf_counter()
    preds = predict_all(models, X_te)
    times["predict_all_s"] = time.perf_counter() - t
    result = evaluate(models, X_te, y_te, similar, coarse=coarse, predictions=preds)
    extra = {"case_study_report": case_report} if args.case_study else {}
    m = result["variants"]["all"]["models"]
    best_flat = max((k for k in BEST_FLAT if k in m), key=lambda k: m[k]["top1"])
    best_flat3 = max((k for k in BEST_FLAT if k in m), key=lambda k: m[k]["top3"])
    per_class = np.bincount(cat.y_train)
    sizes = np.bincount(spec.model.sc_of_index)
    return {
        "name": cat.name,
        "n_classes": len(protos.classes),
        "n_train": int(len(y_tr)),
        "n_val": int(len(y_va)),
        "n_test": int(len(y_te)),
        "train_per_class_median": float(np.median(per_class[per_class > 0])),
        "n_superclasses": int(spec.model.n_superclasses),
        "superclass_sizes": [int(sizes.min()), float(np.median(sizes)), int(sizes.max())],
        "n_similar_classes": len(similar),
        "n_sibling_pairs": int(len(cat.sibling_pairs)),
        "times": {k: round(v, 2) for k, v in times.items()},
        "flat_softmax_metrics": {k: v for k, v in flat.metrics.items() if k != "path"},
        "specialist_report": spec.report,
        "best_flat": best_flat,
        "best_flat_top3": best_flat3,
        "gap_top1": round(m["specialist_soft"]["top1"] - m[best_flat]["top1"], 4),
        "gap_top3": round(m["specialist_soft"]["top3"] - m[best_flat3]["top3"], 4),
        "specialists_over_global_top1": round(m["specialist_soft"]["top1"] - m["global_scorer"]["top1"], 4),
        "specialists_over_global_top3": round(m["specialist_soft"]["top3"] - m["global_scorer"]["top3"], 4),
        **extra,
        **result,
    }


def _f(x: Any) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def print_results(rows: list[dict[str, Any]]) -> None:
    print(
        "\n### results (test split; similar = SKUs in families of >= 2 / look-alike groups; coarse_only = "
        "superclass accuracy of the hierarchy's router)"
    )
    print("| catalogue | SKUs | train imgs | model | top-1 | top-3 | similar top-1 | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, s, t = r["variants"]["all"]["models"], r["variants"]["similar"]["models"], r["times"]
        secs = {
            "specialist_soft": t["specialist_s"],
            "specialist_hard": t["specialist_s"],
            "global_scorer": t["specialist_s"],
            "case_study": t.get("case_study_s"),
            "flat_softmax": t["flat_softmax_s"],
            "probe": t.get("probe_s"),
            "flat_prototype": t["flat_prototype_s"],
            "flat_knn": t["flat_knn_s"],
            "coarse_only": t["specialist_s"],
        }
        for name in MODELS:
            if name in a:
                sec = "-" if secs.get(name) is None else f"{secs[name]:.1f}"
                print(
                    f"| {r['name']} | {r['n_classes']} | {r['n_train']} | {name} | {_f(a[name]['top1'])} | "
                    f"{_f(a[name]['top3'])} | {_f(s[name]['top1'])} | {sec} |"
                )
    print(
        "\n### deployed hierarchy (specialist_soft) - best flat (test; best flat over "
        + ", ".join(BEST_FLAT)
        + ", top-1 and top-3 each its own best) and what the specialists add over the hierarchy's global scorer"
    )
    print(
        "| catalogue | SKUs | global scorer | best flat top-1 | gap top-1 | best flat top-3 | gap top-3 | "
        "specialists over global top-1 / top-3 | hierarchy s (incl. softmax) | flat softmax s | probe s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["times"]
        gs = r["specialist_report"].get("global_scorer", {})
        probe_s = f"{t['probe_s']:.1f}" if "probe_s" in t else "-"
        print(
            f"| {r['name']} | {r['n_classes']} | {gs.get('name', 'lda')} (w {gs.get('weight', 0):g}) | "
            f"{r['best_flat']} | {r['gap_top1']:+.3f} | {r['best_flat_top3']} | {r['gap_top3']:+.3f} | "
            f"{r['specialists_over_global_top1']:+.3f} / {r['specialists_over_global_top3']:+.3f} | "
            f"{t['specialist_s']:.1f} | {t['flat_softmax_s']:.1f} | {probe_s} |"
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
        help="train images per generated SKU (default: the source class's real count); with --catalogue-npz: keep at "
        "most this many train images per SKU (low-shot)",
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
    ap.add_argument(
        "--coarse-hidden", type=int, default=-1, help="case study's coarse head width (-1 = the recipe's default)"
    )
    ap.add_argument("--no-probe", dest="probe", action="store_false", help="skip the Adam probe reference row")
    ap.add_argument("--probe-only", action="store_true", help="train and score the Adam probe reference row only")
    ap.add_argument("--no-case-study", dest="case_study", action="store_false", help="skip the case_study recipe's row")
    ap.add_argument(
        "--save-catalogues",
        type=Path,
        help="also write each catalogue of --sizes here (real.npz, gen-N.npz: the input of --catalogue-npz)",
    )
    ap.add_argument("--save-only", action="store_true", help="with --save-catalogues: write them, train nothing")
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
        if args.train_per_class:  # low-shot: the first K train rows of every SKU in a seeded order
            order = np.random.default_rng(args.seed).permutation(len(cat.y_train))
            rank = np.zeros(len(order), np.int64)
            seen: dict[int, int] = {}
            for i in order.tolist():
                rank[i] = seen.get(int(cat.y_train[i]), 0)
                seen[int(cat.y_train[i])] = rank[i] + 1
            keep = rank < args.train_per_class
            cat = replace(
                cat,
                X_train=cat.X_train[keep],
                y_train=cat.y_train[keep],
                yc_train=cat.yc_train[keep],
                name=f"{cat.name}-{args.train_per_class}shot",
            )
        print(
            f"catalogue {args.catalogue_npz.name}: {cat.n_classes} SKUs, {len(cat.y_train)} / {len(cat.y_val)} / "
            f"{len(cat.y_test)} train / val / test images",
            flush=True,
        )
        rows.append(run_one(cat, args))
        if args.probe_only:
            rows = []
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
            if args.save_catalogues:
                saved = args.save_catalogues / ("real.npz" if size == "real" else f"gen-{size}.npz")
                saved.parent.mkdir(parents=True, exist_ok=True)
                cat.save_npz(saved)
                print(f"saved {saved}", flush=True)
                if args.save_only:
                    continue
            print(
                f"{cat.name}: {cat.n_classes} SKUs, {len(cat.y_train)} / {len(cat.y_val)} / {len(cat.y_test)} "
                f"train / val / test images ({gen_s:.1f}s) ...",
                flush=True,
            )
            row = run_one(cat, args)
            row["times"]["generate_s"] = round(gen_s, 2)
            rows.append(row)
            print_results([row])  # each size's tables as soon as it is done (the full tables again at the end)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".partial.json").write_text(json.dumps({"rows": rows}, indent=1, default=float))
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
