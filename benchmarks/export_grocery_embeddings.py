"""Embed the Grocery Store dataset with a frozen encoder and write an .npz for calibration/benchmarks.

Output ``<out-dir>/grocery_<encoder-name>.npz`` (default out-dir: ``bench_out/grocery_embeddings`` in the checkout) (name suffixed with non-default options) with keys
``X`` float32 (n, d) L2-normalised, ``fine``/``coarse``/``split``/``path`` (unicode string arrays, loadable with
``np.load(..., allow_pickle=False)``) and ``encoder_identity`` (JSON string).

Then prints a flat logistic-regression baseline (fit on train+val, scored on test) and, with ``--val-report``,
a train -> val comparison used to decide options such as flip averaging (never tuned on test).

Examples::

    python3 benchmarks/export_grocery_embeddings.py --encoder efficientnet_lite2
    python3 benchmarks/export_grocery_embeddings.py --encoder mobilenetv2_100
    python3 benchmarks/export_grocery_embeddings.py --baseline-only --concat efficientnet_lite2 mobilenetv2_100
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _dataset import DEFAULT_DATASET, REPO, dataset_root  # noqa: E402

from skurec.embeddings.encode import iter_embeddings  # noqa: E402
from skurec.encoders import load_encoder  # noqa: E402

DEFAULT_OUT_DIR = REPO / "bench_out" / "grocery_embeddings"
DATASET = DEFAULT_DATASET  # replaced by dataset_root(--dataset) in main()
OUT_DIR = DEFAULT_OUT_DIR  # replaced by --out-dir in main()
SPLITS = ("train", "val", "test")
GRANNY_SMITH_IMAGENET = 948

log = logging.getLogger("export_grocery")


def read_classes(root: Path) -> tuple[dict[int, str], dict[int, str]]:
    """fine id -> fine name, coarse id -> coarse name (from classes.csv)."""
    fine, coarse = {}, {}
    with open(root / "classes.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            fine[int(row["Class ID (int)"])] = row["Class Name (str)"].strip()
            coarse[int(row["Coarse Class ID (int)"])] = row["Coarse Class Name (str)"].strip()
    return fine, coarse


def read_split_rows(root: Path, splits: tuple[str, ...] = SPLITS) -> list[tuple[str, str, str, str]]:
    """All (relative_path, fine_name, coarse_name, split) rows of the split files, in file order."""
    fine_names, coarse_names = read_classes(root)
    rows = []
    for split in splits:
        with open(root / f"{split}.txt") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rel, fine_id, coarse_id = (p.strip() for p in line.split(","))
                rows.append((rel, fine_names[int(fine_id)], coarse_names[int(coarse_id)], split))
    return rows


def _reader(path: Path):  # type: ignore[no-untyped-def]
    return lambda: path.read_bytes()


def output_path(encoder_name: str, tag: str) -> Path:
    return OUT_DIR / f"grocery_{encoder_name}{tag}.npz"


def export(
    encoder_name: str,
    options: dict[str, object],
    tag: str,
    batch_size: int,
    limit: int | None,
    splits: tuple[str, ...] = SPLITS,
) -> Path:
    """Embed every image of ``splits`` and write the .npz atomically; returns its path."""
    encoder = load_encoder(encoder_name, **options)  # type: ignore[arg-type]
    rows = read_split_rows(DATASET, splits)[: limit or None]
    items = [(str(i), _reader(DATASET / rel)) for i, (rel, *_rest) in enumerate(rows)]
    log.info("embedding %d images with %s", len(items), encoder.encoder_id)
    t0 = time.perf_counter()
    vecs: dict[int, np.ndarray] = {}
    failures = []
    for batch in iter_embeddings(encoder, items, batch_size=batch_size, tqdm_bar=True):
        for image_id, vec in zip(batch.ids, batch.vectors):
            vecs[int(image_id)] = vec
        failures.extend(batch.failures)
    dt = time.perf_counter() - t0
    if failures:
        log.warning("%d images failed: %s", len(failures), failures[:5])
    keep = sorted(vecs)
    print(
        f"[{encoder_name}{tag}] embedded {len(keep)} images in {dt:.1f}s ({len(keep) / dt:.1f} img/s), "
        f"{len(failures)} failures, encoder_id={encoder.encoder_id}"
    )
    out = output_path(encoder_name, tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        X=np.stack([vecs[i] for i in keep]).astype(np.float32),
        fine=np.array([rows[i][1] for i in keep], dtype=str),
        coarse=np.array([rows[i][2] for i in keep], dtype=str),
        split=np.array([rows[i][3] for i in keep], dtype=str),
        path=np.array([rows[i][0] for i in keep], dtype=str),
        encoder_identity=np.array(json.dumps(encoder.identity())),
    )
    os.replace(tmp, out)
    print(f"[{encoder_name}{tag}] wrote {out} X={len(keep)}x{encoder.dim}")
    return out


def imagenet_sanity(encoder_name: str, n: int = 8) -> None:
    """Top ImageNet class of Granny-Smith photos with the packaged classifier head (proves the weights loaded)."""
    import torch

    from skurec.encoders.packaged import PACKAGED, build_packaged_model
    from skurec.images import decode_rgb

    if encoder_name not in PACKAGED or not PACKAGED[encoder_name].has_classifier:
        print(f"[{encoder_name}] no ImageNet head shipped; sanity = weights-equal test + linear-probe accuracy")
        return
    model, _ = build_packaged_model(encoder_name, with_classifier=True)
    enc = load_encoder(encoder_name)
    paths = [DATASET / r[0] for r in read_split_rows(DATASET) if r[1] == "Granny-Smith" and r[3] == "train"][:n]
    x = torch.stack([enc.preprocess(decode_rgb(p.read_bytes(), enc.min_decode_side)) for p in paths])
    with torch.inference_mode():
        prob = model(x).softmax(1)
    top = prob.argmax(1).tolist()
    hits = sum(t == GRANNY_SMITH_IMAGENET for t in top)
    print(
        f"[{encoder_name}] ImageNet top-1 on {len(paths)} Granny-Smith photos: {top} "
        f"({hits}/{len(paths)} = class 948 'Granny Smith', mean p={prob.max(1).values.mean():.2f})"
    )


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def logreg_accuracy(X_tr: np.ndarray, y_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, C: float = 1.0) -> float:
    """Flat multinomial logistic regression on standardised features; test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
    clf.fit(X_tr, y_tr)
    return float((clf.predict(X_te) == y_te).mean())


