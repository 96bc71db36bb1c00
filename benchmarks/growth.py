"""Cost as the catalogue grows: the full build and one labelled batch, step by step (issue 14, item 4).

For each size (default 500 and 2000 SKUs x 60 small generated images) the benchmark, in a fresh process per size:

1. renders the catalogue (``ROOT/<sku>/<i>.png``, 32x32, a colour and pattern per SKU plus noise: distinct bytes);
2. runs the full build through Dagster (the ``full_rebuild`` job's selection, in process, a real SQLite instance)
   with the tiny RANDOM encoder, so what is measured is the pipeline's own overhead, not a neural network;
3. drops one labelled batch of 1% new images (known SKUs) and runs the labelling loop as the daemon would (batch
   sensor, ingestion run, automation runs: audited_catalogue -> image_embeddings -> candidate_model ->
   deployed_model);

and records the wall time of every step (from the event log: STEP_START -> STEP_SUCCESS, the embedding graph's
steps summed under ``image_embeddings``) and the peak RSS of the process. It then prints, side by side, each step's
time at every size with its growth against the growth in images (a step whose time grows faster than the image
count is flagged), the batch / full-build ratio and the peak RSS, and checks the targets: batch <= 0.1 x full build,
peak RSS < 4 GiB, no step super-linear in images.

Heavy: run it by hand, not in tests (2000 x 60 = 120,000 images)::

    python3 benchmarks/growth.py --skus 500 2000 --images 60 --out bench_out/growth.json
    python3 benchmarks/growth.py --skus 40 80 --images 12 --min-samples 5   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SLACK = 1.25  # a step may grow up to 1.25x faster than the image count before it is flagged (timing noise)


# ------------------------------------------------------------------------------------------------ catalogue
def _png(rgb, pattern: int, seed: int, size: int = 32) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.tile(np.asarray(rgb, np.float32), (size, size, 1))
    yy, xx = np.mgrid[0:size, 0:size]
    mask = [(yy // 4) % 2 == 0, (xx // 4) % 2 == 0, ((yy // 4) + (xx // 4)) % 2 == 0, ((yy + xx) // 4) % 2 == 0][
        pattern % 4
    ]
    arr[mask] *= 0.6
    arr += rng.normal(0, 10, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype("uint8"), "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _sku_style(j: int):
    import numpy as np

    rng = np.random.default_rng(10_000 + j)
    return tuple(int(v) for v in rng.integers(20, 236, 3)), int(j % 4)


def render_catalogue(root: Path, n_skus: int, n_images: int) -> int:
    for j in range(n_skus):
        rgb, pattern = _sku_style(j)
        d = root / f"sku-{j:05d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            (d / f"{i:03d}.png").write_bytes(_png(rgb, pattern, seed=j * 1000 + i))
    return n_skus * n_images


def render_batch(drop: Path, name: str, n_skus: int, n_new: int) -> int:
    folder = drop / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n_new):
        j = (k * 7919) % n_skus  # spread over the SKUs
        rgb, pattern = _sku_style(j)
        rel = f"images/new-{k:05d}.png"
        (folder / rel).write_bytes(_png(rgb, pattern, seed=50_000_000 + k))
        rows.append({"image_uri": rel, "sku_id": f"sku-{j:05d}"})
    with open(folder / "manifest.csv", "w", newline="") as f:  # the manifest last, like a real upload
        w = csv.DictWriter(f, fieldnames=["image_uri", "sku_id"])
        w.writeheader()
        w.writerows(rows)
    return n_new


# ------------------------------------------------------------------------------------------------ one size
def step_seconds(instance, run_ids: list[str]) -> dict[str, float]:
    """Wall seconds per asset/check step (STEP_START -> STEP_SUCCESS/FAILURE), summed over ``run_ids``; the
    embedding graph's steps (plan, shards, combine) are added up under ``image_embeddings``."""
    import dagster as dg

    out: dict[str, float] = defaultdict(float)
    for run_id in run_ids:
        start: dict[str, float] = {}
        for rec in instance.all_logs(run_id):
            ev = rec.dagster_event
            if ev is None or ev.step_key is None:
                continue
            if ev.event_type == dg.DagsterEventType.STEP_START:
                start[ev.step_key] = rec.timestamp
            elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                key = ev.step_key.split(".", 1)[0] if ev.step_key.startswith("image_embeddings.") else ev.step_key
                out[key] += rec.timestamp - start.pop(ev.step_key, rec.timestamp)
    return dict(out)


