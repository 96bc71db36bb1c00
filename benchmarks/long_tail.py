"""The long tail: how every model recognises SKUs with a handful of train images, next to the well-stocked head.

Scenarios (each one table):

* ``grocery K=<k>``: the Grocery Store official lists (frozen embeddings exported by ``export_grocery_embeddings.py``)
  with the train list cut to ``k`` images per SKU (seeded), val and test lists whole: every SKU is in the tail;
* ``grocery zipf``: the train list cut to a seeded Zipf count per SKU over ``--zipf-min``..``--zipf-max`` images
  (p(n) ~ 1/n, capped by the images a SKU has); the head tier is ``--grocery-min-samples`` (Grocery has a median of
  30 train images per SKU and 7 SKUs with 50+, so the product's 50 would leave it almost no head);
* ``grocery mixed K=<k>``: half the SKUs (seeded) keep their whole train list (head), the other half get ``k`` images
  (tail): what admitting ``k``-shot SKUs costs the head, and how well they are recognised (the ``min_shots`` choice);
* ``generated-<n> zipf``: the calibrated generator (``calibrated_catalogue.py``) at ``n`` SKUs with 60 train rows per
  SKU cut to the same Zipf counts; head tier = ``--min-samples`` (the product's 50).

Models: the pipeline's hierarchy (``train_specialist_hierarchy``, defaults) trained on head + tail (the tiered
model), the same hierarchy trained on the head only (the model before tiers: SKUs below ``min_samples`` left out),
the strong flat model (``fit_flat_softmax``, weight decay and stopping chosen on validation; also trained on the head
only), nearest prototype
and cosine k-NN (10 neighbours). Every model on head / tail / all test images, top-1 and top-3, and catalogue
coverage (the share of the scenario's SKUs a model can answer). Hyper-parameters are chosen on the validation split
only. ``tail gap`` = hierarchy - strong flat top-1 on tail test images (points); ``head delta`` = tiered hierarchy -
head-only hierarchy top-1 on the head test images (points; the same for the strong flat model, for context:
admitting SKUs makes the head compete with more classes, whatever the model).

    python3 benchmarks/long_tail.py --npz bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz --out bench_out/long_tail.json

``--write-manifest PATH`` writes a long-tailed skurec manifest of the Grocery Store images instead (absolute paths
into the dataset, nothing copied): the official train list cut to the seeded Zipf counts, ``--untrained`` SKUs
(seeded) cut to ``--untrained-images`` images (below ``min_shots``: reported, not trained), the official test list
pinned to ``test``, no val rows (the audit carves validation from the train rows: the head gets its hash split plus
one image if it has none, the tail its hash split only), for ``skurec demo --catalogue PATH``. With
``--new-sku-batch DIR`` one more SKU (seeded) is left out of the manifest and DIR becomes a labelled batch of its first
``--min-shots`` train images (hard links to the dataset files, not copies) for the labelling loop; its official
test images are listed in ``DIR.test.txt`` for ``skurec predict``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dataset import DEFAULT_DATASET, dataset_root  # noqa: E402
from calibrated_catalogue import (  # noqa: E402
    THETA_GRID,
    Calibration,
    Catalogue,
    GeneratorParams,
    bank_from_npz,
    calibrate,
    catalogue_from_bank,
    format_calibration_table,
    generate,
)
from export_grocery_embeddings import DEFAULT_OUT_DIR  # noqa: E402

from skurec.models import FlatKNN, FlatPrototype, fit_flat_softmax, train_specialist_hierarchy  # noqa: E402

MODELS = ("hierarchy", "hierarchy_head_only", "strong_flat", "strong_flat_head_only", "prototype", "knn")
TIERS = ("head", "tail", "all")


def zipf_counts(n_classes: int, lo: int, hi: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """Seeded per-SKU train counts over ``lo..hi`` with p(n) ~ n^-exponent (most SKUs few images, a few many)."""
    n = np.arange(lo, hi + 1)
    p = n.astype(float) ** -exponent
    return rng.choice(n, size=n_classes, p=p / p.sum())


def cut_train(cat: Catalogue, counts: dict[int, int], rng: np.random.Generator) -> Catalogue:
    """``cat`` with each SKU's train rows cut to ``counts[sku]`` (seeded choice; fewer rows kept as they are)."""
    keep = []
    for c in np.unique(cat.y_train):
        rows = np.flatnonzero(cat.y_train == c)
        k = min(int(counts.get(int(c), rows.size)), rows.size)
        keep.append(np.sort(rng.choice(rows, k, replace=False)))
    idx = np.concatenate(keep)
    return Catalogue(
        cat.X_train[idx],
        cat.y_train[idx],
        cat.yc_train[idx],
        cat.X_val,
        cat.y_val,
        cat.yc_val,
        cat.X_test,
        cat.y_test,
        cat.yc_test,
        cat.sibling_pairs,
        cat.name,
    )


