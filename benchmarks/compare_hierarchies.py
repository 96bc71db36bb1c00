"""The pipeline's hierarchy against the case study's recipe and the strong flat model, on the same frozen embeddings.

* ``specialist``: ``train_hierarchy(recipe="production")`` (what the pipeline trains: LDA confusion superclasses, LDA
  router, local-whitening specialists; every choice on validation);
* ``case_study``: ``train_hierarchy(recipe="case_study")``: UMAP + agglomerative superclasses on prototypes (about
  100 at 1-2k SKUs), dense coarse head, episodic few-shot fine head, soft routing with ``m`` chosen on validation;
* ``flat_linear``: :func:`skurec.models.fit_flat_softmax` (the strong flat softmax, L2 and stopping chosen on validation).

Input: one or more ``.npz`` from ``benchmarks/export_grocery_embeddings.py`` (``X``, ``fine``, ``split``); several are
concatenated (each part re-normalised). Prints validation and test top-1 and training seconds of each, in one run::

    python3 benchmarks/compare_hierarchies.py bench_out/grocery_embeddings/grocery_efficientnet_lite2.npz \\
        bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skurec.models import fit_flat_softmax, l2_normalize, train_hierarchy  # noqa: E402


def load(paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts, y, split, order = [], None, None, None
    for p in paths:
        d = np.load(p, allow_pickle=False)
        if order is not None and not (d["path"] == order).all():
            raise SystemExit(f"{p} lists other images (or another order) than {paths[0]}")
        order, y, split = d["path"], d["fine"].astype(str), d["split"].astype(str)
        parts.append(l2_normalize(d["X"].astype(np.float32)))
    return l2_normalize(np.concatenate(parts, axis=1)), y, split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("npz", nargs="+")
    args = ap.parse_args(argv)
    X, y, split = load(args.npz)
    tr, va, te = split == "train", split == "val", split == "test"
    print(
        f"{len(y)} embeddings of dim {X.shape[1]}, {len(set(y))} SKUs: {tr.sum()} train / {va.sum()} val / {te.sum()} test"
    )

    def top1(model, mask) -> float:
        return float(np.mean(model.predict_topk(X[mask], k=1).labels[:, 0] == y[mask]))

    rows = []
    for name, fit in (
        ("specialist", lambda: train_hierarchy(X[tr], y[tr], X[va], y[va], "production").model),
        ("case_study", lambda: train_hierarchy(X[tr], y[tr], X[va], y[va], "case_study").model),
        ("flat_linear", lambda: fit_flat_softmax(X[tr], y[tr], X[va], y[va])),
    ):
        t0 = time.perf_counter()
        model = fit()
        seconds = time.perf_counter() - t0
        extra = f"m={model.m} beta={model.fine.beta}" if name == "specialist" else ""
        extra = f"m={model.m} superclasses={model.n_superclasses}" if name == "case_study" else extra
        rows.append((name, top1(model, va), top1(model, te), seconds, extra))
        print(f"  {name} trained in {seconds:.1f}s", flush=True)
    print(f"\n{'model':14}{'val top-1':>11}{'test top-1':>12}{'train s':>9}  notes")
    for name, v, t, s, extra in rows:
        print(f"{name:14}{v:11.4f}{t:12.4f}{s:9.1f}  {extra}")
    flat_s = rows[2][3]
    print(f"\nspecialist hierarchy training / tuned flat training: {rows[0][3] / flat_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
