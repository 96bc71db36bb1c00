"""Real-data benchmark: the full skurec pipeline on the Grocery Store dataset (Klasson et al., WACV 2019).

Two protocols, each run through the same Dagster assets the product uses (audit -> embeddings -> prototypes ->
superclasses -> coarse -> fine -> flat baselines -> evaluation):

* ``official``: all 81 fine classes, trained on the official train+val lists, scored on the official test list
  (pinned with the manifest's ``split`` column; comparable with the published ~86% top-1 of fine-tuned CNNs).
  The official val list is kept as our validation split (early stopping), never the test list.
* ``reference``: classes with >= 50 images over all lists (60 classes), our stable 90/10 hash split, scored on val.

Usage::

    python benchmarks/grocery_store.py [--dataset ../shared/datasets/grocery_store] [--out bench_out/grocery]
        [--encoder efficientnet_lite2+mobilenetv2_100] [--protocols official reference]
        [--layers N] [--views tight] [--train-views K]
    python benchmarks/grocery_store.py --options [--train-views 2]   # the feature-option table (feature_options.py)

The dataset is read in place (never copied); the work directories under ``--out`` hold the embedding cache, so a
second run re-uses every embedding. Prints one table per protocol: model -> top-1 / top-3 on `all` and `similar`,
plus two reference rows trained on the pipeline's own rows and scored on the report's split: the issue-18 probe and
``case_study`` (the published recipe, ``train_hierarchy(recipe="case_study")``, when the report does not carry it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dataset import DEFAULT_DATASET  # noqa: E402  (beside the checkout; --dataset overrides it)


def write_manifest(dataset: Path, out: Path, pin_splits: bool) -> Path:
    """A skurec manifest over the official lists: absolute image paths, fine class as SKU, coarse class as group."""
    root = dataset / "dataset"
    names = {}
    with open(root / "classes.csv", newline="") as f:
        for row in csv.DictReader(f):
            names[row["Class ID (int)"]] = (row["Class Name (str)"], row["Coarse Class Name (str)"])
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / ("manifest_official.csv" if pin_splits else "manifest_reference.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_uri", "sku_id", "sku_name", "group_id", "split"])
        for split in ("train", "val", "test"):
            for line in (root / f"{split}.txt").read_text().splitlines():
                if not line.strip():
                    continue
                rel, fine_id, _coarse_id = [p.strip() for p in line.split(",")]
                fine, coarse = names[fine_id]
                w.writerow([str(root / rel), fine, fine, coarse, split if pin_splits else ""])
    return manifest


def run_protocol(
    name: str,
    manifest: Path,
    workdir: Path,
    encoder: str,
    min_samples: int,
    shared_cache: Path | None,
    layers: int = 0,
    views: str | None = None,
    train_views: int = 0,
    image_root: Path | None = None,
) -> dict:
    import dagster as dg

    from skurec_assets.definitions import all_assets, all_checks
    from skurec_resources import CatalogueResource, EncoderResource, LabellingLoopResource, StorageResource

    workdir.mkdir(parents=True, exist_ok=True)
    if shared_cache is not None and shared_cache.exists() and not (workdir / "embeddings").exists():
        shutil.copytree(shared_cache, workdir / "embeddings")  # same image ids -> no re-embedding
    resources = {
        "storage": StorageResource(workdir=str(workdir)),
        # the manifest names the dataset's images by absolute path: the dataset folder is an allowed read root
        "catalogue": CatalogueResource(
            location=str(manifest), allow=str(image_root) if image_root else None, min_samples=min_samples
        ),
        "encoder": EncoderResource(name=encoder, layers=layers or None, views=views, train_views=train_views),
        "loop": LabellingLoopResource(drop_location=str(workdir / "drop")),
    }
    t0 = time.perf_counter()
    result = dg.materialize(
        [*all_assets, *all_checks],
        resources=resources,
        selection=dg.AssetSelection.groups("ingest", "embed", "train", "evaluate")
        - dg.AssetSelection.assets("labelled_batch"),
        raise_on_error=True,
    )
    seconds = time.perf_counter() - t0
    timings = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            timings[event.step_key] = event.event_specific_data.duration_ms / 1000.0
    report = json.loads((workdir / "reports" / "evaluation.json").read_text())
    headline = (workdir / "reports" / "evaluation.md").read_text().splitlines()[0]
    out = {"report": report, "seconds": seconds, "timings": timings, "headline": headline, "probe": probe_row(workdir)}
    if "case_study" not in report["variants"]["all"]["models"]:
        out["case_study"] = case_study_row(workdir)
    return out


def case_study_row(workdir: Path) -> dict:
    """The case study's recipe (prototypes -> UMAP -> agglomerative superclasses, dense coarse head, few-shot fine
    head; every choice on the validation split) on the pipeline's own fit rows, scored on the report's split."""
    from skurec.embeddings.training_data import load_training_data
    from skurec.models import train_hierarchy
    from skurec_resources import StorageResource

    data = load_training_data(StorageResource(workdir=str(workdir)).workspace())
    t0 = time.perf_counter()
    res = train_hierarchy(data.fit.X, data.fit.y, data.val.X, data.val.y, "case_study")
    seconds = time.perf_counter() - t0
    split = data.eval_split
    labels = res.model.predict_topk(split.X, 3).labels
    return {
        "top1": float((labels[:, 0] == split.y).mean()),
        "top3": float((labels == split.y[:, None]).any(1).mean()),
        "seconds": round(seconds, 1),
        "m": res.report["m"],
        "n_superclasses": res.report["n_superclasses"],
    }


def probe_row(workdir: Path) -> dict:
    """The issue-18 reference probe (scale.py's :class:`AdamProbe`: plain Adam softmax, standardised inputs, 30
    epochs, no tuning) on the pipeline's own fit rows, scored on the report's split."""
    from scale import AdamProbe

    from skurec.embeddings.training_data import load_training_data
    from skurec_resources import StorageResource

    data = load_training_data(StorageResource(workdir=str(workdir)).workspace())
    t0 = time.perf_counter()
    probe = AdamProbe(data.fit.X, data.fit.y)
    seconds = time.perf_counter() - t0
    split = data.eval_split
    labels = probe.predict_topk(split.X, 3).labels
    return {
        "top1": float((labels[:, 0] == split.y).mean()),
        "top3": float((labels == split.y[:, None]).any(1).mean()),
        "seconds": round(seconds, 1),
    }


def print_table(name: str, out: dict) -> None:
    rep = out["report"]
    print(
        f"\n=== protocol: {name}  (encoder {rep['encoder']}, scored on '{rep['split']}', routing m={rep.get('route_m')})"
    )
    variants = rep["variants"]
    header = f"{'model':<20}" + "".join(f"{v + ' top1':>14}{v + ' top3':>14}" for v in variants)
    print("  ".join(f"{v}: {b['n_classes']} classes / {b['n_images']} images" for v, b in variants.items()))
    print(header)
    models = list(variants["all"]["models"])
    for m in models:
        cells = ""
        for v in variants:
            s = variants[v]["models"].get(m, {})
            cells += "".join(f"{(s.get(k) if s.get(k) is not None else float('nan')):>14.4f}" for k in ("top1", "top3"))
        print(f"{m:<20}{cells}")
    if out.get("probe"):
        pr = out["probe"]
        print(f"{'probe (reference)':<20}{pr['top1']:>14.4f}{pr['top3']:>14.4f}   (all images; {pr['seconds']}s)")
    if out.get("case_study"):
        cs = out["case_study"]
        print(
            f"{'case_study':<20}{cs['top1']:>14.4f}{cs['top3']:>14.4f}   (all images; {cs['n_superclasses']} "
            f"superclasses, m={cs['m']}; {cs['seconds']}s)"
        )
    if out.get("probe"):
        pr = out["probe"]
        soft = variants["all"]["models"]["hierarchical_soft"]
        print(
            f"hierarchical_soft - probe: top-1 {soft['top1'] - pr['top1']:+.4f}, top-3 {soft['top3'] - pr['top3']:+.4f}"
        )
    for variant, gap in (
        (rep.get("hierarchy") or {}).get("models", {}).get("hierarchical_soft", {}).get("gap") or {}
    ).items():
        g3 = f", top-3 {gap['gap_top3']:+.4f} vs {gap['best_flat_top3_model']}" if "gap_top3" in gap else ""
        print(f"gap hierarchical - best flat ({gap['best_flat']}) on {variant}: top-1 {gap['gap_top1']:+.4f}{g3}")
    if out.get("headline"):
        print(f"report first line: {out['headline']}")
    t = out["timings"]
    keys = ["image_embeddings", "superclasses", "coarse_model", "fine_model", "flat_baselines"]
    print("step seconds: " + ", ".join(f"{k}={t[k]:.1f}" for k in keys if k in t) + f"; total {out['seconds']:.1f}s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    p.add_argument("--out", type=Path, default=Path("bench_out/grocery"))
    p.add_argument("--encoder", default=os.environ.get("SKUREC_ENCODER", "efficientnet_lite2+mobilenetv2_100"))
    p.add_argument("--protocols", nargs="+", default=["official", "reference"], choices=["official", "reference"])
    p.add_argument("--layers", type=int, default=0, help="encoder option: also GeM-pool the last N stages")
    p.add_argument("--views", default=None, help="encoder option: test-time view recipe (tight, flip, zoom, ...)")
    p.add_argument("--train-views", type=int, default=0, help="K train-time augmented views per train image")
    p.add_argument(
        "--options",
        action="store_true",
        help="print the feature-option table instead (val / test accuracy, img/s; benchmarks/feature_options.py, "
        "which takes the remaining arguments, e.g. --train-views 2)",
    )
    args, rest = p.parse_known_args(argv)
    if args.options:
        import feature_options

        return feature_options.main(["--dataset", str(args.dataset / "dataset"), *rest])
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if not (args.dataset / "dataset" / "train.txt").exists():
        raise SystemExit(f"Grocery Store dataset not found under {args.dataset}")
    out_root = args.out.resolve()
    results = {}
    shared = None
    for name in args.protocols:
        manifest = write_manifest(args.dataset, out_root, pin_splits=(name == "official"))
        workdir = out_root / f"work_{name}"
        min_samples = 1 if name == "official" else 50
        results[name] = run_protocol(
            name,
            manifest,
            workdir,
            args.encoder,
            min_samples,
            shared,
            args.layers,
            args.views,
            args.train_views,
            image_root=args.dataset.resolve(),
        )
        shared = workdir / "embeddings"
        print_table(name, results[name])
    (out_root / "results.json").write_text(
        json.dumps({k: {**v["report"], "case_study_row": v.get("case_study")} for k, v in results.items()}, indent=2)
    )
    print(f"\nreports: {out_root}/work_*/reports/evaluation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
