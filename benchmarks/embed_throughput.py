"""Embedding throughput: bare forward vs naive loop vs the parallel pipeline vs the full cached path.

Measures, in ONE run over the same images (read from disk, OS cache warm):

(a) bare ``encoder.forward_batch`` on preloaded, preprocessed tensors (the ceiling);
(b) naive loop: read, decode, preprocess, forward, one image after another;
(c) ``skurec.embeddings.encode.iter_embeddings`` (decode threads overlapping the forward pass);
(d) ``skurec.embeddings.cache.EmbeddingCache.update`` (pipeline + Parquet writes), then a second update over the
    same catalogue plus 5 % new images, whose time should be <= 0.1x the first.

(a) and (c) are measured in alternating rounds and the median is reported, because the machine is shared.

Examples::

    python3 benchmarks/embed_throughput.py --encoder efficientnet_lite2 --limit 256
    python3 benchmarks/embed_throughput.py --encoder efficientnet_lite2 --limit 128 --sweep
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _dataset import DEFAULT_DATASET, dataset_root  # noqa: E402

from skurec.embeddings.encode import default_num_workers, iter_embeddings  # noqa: E402
from skurec.encoders import FrozenEncoder, load_encoder, views  # noqa: E402
from skurec.encoders.base import VIEWS  # noqa: E402
from skurec.images import decode_rgb, sha256_bytes  # noqa: E402

EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def list_images(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTS)
    if not files:
        raise SystemExit(f"no images under {folder}")
    if limit and limit < len(files):  # spread over the folder (all classes), deterministic
        idx = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files = [files[i] for i in sorted(set(idx.tolist()))]
    return files


def _reader(p: Path) -> Callable[[], bytes]:
    return p.read_bytes


class Meter:
    """Wall-clock images/s plus this process's CPU milliseconds per image (robust to other load on the box)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> Meter:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ips = self.n / (time.perf_counter() - self.w0)
        self.cpu_ms = 1000.0 * (time.process_time() - self.c0) / self.n


def bare_forward(enc: FrozenEncoder, tensors: torch.Tensor, batch_size: int) -> Meter:
    """(a) forward_batch alone on preloaded tensors."""
    with Meter(len(tensors)) as m:
        for s in range(0, len(tensors), batch_size):
            enc.forward_batch(tensors[s : s + batch_size])
    return m


def naive_loop(enc: FrozenEncoder, files: list[Path]) -> Meter:
    """(b) read -> decode -> preprocess -> forward, one image at a time."""
    with Meter(len(files)) as m:
        for p in files:
            x = enc.preprocess(decode_rgb(p.read_bytes(), target_min_side=enc.min_decode_side))
            enc.forward_batch(x[None])
    return m


def pipeline(
    enc: FrozenEncoder, files: list[Path], batch_size: int, workers: int | None, train_view: bool = False
) -> Meter:
    """(c) iter_embeddings; ``train_view``: of train-time view 0 of every image (the pipeline's view path:
    decode at the larger view side, random resized crop, flip, colour jitter, then preprocess)."""
    items = [(str(i), _reader(p)) for i, p in enumerate(files)]
    kw: dict = {}
    if train_view:
        kw = {
            "transform": lambda image_id, img: views.train_view(img, 0, 0, image_id),
            "decode_side": views.train_view_decode_side(enc.min_decode_side),
        }
    with Meter(len(files)) as m:
        n = sum(
            len(b.ids)
            for b in iter_embeddings(enc, items, batch_size=batch_size, num_workers=workers, tqdm_bar=False, **kw)
        )
    if n != len(files):
        raise RuntimeError(f"pipeline embedded {n} of {len(files)} images")
    return m


def decode_cost(enc: FrozenEncoder, files: list[Path]) -> float:
    """Seconds per image of read + decode + preprocess on one thread."""
    t0 = time.perf_counter()
    for p in files:
        enc.preprocess(decode_rgb(p.read_bytes(), target_min_side=enc.min_decode_side))
    return (time.perf_counter() - t0) / len(files)