def concat_normalised(arrays: list[np.ndarray]) -> np.ndarray:
    """Each part L2-normalised, concatenated, re-normalised (same recipe as the combined encoder)."""
    parts = [a / np.linalg.norm(a, axis=1, keepdims=True) for a in arrays]
    X = np.concatenate(parts, axis=1)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def baseline(label: str, X: np.ndarray, data: dict[str, np.ndarray], C: float, val_report: bool) -> None:
    split, fine = data["split"], data["fine"]
    trv, te = np.isin(split, ["train", "val"]), split == "test"
    t0 = time.perf_counter()
    msg = f"[baseline] {label:45s} d={X.shape[1]:5d}"
    if te.any():
        msg += f" fine acc train+val->test = {logreg_accuracy(X[trv], fine[trv], X[te], fine[te], C=C):.3f}"
    else:
        msg += " (no test split exported)"
    if val_report or not te.any():
        tr, va = split == "train", split == "val"
        msg += f" | train->val = {logreg_accuracy(X[tr], fine[tr], X[va], fine[va], C=C):.3f}"
    print(msg + f"  ({time.perf_counter() - t0:.0f}s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="efficientnet_lite2")
    ap.add_argument("--views", default="center", choices=["center", "flip"])
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="only the first N rows (smoke test)")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to embed")
    ap.add_argument("--baseline-only", action="store_true", help="skip embedding; evaluate existing .npz files")
    ap.add_argument("--concat", nargs="*", default=[], help="also evaluate the concatenation of these encoders' npz")
    ap.add_argument(
        "--compare", nargs="*", default=[], help="extra npz stems (e.g. efficientnet_lite2_flip) to evaluate"
    )
    ap.add_argument("--val-report", action="store_true", help="also print train->val accuracy (for option choices)")
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        help="Grocery Store dataset (default: %(default)s, beside the checkout)",
    )
    ap.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the .npz files go (default: %(default)s)"
    )
    args = ap.parse_args(argv)
    global DATASET, OUT_DIR
    OUT_DIR = args.out_dir
    if not args.baseline_only:
        DATASET = dataset_root(args.dataset)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    options: dict[str, object] = {"views": args.views}
    tag = "" if args.views == "center" else f"_{args.views}"
    if args.input_size:
        options["input_size"] = args.input_size
        tag += f"_{args.input_size}"
    if args.limit:
        tag += f"_limit{args.limit}"  # never overwrite the full export with a smoke-test file
    if tuple(args.splits) != SPLITS:
        tag += "_" + "-".join(args.splits)
    if not args.baseline_only:
        imagenet_sanity(args.encoder)
        export(args.encoder, options, tag, args.batch_size, args.limit, tuple(args.splits))
        data = load_npz(output_path(args.encoder, tag))
        baseline(f"{args.encoder}{tag}", data["X"], data, args.C, args.val_report)
    for stem in args.compare:
        data = load_npz(OUT_DIR / f"grocery_{stem}.npz")
        baseline(stem, data["X"], data, args.C, args.val_report)
    if args.concat:
        datas = [load_npz(output_path(n, tag)) for n in args.concat]
        for d in datas[1:]:
            if not np.array_equal(d["path"], datas[0]["path"]):
                raise SystemExit("the npz files do not list the same images in the same order")
        for n, d in zip(args.concat, datas):
            baseline(f"{n}{tag}", d["X"], d, args.C, args.val_report)
        baseline(
            "+".join(args.concat) + tag, concat_normalised([d["X"] for d in datas]), datas[0], args.C, args.val_report
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
