"""The embedding stage fanned out: 1 worker process vs 2 on 2 cores (issue 14, item 3).

Renders a small catalogue, audits it once, then materialises ``image_embeddings`` from an empty cache with the
command a team runs (``dagster asset materialize -m skurec_assets.definitions``), switched by the environment only:
``SKUREC_EXECUTOR=multiprocess``, ``SKUREC_EMBED_SHARDS=2`` and the multiprocess executor's ``max_concurrent`` = 1
then 2 (the number of worker processes that embed shards at the same time). Each worker runs torch with one thread
(``OMP_NUM_THREADS=1``), as each worker of a GPU pool has its own device. The default encoder is the packaged
EfficientNet-Lite2 (real weights, real compute).

Prints, for each worker count, the wall time of the shard steps (first ``embed_shard`` start to last end: the
stage that fans out), of the whole asset (plan -> shards -> combine, process start-up included) and of the command,
then the ratios 1 worker / 2 workers. Target: the embedding stage >= 1.6x faster with 2 workers.

    python3 benchmarks/shard_speedup.py                      # 480 images, efficientnet_lite2
    python3 benchmarks/shard_speedup.py --skus 8 --images 30 --encoder tiny_random_vit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _dagster() -> str:
    here = Path(sys.executable).parent / "dagster"
    return str(here) if here.exists() else (shutil.which("dagster") or "dagster")


def _materialize(select: str, *extra: str) -> list[str]:
    """``dagster asset materialize`` of one asset of the skurec code location."""
    return [_dagster(), "asset", "materialize", "-m", "skurec_assets.definitions", "--select", select, *extra]


def spans(home: Path) -> dict[str, float]:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (record,) = instance.get_run_records(limit=1)
        start, end = {}, {}
        for rec in instance.all_logs(record.dagster_run.run_id):
            ev = rec.dagster_event
            if ev is None or not (ev.step_key or "").startswith("image_embeddings."):
                continue
            if ev.event_type == dg.DagsterEventType.STEP_START:
                start[ev.step_key] = rec.timestamp
            elif ev.event_type == dg.DagsterEventType.STEP_SUCCESS:
                end[ev.step_key] = rec.timestamp
    shards = [k for k in start if ".embed_shard[" in k]
    # seconds during which at least two shard steps were running at once (0 when they ran one after the other)
    overlap = max(0.0, min(end[k] for k in shards) - max(start[k] for k in shards)) if len(shards) > 1 else 0.0
    return {
        "n_shard_steps": len(shards),
        "overlap_s": overlap,
        "shard_stage_s": max(end[k] for k in shards) - min(start[k] for k in shards),
        "asset_s": max(end.values()) - min(start.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skus", type=int, default=8)
    ap.add_argument("--images", type=int, default=60, help="images per SKU")
    ap.add_argument("--encoder", default="efficientnet_lite2")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from growth import render_catalogue

    base = Path(tempfile.mkdtemp(prefix="skurec-shards-"))
    try:
        cat, work = base / "cat", base / "work"
        n = render_catalogue(cat, args.skus, args.images)
        env = {
            **os.environ,
            "SKUREC_WORKDIR": str(work),
            "SKUREC_CATALOGUE": str(cat),
            "SKUREC_MIN_SAMPLES": "5",
            "SKUREC_ENCODER": args.encoder,
            "SKUREC_EXECUTOR": "multiprocess",
            "SKUREC_EMBED_SHARDS": "2",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
        rows = []
        for i, w in enumerate(args.workers):
            home = base / f"home{i}"
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            (base / "run.json").write_text(json.dumps({"execution": {"config": {"max_concurrent": w}}}))
            run_env = {**env, "DAGSTER_HOME": str(home)}
            if i == 0:  # audit once (same work directory for every measurement)
                subprocess.run(
                    _materialize("audited_catalogue"),
                    env={**run_env, "SKUREC_EXECUTOR": "in_process"},
                    cwd=base,
                    check=True,
                    capture_output=True,
                )
            shutil.rmtree(work / "embeddings", ignore_errors=True)  # embed everything again
            t = time.perf_counter()
            proc = subprocess.run(
                _materialize("image_embeddings", "-c", str(base / "run.json")),
                env=run_env,
                cwd=base,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                sys.exit(f"materialise failed with {w} worker(s):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
            rows.append(
                {
                    "workers": w,
                    "command_s": round(wall, 2),
                    **{k: round(v, 2) if isinstance(v, float) else v for k, v in spans(home).items()},
                }
            )
            print(f"# {w} worker(s): {rows[-1]}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{n} images, encoder {args.encoder}, 2 shards, one torch thread per worker, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        "| worker processes | shard steps | shards overlapping s | embedding stage s (shard steps) | whole asset s | command s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['n_shard_steps']} | {r['overlap_s']} | {r['shard_stage_s']} | {r['asset_s']} | "
            f"{r['command_s']} |"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        ratio = a["shard_stage_s"] / b["shard_stage_s"]
        print(
            f"\nspeed-up {a['workers']} -> {b['workers']} workers: embedding stage x{ratio:.2f} (target >= 1.6: "
            f"{'MET' if ratio >= 1.6 else 'NOT MET'}), whole asset x{a['asset_s'] / b['asset_s']:.2f}, "
            f"command x{a['command_s'] / b['command_s']:.2f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