def cache_runs(
    enc: FrozenEncoder, files: list[Path], extra: list[Path], batch_size: int, workers: int | None
) -> dict[str, float] | None:
    """(d) full cache path: first update over ``files``, then ``files + extra``; None if the module is missing."""
    try:
        import pandas as pd

        from skurec.embeddings.cache import EmbeddingCache
        from skurec.store.workspace import Workspace
    except ImportError as exc:
        print(f"(d) skipped: cache module not importable ({exc})")
        return None

    def frame(paths: list[Path]) -> pd.DataFrame:
        return pd.DataFrame(
            {"image_id": [sha256_bytes(p.read_bytes()) for p in paths], "image_uri": [str(p) for p in paths]}
        )

    with tempfile.TemporaryDirectory(prefix="skurec_bench_") as root:
        cache = EmbeddingCache(Workspace(root))
        df1, df2 = frame(files), frame(files + extra)
        t0 = time.perf_counter()
        s1 = cache.update(enc, df1, batch_size=batch_size, num_workers=workers)
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        s2 = cache.update(enc, df2, batch_size=batch_size, num_workers=workers)
        t2 = time.perf_counter() - t0
        ids, X = cache.load(enc.encoder_id)
    if s1.n_computed != len(files) or s2.n_computed != len(df2) - len(df1) or len(ids) != len(df2):
        raise RuntimeError(f"unexpected cache stats: {s1} / {s2} / {len(ids)} cached")
    return {"first_s": t1, "first_ips": len(files) / t1, "second_s": t2, "n_new": s2.n_computed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--dataset",
        type=Path,
        default=DEFAULT_DATASET,
        help="Grocery Store dataset (default: %(default)s, beside the checkout)",
    )
    ap.add_argument("--folder", type=Path, default=None, help="image folder (default: the dataset's train/ folder)")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--encoder", default="efficientnet_lite2")
    ap.add_argument("--views", default="center", choices=list(VIEWS))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument(
        "--train-view", action="store_true", help="(c) embeds train-time view 0 of every image (the view path)"
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: skurec's choice)")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cpu-threads", type=int, default=None, help="encoder CPU forward threads (1 = plain torch)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (c); median reported")
    ap.add_argument("--naive-limit", type=int, default=64, help="images for the (slow) naive loop")
    ap.add_argument("--sweep", action="store_true", help="also try torch threads x decode workers splits")
    ap.add_argument("--no-cache", action="store_true", help="skip (d)")
    args = ap.parse_args(argv)
    if args.folder is None:
        args.folder = dataset_root(args.dataset) / "train"

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    enc = load_encoder(args.encoder, views=args.views, layers=args.layers, cpu_threads=args.cpu_threads)
    all_files = list_images(args.folder, None)
    files = list_images(args.folder, args.limit)
    chosen = set(files)
    extra = [p for p in all_files if p not in chosen][: max(1, round(0.05 * len(files)))]
    workers = args.workers if args.workers is not None else default_num_workers()
    print(
        f"encoder={enc.encoder_id} device={enc.device} images={len(files)} batch={args.batch_size} "
        f"torch_threads={torch.get_num_threads()} cpu_forward_threads={enc.cpu_threads} decode_workers={workers} "
        f"cpus={os.cpu_count()}"
    )

    tensors = torch.stack([enc.preprocess(decode_rgb(p.read_bytes(), enc.min_decode_side)) for p in files])
    enc.forward_batch(tensors[: args.batch_size])  # warm-up (allocator, oneDNN kernels)
    per_img_decode = decode_cost(enc, files[:64])

    load0 = os.getloadavg()[0]
    bare, piped = [], []
    for _ in range(args.rounds):  # alternate so that load from other processes hits both alike
        bare.append(bare_forward(enc, tensors, args.batch_size))
        piped.append(pipeline(enc, files, args.batch_size, workers, args.train_view))
    naive = naive_loop(enc, files[: args.naive_limit])
    a = statistics.median(m.ips for m in bare)
    c = statistics.median(m.ips for m in piped)

    rows: list[tuple[str, list[Meter]]] = [
        ("(a) bare forward, preloaded tensors", bare),
        (f"(b) naive loop (first {min(args.naive_limit, len(files))} images)", [naive]),
        ("(c) pipeline iter_embeddings" + (" (train view 0)" if args.train_view else ""), piped),
    ]
    cache = None if args.no_cache else cache_runs(enc, files, extra, args.batch_size, workers)
    if cache:
        m = Meter(len(files))
        m.ips, m.cpu_ms = cache["first_ips"], float("nan")
        rows.append(("(d) EmbeddingCache.update (pipeline + Parquet)", [m]))

    print(
        f"\nload average {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes share them)"
    )
    print(f"read+decode+preprocess on one thread: {per_img_decode * 1000:.1f} ms/image")
    print(f"{'path':52s} {'img/s':>8s} {'ratio to (a)':>13s} {'CPU ms/img':>11s}   img/s per round")
    for label, ms in rows:
        v = statistics.median(m.ips for m in ms)
        cpu = statistics.median(m.cpu_ms for m in ms)
        print(f"{label:52s} {v:8.1f} {v / a:13.2f} {cpu:11.1f}   {' '.join(f'{m.ips:.1f}' for m in ms)}")
    per_round = [p.ips / b.ips for b, p in zip(bare, piped)]
    print(
        f"\npipeline / bare forward = {c / a:.3f} (target >= 0.9); per adjacent round: "
        + " ".join(f"{r:.2f}" for r in per_round)
    )
    if cache:
        ratio = cache["second_s"] / cache["first_s"]
        print(
            f"cache: first update {cache['first_s']:.1f}s for {len(files)} images; second update (+{cache['n_new']} new "
            f"= 5%) {cache['second_s']:.2f}s; ratio {ratio:.3f} (target <= 0.1)"
        )

    if args.sweep:
        print("\nsplit sweep: CPU forward mode x decode threads (pipeline / bare forward in the same mode):")
        print(f"{'forward mode':34s} {'workers':>8s} {'bare img/s':>11s} {'pipe img/s':>11s} {'ratio':>6s}")
        modes = [
            ("pool: %d threads x 1 intra-op" % torch.get_num_threads(), torch.get_num_threads()),
            ("plain torch: %d intra-op threads" % torch.get_num_threads(), 1),
        ]
        for label, cpu_threads in modes:
            enc.cpu_threads, enc._cpu_pool_ready = cpu_threads, False  # rebuild the forward pool for this mode
            for w in (1, 2):
                bare_w, pipe_w = [], []
                for _ in range(2):
                    bare_w.append(bare_forward(enc, tensors, args.batch_size).ips)
                    pipe_w.append(pipeline(enc, files, args.batch_size, w).ips)
                ba, pi = statistics.median(bare_w), statistics.median(pipe_w)
                print(f"{label:34s} {w:8d} {ba:11.1f} {pi:11.1f} {pi / ba:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