def write_long_tail_manifest(
    dataset: Path,
    out: Path,
    lo: int,
    hi: int,
    n_untrained: int,
    untrained_images: int,
    seed: int = 0,
    new_sku_batch: Path | None = None,
    batch_images: int = 5,
) -> dict[str, Any]:
    """The long-tailed manifest of the Grocery Store images (module docstring); returns per-SKU train counts."""
    root = dataset_root(dataset)
    names = {}
    with open(root / "classes.csv", newline="") as f:
        for row in csv.DictReader(f):
            names[row["Class ID (int)"]] = (row["Class Name (str)"], row["Coarse Class Name (str)"])
    lists = {}
    for split in ("train", "test"):
        rows = [[p.strip() for p in line.split(",")] for line in (root / f"{split}.txt").read_text().splitlines()]
        lists[split] = [r for r in rows if len(r) == 3]
    rng = np.random.default_rng(seed)
    ids = sorted({r[1] for r in lists["train"]}, key=int)
    want = dict(zip(ids, zipf_counts(len(ids), lo, hi, rng).tolist()))
    order = [str(c) for c in rng.permutation(ids)]
    for c in order[:n_untrained]:
        want[c] = untrained_images
    new = order[n_untrained] if new_sku_batch is not None else None
    by_class: dict[str, list[str]] = {}
    for rel, fine, _ in lists["train"]:
        by_class.setdefault(fine, []).append(rel)
    kept = {
        c: sorted(rng.choice(rels, min(want[c], len(rels)), replace=False).tolist()) for c, rels in by_class.items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_uri", "sku_id", "sku_name", "group_id", "split"])
        for c in ids:
            for rel in kept[c] if c != new else []:
                w.writerow([str(root / rel), names[c][0], names[c][0], names[c][1], "train"])
        for rel, fine, _ in lists["test"]:
            if fine != new:
                w.writerow([str(root / rel), names[fine][0], names[fine][0], names[fine][1], "test"])
    if new is not None:
        (new_sku_batch / "images").mkdir(parents=True, exist_ok=True)
        rows = ["image_uri,sku_id,sku_name,group_id"]
        for j, rel in enumerate(sorted(by_class[new])[:batch_images]):
            link = new_sku_batch / "images" / f"{j:03d}{Path(rel).suffix}"
            if not link.exists():
                # a hard link: the same file, not a copy (a symbolic link out of the batch folder is refused by the
                # batch audit as path_outside_root)
                os.link(root / rel, link)
            rows.append(f"images/{link.name},{names[new][0]},{names[new][0]},{names[new][1]}")
        (new_sku_batch / "manifest.csv").write_text("\n".join(rows) + "\n")  # written last, like an upload
        tests = [str(root / rel) for rel, fine, _ in lists["test"] if fine == new]
        Path(str(new_sku_batch) + ".test.txt").write_text("\n".join(tests) + "\n")
        print(f"new SKU {names[new][0]}: batch of {batch_images} images at {new_sku_batch}, {len(tests)} test images")
    return {names[c][0]: len(kept[c]) for c in ids if c != new}


def _scores(model: Any, X: np.ndarray, y: np.ndarray, k: int = 3) -> dict[str, float | None]:
    if not len(y):
        return {"top1": None, "top3": None}
    labels = model.predict_topk(X, k).labels
    return {
        "top1": float(np.mean(labels[:, 0] == y)),
        "top3": float(np.mean((labels[:, :k] == y[:, None]).any(axis=1))),
    }


def run_scenario(name: str, cat: Catalogue, min_samples: int, min_shots: int) -> dict[str, Any]:
    """Train every model on ``cat`` and score it per tier (head: >= ``min_samples`` train rows, tail: >= ``min_shots``)."""
    X, y = cat.labelled("train")
    Xv, yv = cat.labelled("val")
    Xt, yt = cat.labelled("test")
    skus, counts = np.unique(y, return_counts=True)
    tier = {
        s: ("head" if n >= min_samples else "tail" if n >= min_shots else "untrained") for s, n in zip(skus, counts)
    }
    trained = np.asarray([tier[s] != "untrained" for s in y])
    X, y = X[trained], y[trained]
    catalogue = sorted(set(skus.tolist()) | set(np.unique(yt).tolist()))
    test_tier = np.asarray([tier.get(s, "untrained") for s in yt.tolist()])
    masks = {"head": test_tier == "head", "tail": test_tier == "tail", "all": test_tier != "untrained"}
    in_train = set(y.tolist())
    vmask = np.asarray([s in in_train for s in yv.tolist()])
    Xv, yv = Xv[vmask], yv[vmask]
    times: dict[str, float] = {}
    models: dict[str, Any] = {}

    def timed(key: str, fn: Callable[[], Any]) -> None:
        t = time.perf_counter()
        models[key] = fn()
        times[key] = round(time.perf_counter() - t, 2)

    timed("hierarchy", lambda: train_specialist_hierarchy(X, y, Xv, yv, device="cpu").model)
    head_rows = np.asarray([tier[s] == "head" for s in y.tolist()])
    if head_rows.any() and (~head_rows).any() and len(set(y[head_rows].tolist())) >= 2:
        hv = np.asarray([tier.get(s) == "head" for s in yv.tolist()])
        timed(
            "hierarchy_head_only",
            lambda: train_specialist_hierarchy(X[head_rows], y[head_rows], Xv[hv], yv[hv], device="cpu").model,
        )
        timed(
            "strong_flat_head_only",
            lambda: fit_flat_softmax(X[head_rows], y[head_rows], Xv[hv], yv[hv], device="cpu"),
        )
    timed("strong_flat", lambda: fit_flat_softmax(X, y, Xv, yv, device="cpu"))
    timed("prototype", lambda: FlatPrototype.fit(X, y))
    timed("knn", lambda: FlatKNN(X, y, n_neighbors=10))
    result: dict[str, Any] = {
        "scenario": name,
        "strong_flat": "flat_softmax",
        "n_skus": len(catalogue),
        "n_head": sum(t == "head" for t in tier.values()),
        "n_tail": sum(t == "tail" for t in tier.values()),
        "n_untrained": len(catalogue) - sum(t != "untrained" for t in tier.values()),
        "n_train": int(len(y)),
        "n_test": {t: int(m.sum()) for t, m in masks.items()},
        "train_per_sku": {
            "min": int(counts.min()),
            "median": float(np.median(counts)),
            "max": int(counts.max()),
        },
        "models": {},
        "coverage": {},
        "train_seconds": times,
    }
    for key, model in models.items():
        result["models"][key] = {t: _scores(model, Xt[m], yt[m]) for t, m in masks.items()}
        known = set(np.asarray(model.classes).astype(str).tolist())
        result["coverage"][key] = sum(s in known for s in catalogue) / len(catalogue)
    m = result["models"]
    if m["hierarchy"]["tail"]["top1"] is not None:
        result["tail_gap_top1"] = m["hierarchy"]["tail"]["top1"] - m["strong_flat"]["tail"]["top1"]
        result["tail_gap_top3"] = m["hierarchy"]["tail"]["top3"] - m["strong_flat"]["tail"]["top3"]
    if "hierarchy_head_only" in m:
        result["head_delta_top1"] = m["hierarchy"]["head"]["top1"] - m["hierarchy_head_only"]["head"]["top1"]
        result["flat_head_delta_top1"] = m["strong_flat"]["head"]["top1"] - m["strong_flat_head_only"]["head"]["top1"]
    return result


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores averaged over seeds (with the standard deviation of top-1)."""
    out = json.loads(json.dumps(rows[0]))
    out["seeds"] = len(rows)
    for key in out["models"]:
        for t in TIERS:
            for metric in ("top1", "top3"):
                vals = [r["models"][key][t][metric] for r in rows if r["models"][key][t][metric] is not None]
                out["models"][key][t][metric] = float(np.mean(vals)) if vals else None
                if metric == "top1" and vals:
                    out["models"][key][t]["top1_sd"] = float(np.std(vals))
    for k in ("tail_gap_top1", "tail_gap_top3", "head_delta_top1", "flat_head_delta_top1"):
        if k in out:
            out[k] = float(np.mean([r[k] for r in rows]))
    out["train_seconds"] = {k: float(np.mean([r["train_seconds"][k] for r in rows])) for k in out["train_seconds"]}
    return out


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"### {r['scenario']} ({r['n_skus']} SKUs: head {r['n_head']}, tail {r['n_tail']}, untrained "
        f"{r['n_untrained']}; train images per SKU {r['train_per_sku']['min']}-{r['train_per_sku']['max']} "
        f"(median {r['train_per_sku']['median']:g}); test images head / tail {r['n_test']['head']} / "
        f"{r['n_test']['tail']}; seeds {r.get('seeds', 1)}; strong flat = {r['strong_flat']})",
        "",
        "| model | head top-1 / top-3 | tail top-1 / top-3 | all top-1 / top-3 | coverage | train s |",
        "|---|---|---|---|---|---|",
    ]
    for key in MODELS:
        if key not in r["models"]:
            continue
        m = r["models"][key]
        label = f"strong flat ({r['strong_flat']})" if key == "strong_flat" else key
        cells = [f"{_f(m[t]['top1'])} / {_f(m[t]['top3'])}" for t in TIERS]
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {r['coverage'][key]:.3f} | {r['train_seconds'].get(key, 0):.1f} |"
        )
    notes = []
    if "tail_gap_top1" in r:
        notes.append(
            f"tail gap hierarchy - strong flat: top-1 {100 * r['tail_gap_top1']:+.1f} pt, top-3 "
            f"{100 * r['tail_gap_top3']:+.1f} pt"
        )
    if "head_delta_top1" in r:
        notes.append(
            f"head delta tiered - head-only model on the head test images: hierarchy top-1 "
            f"{100 * r['head_delta_top1']:+.1f} pt (strong flat {100 * r['flat_head_delta_top1']:+.1f} pt)"
        )
    return "\n".join(lines + ([""] + notes if notes else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--npz", type=Path, default=DEFAULT_OUT_DIR / "grocery_mobilenetv2_100.npz")
    ap.add_argument("--ks", type=int, nargs="*", default=[5, 10, 20], help="fixed train images per SKU")
    ap.add_argument("--mixed-ks", type=int, nargs="*", default=[1, 3, 5, 10], help="tail K of the mixed scenario")
    ap.add_argument("--zipf-min", type=int, default=5)
    ap.add_argument("--zipf-max", type=int, default=60)
    ap.add_argument("--grocery-min-samples", type=int, default=20)
    ap.add_argument("--min-samples", type=int, default=50, help="head tier of the generated catalogues")
    ap.add_argument("--min-shots", type=int, default=1, help="tail floor of the benchmark (1: every SKU admitted)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the Grocery scenarios")
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 2000], help="generated catalogue sizes")
    ap.add_argument("--calibration", type=Path, help="calibration JSON to reuse / to write (bench_out/...)")
    ap.add_argument("--calibration-seeds", type=int, default=1)
    ap.add_argument("--only", choices=["grocery", "generated"], help="run one family of scenarios only")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--write-manifest", type=Path, help="write the long-tailed Grocery manifest here and stop")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    ap.add_argument("--untrained", type=int, default=4, help="SKUs of the manifest cut below min_shots")
    ap.add_argument("--untrained-images", type=int, default=3)
    ap.add_argument("--new-sku-batch", type=Path, help="with --write-manifest: a labelled batch of a held-out SKU")
    args = ap.parse_args()
    if args.write_manifest:
        counts = write_long_tail_manifest(
            args.dataset,
            args.write_manifest,
            args.zipf_min,
            args.zipf_max,
            args.untrained,
            args.untrained_images,
            new_sku_batch=args.new_sku_batch,
            batch_images=max(args.min_shots, 5),
        )
        n = np.asarray(list(counts.values()))
        print(
            f"wrote {args.write_manifest}: {len(counts)} SKUs, {int(n.sum())} train rows (per SKU {n.min()}-{n.max()}, "
            f"median {np.median(n):g}; {int((n >= args.grocery_min_samples).sum())} with >= "
            f"{args.grocery_min_samples}, {int((n < 5).sum())} below 5) + the official test list"
        )
        return
    t0 = time.perf_counter()
    bank = bank_from_npz(args.npz)
    real = catalogue_from_bank(bank)
    results: list[dict[str, Any]] = []

    def report(r: dict[str, Any]) -> None:
        results.append(r)
        print("\n" + format_table(r) + "\n", flush=True)

    if args.only != "generated":
        C = real.n_classes
        for k in args.ks:
            runs = [
                run_scenario(f"grocery K={k}", cut_train(real, dict.fromkeys(range(C), k), rng), 10**9, args.min_shots)
                for rng in (np.random.default_rng(s) for s in range(args.seeds))
            ]
            report(_mean(runs))
        runs = []
        for s in range(args.seeds):
            rng = np.random.default_rng(100 + s)
            counts = dict(enumerate(zipf_counts(C, args.zipf_min, args.zipf_max, rng).tolist()))
            runs.append(
                run_scenario(
                    f"grocery zipf {args.zipf_min}-{args.zipf_max} (head >= {args.grocery_min_samples})",
                    cut_train(real, counts, rng),
                    args.grocery_min_samples,
                    args.min_shots,
                )
            )
        report(_mean(runs))
        for k in args.mixed_ks:
            runs = []
            for s in range(args.seeds):
                rng = np.random.default_rng(200 + s)
                tail = rng.permutation(C)[: C // 2]
                counts = {int(c): k for c in tail}
                runs.append(
                    run_scenario(f"grocery mixed: half whole, half K={k}", cut_train(real, counts, rng), k + 1, 1)
                )
            report(_mean(runs))
    if args.only != "grocery" and args.sizes:
        if args.calibration and args.calibration.exists():
            cal = Calibration.from_json(args.calibration.read_text())
        else:
            cal = calibrate(bank, seeds=args.calibration_seeds, base=GeneratorParams(), theta_grid=THETA_GRID)
            if args.calibration:
                args.calibration.parent.mkdir(parents=True, exist_ok=True)
                args.calibration.write_text(cal.to_json())
        print(format_calibration_table(cal), flush=True)
        for n in args.sizes:
            rng = np.random.default_rng(300 + n)
            cat = generate(bank, n, cal.params, seed=0, train_per_class=args.zipf_max)
            counts = dict(enumerate(zipf_counts(n, args.zipf_min, args.zipf_max, rng).tolist()))
            report(
                run_scenario(
                    f"generated-{n} zipf {args.zipf_min}-{args.zipf_max} (head >= {args.min_samples})",
                    cut_train(cat, counts, rng),
                    args.min_samples,
                    args.min_shots,
                )
            )
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"npz": str(args.npz), "results": results}, indent=1, default=float))


if __name__ == "__main__":
    main()
