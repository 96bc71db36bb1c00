"""Single-image latency of the frozen encoder alone vs the full Recognizer, and batched throughput.

"Encoder alone" is everything the Recognizer must do anyway for one image: decode the JPEG bytes (with PIL draft
downscaling), preprocess, one PLAIN forward pass (no test-time recipe, no extra layers). "Recognizer" is
``Recognizer.predict(bytes)`` with the encoder's options (``--views`` / ``--layers``, or the deployed model's): its
recipe's forward passes, the hierarchical classifier on one embedding and building the result. The two are
measured interleaved (A, B, A, B...) so machine load affects both equally. Targets: p50 ratio <= 1.1 on CPU
without options, <= 1.5 with the default test-time recipe.

Model: the deployed model of ``--workdir`` when given, else a hierarchical model with ``--classes`` SKUs trained for
a few steps on synthetic embeddings of the encoder's width (its size, not its accuracy, sets the overhead).
Images: JPEGs of the Grocery Store data set when present (``--images``), else rendered demo product photos.

    python benchmarks/latency.py --encoder efficientnet_lite2 --classes 1000 --n 200
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _dataset import DEFAULT_DATASET  # noqa: E402  (beside the checkout; --dataset overrides it)

from skurec.encoders import load_encoder, recorded_checkpoint, takes_checkpoint  # noqa: E402
from skurec.images import decode_rgb  # noqa: E402
from skurec.serving.recognizer import Recognizer  # noqa: E402


def default_images(dataset: Path) -> str | None:
    """Glob of the dataset's test JPEGs, or None (then rendered demo photos are used) when it is not there."""
    root = dataset / "dataset" if (dataset / "dataset").is_dir() else dataset
    return str(root / "test" / "**" / "*.jpg") if (root / "test").is_dir() else None


