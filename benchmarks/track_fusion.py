"""Tracks, not frames: top-1 of the fused answer over k = 1, 2, 3 frames of one product, Grocery Store test list.

Model: the pipeline's hierarchy trained on the train rows of the Grocery Store features, temperature-calibrated on
the validation rows (:func:`skurec.deployment.calibration.calibrate_outputs`); fusion is
:func:`skurec.edge.decide.fuse_track` (sum of calibrated log-posteriors), the function ``Recognizer.predict_track``
and ``EdgeRunner.predict_track`` use. Two proxies of "the same product seen over several frames":

1. **photos**: every test photo with k - 1 other test photos of the same SKU (seeded draws; the data set's photos
   of one SKU come from a few shelf sessions, so this is an optimistic proxy of a moving cart);
2. **views** (``--views N``, needs the images): k train-time augmented views (random resized crop, flip, colour
   jitter: :func:`skurec.encoders.views.train_view`) of ONE test photo, embedded with the encoder (a pessimistic
   proxy: the frames share the photo's viewpoint).

    python benchmarks/track_fusion.py --features bench_out/grocery_embeddings/grocery_mobilenetv2_100.npz --views 400
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dataset import DEFAULT_DATASET  # noqa: E402
from export_grocery_embeddings import DEFAULT_OUT_DIR  # noqa: E402

from skurec.deployment.calibration import calibrate_outputs  # noqa: E402
from skurec.deployment.scoring import ScoreGraph, score_arrays  # noqa: E402
from skurec.edge.decide import decide, fuse_track  # noqa: E402
from skurec.models import train_specialist_hierarchy  # noqa: E402
from skurec.models._common import encode_labels  # noqa: E402

DATASET = DEFAULT_DATASET / "dataset"  # the Grocery Store checkout beside this repository
KS = (1, 2, 3)


RULES = ("sum_log", "mean_prob")


def fused_top1(out: dict, groups: list[np.ndarray], classes: list[str], rec: dict, rule: str) -> np.ndarray:
    labels = []
    for g in groups:
        rows = {k: v[g] for k, v in out.items()}
        one = fuse_track(rows, rec, rule) if len(g) > 1 else rows
        labels.append(decide(one, classes, None, rec, 1, float("-inf"))[0]["sku_id"])
    return np.asarray(labels)


def photo_tracks(yt: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    by_sku = {s: np.flatnonzero(yt == s) for s in np.unique(yt)}
    groups = []
    for i in range(len(yt)):
        others = by_sku[yt[i]][by_sku[yt[i]] != i]
        extra = rng.choice(others, size=min(k - 1, len(others)), replace=False) if k > 1 else []
        groups.append(np.concatenate([[i], extra]).astype(int))
    return groups


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default=str(DEFAULT_OUT_DIR / "grocery_mobilenetv2_100.npz"))
    p.add_argument("--encoder", default=None, help="encoder of the features (for --views); default: from the file name")
    p.add_argument("--views", type=int, default=0, help="test photos for the train-view proxy (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench_out/track_fusion.json")
    args = p.parse_args()
    d = np.load(args.features, allow_pickle=True)
    X, y, split, paths = d["X"].astype(np.float32), d["fine"].astype(str), d["split"].astype(str), d["path"].astype(str)
    tr, va, te = split == "train", split == "val", split == "test"
    t0 = time.perf_counter()
    model = train_specialist_hierarchy(X[tr], y[tr], X[va], y[va]).model
    graph = ScoreGraph(model)
    rec = calibrate_outputs(score_arrays(graph, X[va]), encode_labels(y[va], model.classes), "max_prob")
    print(
        f"hierarchy: {len(model.classes)} SKUs, m={model.m}, T={rec['temperature']:.3g} ({time.perf_counter() - t0:.0f}s)"
        f"\nfusion rule chosen on validation tracks (2-3 same-SKU val photos): {rec['fusion']}  "
        f"(val top-1 {json.dumps({k: round(v, 4) for k, v in rec['fusion_val_top1'].items()})})"
    )
    out = score_arrays(graph, X[te])
    yt = y[te]
    result: dict = {"features": args.features, "temperature": rec["temperature"], "fusion": rec["fusion"]}
    print(f"\nproxy 1: k photos of the same SKU from the test list ({len(yt)} tracks per k), test top-1")
    print(f"  {'k':<4}" + "".join(f"{r:>22}" for r in RULES))
    for k in KS:
        groups = photo_tracks(yt, k, np.random.default_rng(args.seed + k))
        accs = {r: float(np.mean(fused_top1(out, groups, model.classes, rec, r) == yt)) for r in RULES}
        result.setdefault("photos", {})[k] = accs
        base = result["photos"][1]
        print(f"  {k:<4}" + "".join(f"{accs[r]:>12.4f} ({100 * (accs[r] - base[r]):+5.1f} pt)" for r in RULES))
    if args.views:
        from skurec.encoders import load_encoder
        from skurec.encoders.views import train_view
        from skurec.images import decode_rgb

        rng = np.random.default_rng(args.seed)
        name = args.encoder or Path(args.features).stem.replace("grocery_", "")
        enc = load_encoder(name, device="cpu")
        pick = rng.choice(len(yt), size=min(args.views, len(yt)), replace=False)
        tpaths = paths[te][pick]
        imgs = [decode_rgb((Path(DATASET) / q).read_bytes(), enc.min_decode_side) for q in tpaths]
        frames = [[train_view(im, j, args.seed, str(q)) for j in range(max(KS))] for im, q in zip(imgs, tpaths)]
        t1 = time.perf_counter()
        V = np.stack([enc.embed_images([f[j] for f in frames]) for j in range(max(KS))], axis=1)  # (n, K, d)
        print(
            f"\nproxy 2: k train-time views of one test photo ({len(pick)} photos, embedded in "
            f"{time.perf_counter() - t1:.0f}s with {enc.encoder_id}), test top-1"
        )
        plain = float(np.mean(model.predict_topk(X[te][pick], k=1).labels[:, 0] == yt[pick]))
        result["views"] = {"plain_photo": plain}
        print(f"  the plain photo: {plain:.4f}")
        for k in KS:
            o = score_arrays(graph, V[:, :k].reshape(-1, V.shape[2]))
            groups = [np.arange(i * k, (i + 1) * k) for i in range(len(pick))]
            accs = {r: float(np.mean(fused_top1(o, groups, model.classes, rec, r) == yt[pick])) for r in RULES}
            result["views"][k] = accs
            print(f"  k={k} views" + "".join(f"  {r} {accs[r]:.4f} ({100 * (accs[r] - plain):+.1f} pt)" for r in RULES))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
