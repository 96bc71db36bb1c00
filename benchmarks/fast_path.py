"""New-SKU fast path vs full rebuild on real embeddings (Grocery Store, frozen encoder).

Hold out ``--new`` classes, train the hierarchical model on the rest the way the full rebuild does
(:func:`skurec.models.train_specialist_hierarchy`: LDA confusion superclasses -> router -> specialists, every choice
on validation), then make the held-out classes recognisable

* by the fast path: ``HierarchicalClassifier.add_classes`` on their train embeddings (no training), and
* by a full rebuild on all classes (re-clustering superclasses, retraining both heads),

and compare wall time and test top-1 accuracy (all classes / new classes / old classes). Input: an ``.npz`` with
``X`` (n, d) L2-normalised embeddings, ``fine`` labels, ``split`` (train/val/test), e.g. written by
``benchmarks/export_grocery_embeddings.py``.

    python benchmarks/fast_path.py --npz bench_out/grocery_embeddings/grocery_efficientnet_lite2.npz --new 5 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Where benchmarks/export_grocery_embeddings.py writes by default (its --out-dir).
DEFAULT_NPZ = REPO / "bench_out" / "grocery_embeddings" / "grocery_efficientnet_lite2.npz"

from skurec.models import HierarchicalClassifier, train_specialist_hierarchy  # noqa: E402


def full_build(X, y, Xv, yv) -> tuple[HierarchicalClassifier, dict]:
    """The full rebuild's training (the same core call as the pipeline's superclasses/coarse/fine assets)."""
    t0 = time.perf_counter()
    res = train_specialist_hierarchy(X, y, Xv, yv)
    t = {
        "total_s": time.perf_counter() - t0,
        "n_superclasses": res.superclasses.n_superclasses,
        "superclass_method": res.superclasses.method,
        "report": res.report,
    }
    return res.model, t


def accuracy(model, X, y, mask=None) -> float:
    if mask is not None:
        X, y = X[mask], y[mask]
    if len(y) == 0:
        return float("nan")
    return float(np.mean(model.predict_topk(X, k=1).labels[:, 0] == y))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--npz",
        default=str(DEFAULT_NPZ),
        help="embeddings from benchmarks/export_grocery_embeddings.py (default: %(default)s)",
    )
    p.add_argument("--new", type=int, default=5, help="classes held out and added later")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attach", default="coarse", choices=["coarse", "nearest_class", "centroid"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    d = np.load(args.npz, allow_pickle=False)
    X, y, split = d["X"].astype(np.float32), d["fine"].astype(str), d["split"].astype(str)
    classes = sorted(set(y))
    rng = np.random.default_rng(args.seed)
    new = sorted(rng.choice(classes, size=args.new, replace=False).tolist())
    is_new = np.isin(y, new)
    tr, va, te = split == "train", split == "val", split == "test"
    print(
        f"{args.npz}: {len(y)} embeddings of dim {X.shape[1]}, {len(classes)} classes; "
        f"held out {len(new)} new classes: {new}",
        flush=True,
    )

    base, t_base = full_build(X[tr & ~is_new], y[tr & ~is_new], X[va & ~is_new], y[va & ~is_new])
    print(f"base model (without the new classes) built in {t_base['total_s']:.1f}s", flush=True)

    t0 = time.perf_counter()
    fast = base.add_classes(X[tr & is_new], y[tr & is_new], attach=args.attach)
    t_fast = time.perf_counter() - t0

    full, t_full = full_build(X[tr], y[tr], X[va], y[va])

    rows = {}
    for name, model in (("base (before)", base), ("fast path", fast.model), ("full rebuild", full)):
        rows[name] = {
            "test_top1_all": accuracy(model, X[te], y[te]),
            "test_top1_new": accuracy(model, X[te], y[te], is_new[te]),
            "test_top1_old": accuracy(model, X[te], y[te], ~is_new[te]),
        }
    result = {
        "npz": args.npz,
        "n_classes": len(classes),
        "new_classes": new,
        "attach": args.attach,
        "superclass_of_new": fast.superclass_of_new,
        "n_new_train_images": int((tr & is_new).sum()),
        "fast_path_seconds": t_fast,
        "full_rebuild_seconds": t_full,
        "base_build_seconds": t_base,
        "accuracy": rows,
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"\nfast path (add_classes, {result['n_new_train_images']} images, attach={args.attach}): {t_fast * 1000:.1f} ms"
    )
    print(
        f"full rebuild ({t_full['n_superclasses']} superclasses, {t_full['superclass_method']}): {t_full['total_s']:.1f} s"
        f"  -> fast path is {t_full['total_s'] / max(t_fast, 1e-9):.0f}x faster"
    )
    print(f"\n{'model':16}{'top-1 all':>11}{'top-1 new':>11}{'top-1 old':>11}")
    for name, r in rows.items():
        print(f"{name:16}{r['test_top1_all']:11.4f}{r['test_top1_new']:11.4f}{r['test_top1_old']:11.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