def load_images(pattern: str | None, n: int) -> tuple[list[bytes], str]:
    files = sorted(glob.glob(pattern, recursive=True)) if pattern else []
    if files:
        step = max(1, len(files) // n)
        return [Path(f).read_bytes() for f in files[::step][:n]], f"{pattern} ({len(files)} files)"
    from skurec.demo import demo_skus, image_rng, render_sku_jpeg

    skus = demo_skus()
    return [
        render_sku_jpeg(skus[i % len(skus)], image_rng(0, skus[i % len(skus)].sku_id, i, "bench"), 224)
        for i in range(n)
    ], "rendered demo photos (224 px JPEG)"


def synthetic_model(dim: int, n_classes: int, seed: int = 0):
    """A quickly trained case-study hierarchy (dense coarse head + few-shot fine head, one epoch / two steps: the
    latency of its forward pass does not depend on how well it was trained) over ``n_classes`` synthetic SKUs."""
    from skurec.models import CaseStudyConfig, DenseConfig, FineConfig, l2_normalize, train_hierarchy

    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(n_classes, dim)))
    y = np.repeat([f"sku-{i:05d}" for i in range(n_classes)], 3)
    X = l2_normalize(np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(len(y), dim)) / np.sqrt(dim))
    case = CaseStudyConfig(coarse=DenseConfig(max_epochs=1), fine=FineConfig(steps=2))
    model = train_hierarchy(X, y, X[::3], y[::3], "case_study", device="cpu", case_study=case, m_grid=(3,)).model
    card = {"model_id": f"synthetic-{n_classes}", "classes": {"names": {}}}
    return model, card


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50_ms": 1000 * statistics.median(xs),
        "p95_ms": 1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))],
        "mean_ms": 1000 * statistics.fmean(xs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="efficientnet_lite2")
    p.add_argument("--workdir", help="use this work directory's deployed model (and its encoder)")
    p.add_argument("--classes", type=int, default=1000, help="classes of the synthetic model (no --workdir)")
    p.add_argument(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        help="Grocery Store dataset whose test JPEGs are timed (default: %(default)s, beside the checkout)",
    )
    p.add_argument(
        "--images",
        default=None,
        help="glob of JPEG files (default: the dataset's test/**/*.jpg; rendered demo photos when neither exists)",
    )
    p.add_argument("--views", default=None, help="test-time recipe of the Recognizer's encoder (e.g. tight)")
    p.add_argument("--layers", type=int, default=None, help="multi-layer option of the Recognizer's encoder")
    p.add_argument("--n", type=int, default=200, help="timed single-image calls of each kind")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.images is None:
        args.images = default_images(args.dataset)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.workdir:
        rec = Recognizer.from_workdir(args.workdir, device=args.device, threshold=0.0)
        enc = rec.encoder
        model_desc = f"deployed model {rec.model_id} ({len(rec.model.classes)} classes)"
    else:
        opts = {k: v for k, v in (("views", args.views), ("layers", args.layers)) if v is not None}
        enc = load_encoder(args.encoder, device=args.device, **opts)  # unset options: the encoder's defaults
        t0 = time.perf_counter()
        model, card = synthetic_model(enc.dim, args.classes)
        card["encoder"] = {"encoder_id": enc.encoder_id}
        rec = Recognizer(model, card, enc, threshold=0.0)
        model_desc = (
            f"synthetic hierarchical model, {args.classes} classes, {model.n_superclasses} superclasses "
            f"(built in {time.perf_counter() - t0:.1f}s)"
        )
    images, source = load_images(args.images, max(args.batch_size * 4, 64))

    # the baseline is ONE plain forward pass of the encoder (no test-time recipe, no extra layers)
    ckpt = recorded_checkpoint(enc.identity()) if takes_checkpoint(enc.name) else None
    plain = load_encoder(enc.name, device=args.device, checkpoint=ckpt)

    def encoder_alone(data: bytes) -> np.ndarray:
        img = decode_rgb(data, target_min_side=plain.min_decode_side)
        return plain.forward_batch(plain.preprocess(img).unsqueeze(0)).numpy()

    for i in range(args.warmup):
        encoder_alone(images[i % len(images)])
        rec.predict(images[i % len(images)])
    t_enc, t_rec = [], []
    for i in range(args.n):
        data = images[i % len(images)]
        first, second = (encoder_alone, rec.predict) if i % 2 == 0 else (rec.predict, encoder_alone)
        for fn in (first, second):
            t = time.perf_counter()
            fn(data)
            (t_enc if fn is encoder_alone else t_rec).append(time.perf_counter() - t)
    # Classifier alone on one embedding (what the Recognizer adds), for reference.
    emb = rec.embed([images[0]])
    t_cls = []
    for _ in range(args.n):
        t = time.perf_counter()
        rec._results(emb, [None], [None])
        t_cls.append(time.perf_counter() - t)

    # Batched throughput.
    batch = images[: args.batch_size * 4]
    rec.predict_many(batch[: args.batch_size], batch_size=args.batch_size)
    t = time.perf_counter()
    rec.predict_many(batch, batch_size=args.batch_size)
    rec_tput = len(batch) / (time.perf_counter() - t)
    t = time.perf_counter()
    for s in range(0, len(batch), args.batch_size):
        x = torch.stack(
            [enc.preprocess(decode_rgb(b, target_min_side=enc.min_decode_side)) for b in batch[s : s + args.batch_size]]
        )
        enc.forward_batch(x)
    enc_tput = len(batch) / (time.perf_counter() - t)

    enc_s, rec_s, cls_s = percentiles(t_enc), percentiles(t_rec), percentiles(t_cls)
    result = {
        "encoder": enc.encoder_id,
        "device": str(enc.device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "model": model_desc,
        "images": source,
        "n_single_calls": args.n,
        "encoder_alone": enc_s,
        "recognizer": rec_s,
        "classifier_only": cls_s,
        "ratio_p50": rec_s["p50_ms"] / enc_s["p50_ms"],
        "ratio_p95": rec_s["p95_ms"] / enc_s["p95_ms"],
        "batched_images_per_s": {"encoder_alone": enc_tput, "recognizer": rec_tput, "batch_size": args.batch_size},
    }
    print(
        f"encoder {result['encoder']} on {result['device']} ({result['torch_threads']} torch threads, "
        f"{result['cpus_available']} CPUs, load {result['load_average_1m']:.1f}); {model_desc}; images: {source}"
    )
    print(f"{'':18}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, s in (("encoder alone (plain)", enc_s), ("Recognizer", rec_s), ("classifier only", cls_s)):
        print(f"{name:18}{s['p50_ms']:10.2f}{s['p95_ms']:10.2f}{s['mean_ms']:10.2f}")
    print(
        f"ratio Recognizer / encoder: p50 {result['ratio_p50']:.3f}, p95 {result['ratio_p95']:.3f} (targets: <= 1.1 plain, <= 1.5 with a test-time recipe)"
    )
    print(f"batched (batch {args.batch_size}): encoder alone {enc_tput:.1f} img/s, Recognizer {rec_tput:.1f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
