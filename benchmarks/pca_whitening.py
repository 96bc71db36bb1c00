"""PCA whitening (``skurec.encoders.whitening.PCAWhitening``, fitted on TRAIN rows only) before the heads, on exported
Grocery Store embeddings: the strong flat softmax and the pipeline's hierarchy, fitted on train, chosen on val,
scored once on test, for each whitening dimension (``none`` = the plain embeddings).

    python3 benchmarks/pca_whitening.py bench_out/grocery_embeddings/grocery_efficientnet_lite2.npz \
        bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz          # several files: their concatenation
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skurec.encoders.whitening import PCAWhitening  # noqa: E402
from skurec.models import fit_flat_softmax, l2_normalize, train_specialist_hierarchy  # noqa: E402


def top1(model, X: np.ndarray, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    return float(np.mean(model.predict_topk(X, 1).labels[:, 0] == y))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("npz", nargs="+", type=Path)
    ap.add_argument("--dims", nargs="+", type=int, default=[1024, 512, 256])
    args = ap.parse_args(argv)
    zs = [np.load(p, allow_pickle=False) for p in args.npz]
    X = l2_normalize(np.concatenate([l2_normalize(z["X"]) for z in zs], axis=1))
    y, split = zs[0]["fine"].astype(str), zs[0]["split"].astype(str)
    tr, va, te = split == "train", split == "val", split == "test"
    print(
        "| whitening dim | flat val | flat test | hierarchy val | hierarchy test | seconds |\n|---|---|---|---|---|---|"
    )
    for dim in [None, *args.dims]:
        Z = X if dim is None else PCAWhitening.fit(X[tr], dim=dim).transform(X)
        t0 = time.perf_counter()
        flat = fit_flat_softmax(Z[tr], y[tr], Z[va], y[va], device="cpu")
        hier = train_specialist_hierarchy(Z[tr], y[tr], Z[va], y[va], device="cpu").model
        print(
            f"| {dim or 'none'} | {top1(flat, Z[va], y[va]):.3f} | {top1(flat, Z[te], y[te]):.3f} | "
            f"{top1(hier, Z[va], y[va]):.3f} | {top1(hier, Z[te], y[te]):.3f} | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
