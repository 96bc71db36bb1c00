"""The edge bundle on real photos: parity with the Recognizer, and onnxruntime vs torch eager latency, in one run.

Model: the pipeline's hierarchy (:func:`train_specialist_hierarchy`) trained on the Grocery Store features of the
same encoder (``benchmarks/export_grocery_embeddings.py`` output, keys X/fine/split/path). The Recognizer (torch
eager: the frozen encoder + the score graph) and the edge runner (the exported bundle through onnxruntime) answer the
same JPEG bytes of the Grocery Store dataset:

1. parity on every validation photo (top-1 identical, max top-k score difference; the exporter's own check);
2. single-image latency (decode + preprocess + encoder + classifier + answer), the two measured interleaved
   (A, B, A, B...) so machine load affects both alike, ``--threads`` threads for both (torch intra-op threads and
   the encoder's forward pool = 1; onnxruntime intra-op threads);
3. batch throughput (``--batch`` images per call);
4. with ``--int8 static dynamic``: int8 bundles (the encoder quantised: static QDQ calibrated on 64 training photos,
   or dynamic), their validation top-1 vs fp32 (refused above 0.5 point) and latency in the same interleaved loop.

    python benchmarks/edge_latency.py --encoder efficientnet_lite2 --n 60 --int8 static dynamic --out bench_out/edge_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _dataset import DEFAULT_DATASET  # noqa: E402
from export_grocery_embeddings import DEFAULT_OUT_DIR  # noqa: E402

from skurec.deployment.calibration import calibrate_outputs  # noqa: E402
from skurec.edge import EdgeRunner  # noqa: E402
from skurec.encoders import load_encoder  # noqa: E402
from skurec.models import train_specialist_hierarchy  # noqa: E402
from skurec.serving.edge_export import EdgeExportConfig, build_bundle_files, check_parity, write_manifest  # noqa: E402
from skurec.serving.recognizer import Recognizer  # noqa: E402

DATASET = DEFAULT_DATASET / "dataset"  # the Grocery Store checkout beside this repository


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def bundle(rec: Recognizer, out: Path, int8: str | None, calib: list[bytes] = ()) -> EdgeRunner:
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():
        p.unlink()
    doc = build_bundle_files(rec, out, EdgeExportConfig(), quantize=int8, calibration_images=calib)
    write_manifest(out, {**doc, "parity": None})
    return EdgeRunner(out, threads=1, top_k=rec.top_k)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="efficientnet_lite2")
    p.add_argument(
        "--features",
        default=None,
        help="default: bench_out/grocery_embeddings/grocery_<encoder>.npz (export_grocery_embeddings.py)",
    )
    p.add_argument("--n", type=int, default=60, help="test photos for the latency loop")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", nargs="*", default=[], choices=["static", "dynamic"], help="int8 bundles to compare")
    p.add_argument("--max-val", type=int, default=None, help="parity on at most N validation photos (default all)")
    p.add_argument("--out", default="bench_out/edge_latency.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    feats = args.features or str(DEFAULT_OUT_DIR / f"grocery_{args.encoder}.npz")
    d = np.load(feats, allow_pickle=True)
    X, y, split, paths = d["X"].astype(np.float32), d["fine"].astype(str), d["split"].astype(str), d["path"].astype(str)
    tr, va, te = split == "train", split == "val", split == "test"
    t0 = time.perf_counter()
    h = train_specialist_hierarchy(X[tr], y[tr], X[va], y[va])
    enc = load_encoder(args.encoder, device="cpu", cpu_threads=1)
    card = {"encoder": {"encoder_id": enc.encoder_id, "name": args.encoder}, "model_id": f"grocery-{args.encoder}"}
    rec = Recognizer(h.model, card, enc, threshold=0.0)
    from skurec.models._common import encode_labels

    cal = calibrate_outputs(rec.scores(X[va]), encode_labels(y[va], h.model.classes), "energy")
    rec.recognition, rec.threshold = cal, cal["threshold"]
    print(
        f"model: hierarchy on {args.encoder} Grocery features, {len(h.model.classes)} SKUs, m={h.model.m} "
        f"({time.perf_counter() - t0:.1f}s); calibration T={cal['temperature']:.3g}"
    )
    out_dir = Path(args.out).parent
    t1 = time.perf_counter()
    fp32 = bundle(rec, out_dir / f"edge_bundle_{args.encoder}", int8=None)
    print(f"exported fp32 bundle in {time.perf_counter() - t1:.1f}s")
    val_idx = np.flatnonzero(va)[: args.max_val]
    val = [(paths[i], (Path(DATASET) / paths[i]).read_bytes(), y[i]) for i in val_idx]
    t1 = time.perf_counter()
    parity = check_parity(fp32, rec, val, EdgeExportConfig())
    print(
        f"parity fp32 on {parity['n_images']} validation photos ({time.perf_counter() - t1:.0f}s): top-1 agreement "
        f"{parity['top1_agreement']:.4f}, max score diff {parity['max_score_diff']:.2e}, unknown agreement "
        f"{parity['unknown_agreement']:.4f}; graph vs predict_topk: top-1 {parity['graph_vs_predict_topk_top1_agreement']:.4f}, "
        f"max diff {parity['graph_vs_predict_topk_max_score_diff']:.2e}; val top-1 {parity['val_top1_recognizer']:.4f}"
    )
    result = {"encoder": args.encoder, "threads": args.threads, "parity_fp32": parity, "machine": platform.platform()}
    runners = {"onnxruntime fp32": fp32}
    for mode in args.int8:
        calib = [(Path(DATASET) / q).read_bytes() for q in paths[tr][:: max(1, int(tr.sum()) // 64)][:64]]
        t1 = time.perf_counter()
        r8 = bundle(rec, out_dir / f"edge_bundle_{args.encoder}_int8_{mode}", int8=mode, calib=calib)
        print(f"int8 {mode}: quantised in {time.perf_counter() - t1:.0f}s", end="; ")
        try:
            p8 = check_parity(r8, rec, val, EdgeExportConfig(), quantized=True)
            result[f"parity_int8_{mode}"] = p8
            print(
                f"val top-1 {p8['val_top1_runner']:.4f} vs {p8['val_top1_recognizer']:.4f} "
                f"(delta {100 * p8['val_top1_delta']:+.2f} points): accepted"
            )
        except Exception as exc:  # ParityError: refused, still timed so the report says what it would have cost
            result[f"parity_int8_{mode}"] = {"refused": str(exc)}
            print(f"REFUSED: {exc}")
        runners[f"onnxruntime int8 {mode}"] = r8
    test = [(Path(DATASET) / paths[i]).read_bytes() for i in np.flatnonzero(te)[: args.n]]
    for r in runners.values():  # warm-up
        r.predict(test[0])
    rec.predict(test[0])
    times: dict[str, list[float]] = {"torch eager": [], **{k: [] for k in runners}}
    for img in test:
        t = time.perf_counter()
        rec.predict(img)
        times["torch eager"].append(time.perf_counter() - t)
        for k, r in runners.items():
            t = time.perf_counter()
            r.predict(img)
            times[k].append(time.perf_counter() - t)
    thr: dict[str, float] = {}
    t = time.perf_counter()
    rec.predict_many(test, batch_size=args.batch)
    thr["torch eager"] = len(test) / (time.perf_counter() - t)
    for k, r in runners.items():
        t = time.perf_counter()
        r.predict_many(test, batch_size=args.batch)
        thr[k] = len(test) / (time.perf_counter() - t)
    base = pct(times["torch eager"], 50)
    print(f"\n{len(test)} Grocery Store test photos, {args.threads} thread(s), {args.encoder}, batch {args.batch}")
    print(f"{'':<26} {'p50 ms':>8} {'p95 ms':>8} {'p50 / torch':>12} {'img/s batched':>14}")
    rows = {}
    for k, ts in times.items():
        rows[k] = {"p50_ms": pct(ts, 50), "p95_ms": pct(ts, 95), "ratio_p50": pct(ts, 50) / base, "img_per_s": thr[k]}
        print(f"{k:<26} {rows[k]['p50_ms']:8.1f} {rows[k]['p95_ms']:8.1f} {rows[k]['ratio_p50']:12.2f} {thr[k]:14.1f}")
    result["latency"] = rows
    result["n_test"] = len(test)
    result["median_speedup_fp32"] = base / rows["onnxruntime fp32"]["p50_ms"]
    print(f"onnxruntime fp32 is {result['median_speedup_fp32']:.2f}x faster than torch eager at p50 (target >= 1.5x)")
    for mode in args.int8:
        sp = base / rows[f"onnxruntime int8 {mode}"]["p50_ms"]
        result[f"median_speedup_int8_{mode}"] = sp
        print(f"onnxruntime int8 {mode} is {sp:.2f}x faster than torch eager at p50 (target >= 2x)")
    Path(args.out).write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