def run_size(n_skus: int, n_images: int, batch_frac: float, base: Path, shards: int, min_samples: int) -> dict:
    os.environ.setdefault("SKUREC_EMBED_SHARDS", str(shards))
    import dagster as dg

    from skurec_assets.definitions import build_definitions
    from skurec_assets.loop_pass import run_loop_in_process
    from skurec_resources import CatalogueResource, EncoderResource, LabellingLoopResource, StorageResource

    root = base / f"s{n_skus}x{n_images}"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    n_total = render_catalogue(root / "cat", n_skus, n_images)
    render_s = time.perf_counter() - t
    resources = {
        "storage": StorageResource(workdir=str(root / "work")),
        "catalogue": CatalogueResource(location=str(root / "cat"), min_samples=min_samples),
        "encoder": EncoderResource(name="tiny_random_vit", device="cpu", batch_size=64),
        "loop": LabellingLoopResource(drop_location=str(root / "drop")),
    }
    defs = build_definitions(resources)
    home = root / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        graph = defs.resolve_asset_graph()
        keys = (dg.AssetSelection.all() - dg.AssetSelection.assets("labelled_batch")).resolve(graph)
        job = defs.resolve_implicit_global_asset_job_def()
        t = time.perf_counter()
        full = job.execute_in_process(instance=instance, asset_selection=sorted(keys, key=str))
        full_s = time.perf_counter() - t
        assert full.success, "full build failed"
        rss_full = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        prime = dg.evaluate_automation_conditions(defs=defs, instance=instance)

        n_new = max(1, round(batch_frac * n_total))
        render_batch(root / "drop", "batch-1", n_skus, n_new)
        t = time.perf_counter()
        loop = run_loop_in_process(defs, instance, automation_cursor=prime.cursor)
        batch_s = time.perf_counter() - t
        assert loop.success, "labelled batch failed"
        batch_runs = [r.run_id for r in loop.batch_runs.values()] + [r.run_id for _, r in loop.automation_runs]
        emb = [
            e
            for _, r in loop.automation_runs
            for e in r.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "image_embeddings"
        ]
        n_embedded = emb[-1].materialization.metadata["n_computed"].value if emb else None
        return {
            "n_skus": n_skus,
            "n_images_per_sku": n_images,
            "n_images": n_total,
            "n_new": n_new,
            "n_embedded_by_batch": n_embedded,
            "render_s": round(render_s, 1),
            "full_build_s": round(full_s, 2),
            "batch_s": round(batch_s, 2),
            "full_steps": step_seconds(instance, [full.run_id]),
            "batch_steps": step_seconds(instance, batch_runs),
            "automation_runs": [keys for keys, _ in loop.automation_runs],
            "peak_rss_mib_after_full": round(rss_full),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }


# ------------------------------------------------------------------------------------------------ report
def print_report(rows: list[dict]) -> bool:
    rows = sorted(rows, key=lambda r: r["n_images"])
    small, big = rows[0], rows[-1]
    growth = big["n_images"] / small["n_images"]
    sizes = [f"{r['n_skus']}x{r['n_images_per_sku']}" for r in rows]
    ok = True
    for phase, key in (("full build", "full_steps"), ("one labelled batch (1% new)", "batch_steps")):
        print(f"\n## {phase}: seconds per step")
        steps = sorted({s for r in rows for s in r[key]}, key=lambda s: -big[key].get(s, 0.0))
        print(f"| step | {' | '.join(sizes)} | x{growth:.1f} images -> time x | linear? |")
        print("|---|" + "---:|" * len(rows) + "---:|---|")
        for s in steps:
            vals = [r[key].get(s, 0.0) for r in rows]
            a, b = small[key].get(s, 0.0), big[key].get(s, 0.0)
            ratio = b / a if a > 0.05 else float("nan")
            superlinear = phase == "full build" and a > 0.5 and ratio > growth * SLACK
            ok &= not superlinear
            flag = "SUPER-LINEAR" if superlinear else ("ok" if a > 0.5 or phase != "full build" else "(tiny)")
            print(f"| {s} | {' | '.join(f'{v:.2f}' for v in vals)} | {ratio:.2f} | {flag} |")
        total_key = "full_build_s" if key == "full_steps" else "batch_s"
        print(
            f"| **total (wall)** | {' | '.join(str(r[total_key]) for r in rows)} | "
            f"{big[total_key] / small[total_key]:.2f} | |"
        )
    print("\n## summary")
    print(
        "| size | images | new images | embedded by the batch | full build s | batch s | batch / full | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r, name in zip(rows, sizes):
        ratio = r["batch_s"] / r["full_build_s"]
        ok &= ratio <= 0.1 and r["peak_rss_mib"] < 4096 and r["n_embedded_by_batch"] == r["n_new"]
        print(
            f"| {name} | {r['n_images']} | {r['n_new']} | {r['n_embedded_by_batch']} | {r['full_build_s']} | "
            f"{r['batch_s']} | {ratio:.3f} | {r['peak_rss_mib']} |"
        )
    print(
        f"\ntargets (batch <= 0.1 x full build, peak RSS < 4 GiB, k new images -> k embedded, no step super-linear "
        f"in images): {'MET' if ok else 'NOT MET'}"
    )
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skus", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--images", type=int, default=60, help="images per SKU")
    ap.add_argument("--batch-frac", type=float, default=0.01)
    ap.add_argument("--shards", type=int, default=2, help="SKUREC_EMBED_SHARDS for the run")
    ap.add_argument("--min-samples", type=int, default=50, help="accepted images a SKU needs to be trained on")
    ap.add_argument("--workdir", type=Path, default=None, help="where catalogues and work directories go (tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the generated catalogues and work directories")
    ap.add_argument("--out", type=Path, help="write the measurements as JSON here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    ap.add_argument("--report", type=Path, help="only print the report of a JSON written by --out")
    args = ap.parse_args()
    if args.report:
        sys.exit(0 if print_report(json.loads(args.report.read_text())) else 1)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="skurec-growth-"))
    if args.one is not None:
        print(
            "RESULT "
            + json.dumps(run_size(args.one, args.images, args.batch_frac, base, args.shards, args.min_samples))
        )
        return
    rows = []
    try:
        for n in args.skus:  # a fresh process per size: a clean peak RSS, no warm caches carried over
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--images",
                str(args.images),
                "--batch-frac",
                str(args.batch_frac),
                "--shards",
                str(args.shards),
                "--min-samples",
                str(args.min_samples),
                "--workdir",
                str(base),
            ]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"size {n} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
            rows.append(json.loads(line[len("RESULT ") :]))
            print(
                f"# {n} SKUs x {args.images}: measured in {time.perf_counter() - t:.0f} s: {line[len('RESULT ') :]}",
                flush=True,
            )  # kept even if a larger size is stopped later
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=2))
            if not args.keep:
                shutil.rmtree(base / f"s{n}x{args.images}", ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\nconditions: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end, tiny random encoder, "
        f"{args.shards} embedding shards, in-process executor"
    )
    ok = print_report(rows)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
