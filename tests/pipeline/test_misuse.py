"""Misuse and faults at the command line (issue 22): a careless or hostile user on a real, small work directory.

One work directory is built once with ``skurec demo`` (a separable 4-SKU manifest catalogue, the tiny random ViT),
with one SKU id that is a spreadsheet formula; every test that changes it works on a copy. Each test names the
issue item it covers.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.loop import sku_png

from skurec.store.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
FORMULA_SKU = "=cmd|' /C calc'!A0"
SKUS = {"sku-red": "sku-red", "sku-green": "sku-green", "sku-blue": "sku-blue", "sku-yellow": FORMULA_SKU}
PER_SKU = 14
BUILD_ARGS = ["--encoder", "tiny_random_vit", "--layers", "0", "--min-samples", "5"]

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("SKUREC_WORKDIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def skurec(*args: str, timeout: float = 300, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skurec_assets.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
        cwd=cwd or REPO,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, stderr is exactly one line ``error: ...`` (no traceback) containing every needle."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_manifest_catalogue(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for j, (colour, sku) in enumerate(SKUS.items()):
        for i in range(PER_SKU):
            rel = f"images/{colour}-{i:03d}.png"
            (root / rel).write_bytes(sku_png(colour, 1000 * j + i))
            rows.append({"image_uri": rel, "sku_id": sku})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image_uri", "sku_id"])
        w.writeheader()
        w.writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("misuse")
    manifest = write_manifest_catalogue(base / "catalogue")
    work = base / "work"
    proc = skurec("demo", "--workdir", str(work), "--catalogue", str(manifest), *BUILD_ARGS, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"work": work, "manifest": manifest, "image": base / "catalogue" / "images" / "sku-red-000.png", "out": proc}


@pytest.fixture
def copy(built, tmp_path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(built["work"], dest, symlinks=True)
    return dest


def _deployed_card_path(work: Path) -> Path:
    model_id = json.loads((work / "models" / "deployed.json").read_text())["model_id"]
    return work / "models" / model_id / "model_card.json"


# ------------------------------------------------------------------------------------------------ 1. tamper-proof card
def test_item1_tampered_card_refuses_prediction(built, copy):
    ok = skurec("predict", str(built["image"]), "--workdir", str(copy))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout.splitlines()[0])["model_id"]
    path = _deployed_card_path(copy)
    card = json.loads(path.read_text())
    card.setdefault("recognition", {})["threshold"] = 0.0001  # a changed threshold changes answers silently
    path.write_text(json.dumps(card, indent=2, sort_keys=True))
    assert_one_line_error(skurec("predict", str(built["image"]), "--workdir", str(copy)), "model_card.json", "modified")
    # lineage of the tampered card too (item 8: `lineage --training-set` on a bad card)
    assert_one_line_error(
        skurec("lineage", "--workdir", str(copy), "--training-set", str(copy / "t.csv")), "model_card.json"
    )


# ------------------------------------------------------------------------------------------------ 2. one writer
def test_item2_second_writer_is_refused_naming_the_holder_and_readers_are_not_blocked(copy):
    from skurec.store.lock import writer_lock

    with writer_lock(copy, "test holder"):
        t0 = time.monotonic()
        second = skurec("run", "--workdir", str(copy), timeout=120)
        assert time.monotonic() - t0 < 60
        assert_one_line_error(second, f"pid {os.getpid()}", socket.gethostname(), "in use")
        reader = skurec("lineage", "--workdir", str(copy), "--json", timeout=120)
        assert reader.returncode == 0 and json.loads(reader.stdout)["deployed"] is True


def test_item2_lock_is_released_when_its_holder_is_killed(tmp_path):
    from skurec.store.lock import writer_lock

    script = textwrap.dedent(
        f"""
        import time
        from skurec.store.lock import writer_lock
        with writer_lock({str(tmp_path)!r}, "victim"):
            print("LOCKED", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "LOCKED"
        from skurec.store.lock import WorkdirBusyError

        with pytest.raises(WorkdirBusyError, match=f"pid {proc.pid} "):
            with writer_lock(tmp_path, "second"):
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with writer_lock(tmp_path, "after the crash") as holder:  # no stale lock
            assert holder["pid"] == os.getpid()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_item2_two_concurrent_demos_on_one_fresh_workdir(built, tmp_path):
    work = tmp_path / "same"
    cmd = [sys.executable, "-m", "skurec_assets.cli", "demo", "--workdir", str(work)]
    cmd += ["--catalogue", str(built["manifest"]), *BUILD_ARGS]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in "ab"]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [(p.returncode, o[1][-2000:]) for p, o in zip(procs, outs)]
    loser = next(o for p, o in zip(procs, outs) if p.returncode == 2)
    assert "in use by pid" in loser[1] and "OperationalError" not in loser[1]
    history = [json.loads(p.read_text()) for p in sorted((work / "models" / "history").glob("*.json"))]
    assert len(history) == 1 and history[0]["previous_model_id"] is None


def test_item2_a_running_ui_holds_the_lock(copy):
    """The UI's daemon writes the work directory too: `skurec run` beside a running `skurec ui` is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen(
        [sys.executable, "-m", "skurec_assets.cli", "ui", "--workdir", str(copy), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
        cwd=REPO,
        start_new_session=True,
    )
    try:
        assert "Dagster UI on" in ui.stdout.readline()  # printed once the lock is held
        assert_one_line_error(skurec("run", "--workdir", str(copy), timeout=120), f"pid {ui.pid}", "skurec ui")
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait(timeout=30)


# ------------------------------------------------------------------------------------------------ 3. full disk
def test_item3_rerun_on_a_full_tmpfs_says_no_space_and_keeps_the_audit_whole(built, tmp_path):
    """The issue's case: a good build, then a re-run with a bigger catalogue on a small tmpfs holding the work
    directory (and its Dagster home). Needs root to mount a tmpfs; skipped elsewhere (tests/store/test_full_disk.py
    injects ENOSPC instead)."""
    import dagster as dg
    from support.loop import write_catalogue

    from skurec import layout

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        work = mount / "work"
        shutil.copytree(built["work"], work, symlinks=True)
        bigger = write_catalogue(tmp_path / "bigger", {c: 60 for c in SKUS})
        settings = json.loads((work / "skurec.json").read_text())
        (work / "skurec.json").write_text(json.dumps({**settings, "catalogue": str(bigger)}))
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 160 * 1024))
        full = skurec("run", "--workdir", str(work), timeout=600)
        line = assert_one_line_error(full, "no space left on the device", str(work))
        assert "disk I/O error" not in line or "no space left" in line
        ws = Workspace(str(work))
        summary = layout.audit_summary(ws)
        assert len(ws.read_table("images")) == summary["n_accepted"]  # whole: old or new, never half
        assert len(ws.read_table("classes")) == summary["n_classes"]
        (mount / "filler").unlink()
        again = skurec("run", "--workdir", str(work), timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        instance = dg.DagsterInstance.from_config(str(work / "dagster_home"))
        statuses = {r.status for r in instance.get_runs()}
        assert dg.DagsterRunStatus.STARTED not in statuses  # the run the full disk interrupted was marked failed
        assert len(Workspace(str(work)).read_table("images")) == 60 * len(SKUS)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ------------------------------------------------------------------------------------------------ 4. kill leftovers
DEAD_RUN_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import dagster as dg
    from skurec_assets.recovery import process_tags

    work = sys.argv[1]

    @dg.op
    def slow(context):
        os.makedirs(os.path.join(work, "dagster_step_io", context.run_id), exist_ok=True)
        open(os.path.join(work, "dagster_step_io", context.run_id, "plan.json"), "w").write("{}")
        open(os.path.join(work, "models", ".tmp-0123-deployed.json"), "w").write("{")
        print("RUNNING", context.run_id, flush=True)
        time.sleep(300)

    @dg.job
    def victim():
        slow()

    victim.execute_in_process(instance=dg.DagsterInstance.get(), tags=process_tags())
    """
)


def test_item4_a_killed_runs_leftovers_are_repaired_on_the_next_start(copy):
    import dagster as dg

    from skurec_assets.recovery import recover_workdir

    home = copy / "dagster_home"
    proc = subprocess.Popen(
        [sys.executable, "-c", DEAD_RUN_SCRIPT, str(copy)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(DAGSTER_HOME=str(home)),
    )
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "RUNNING", line
        run_id = line[1]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    instance = dg.DagsterInstance.from_config(str(home))
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED  # what a kill leaves
    assert (copy / "dagster_step_io" / run_id).exists() and (copy / "models" / ".tmp-0123-deployed.json").exists()
    stale = time.time() - 120  # the dead run's temp file is older than a write in progress can be
    os.utime(copy / "models" / ".tmp-0123-deployed.json", (stale, stale))
    (copy / "review_queue").mkdir(exist_ok=True)
    (copy / "review_queue" / ".tmp-fresh-item.json").write_text("{")  # a reader's write in progress: kept

    done = recover_workdir(Workspace(str(copy)), instance)
    assert done["failed_runs"] == [run_id]
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
    assert not (copy / "dagster_step_io" / run_id).exists()
    assert not (copy / "models" / ".tmp-0123-deployed.json").exists()
    assert (copy / "review_queue" / ".tmp-fresh-item.json").exists()
    assert recover_workdir(Workspace(str(copy)), instance)["failed_runs"] == []


# ------------------------------------------------------------------------------------------------ 5. formula cells
def test_item5_csv_cells_are_neutralised(built, copy, tmp_path):
    out = tmp_path / "training.csv"
    proc = skurec("lineage", "--workdir", str(copy), "--training-set", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # item 10: --training-set writes the CSV, it does not also dump the card
    rows = list(csv.DictReader(out.open(newline="")))
    skus = {r["sku_id"] for r in rows}
    assert "'" + FORMULA_SKU in skus and FORMULA_SKU not in skus
    assert not any(v.startswith(("=", "+", "-", "@")) for r in rows for v in r.values())

    from skurec.serving.review_queue import ReviewQueue

    queue = ReviewQueue(Workspace(str(copy)))
    queue.add({"image": "x.png", "sku_id": FORMULA_SKU, "score": -0.5, "model_id": "@SUM(A1)"}, sku_png("sku-red", 7))
    manifest = queue.export_for_labelling(tmp_path / "export")
    exported = list(csv.DictReader(manifest.open(newline="")))
    assert exported[0]["suggested_sku_id"] == "'" + FORMULA_SKU and exported[0]["model_id"] == "'@SUM(A1)"


# ------------------------------------------------------------------------------------------------ 6. signed URLs
def test_item6_signed_url_never_reaches_a_file_or_the_console(tmp_path):
    work = tmp_path / "signed"
    url = "http://127.0.0.1:9/shop/manifest.csv?X-Amz-Signature=SIGSECRET123&X-Amz-Credential=CREDSECRET456"
    t0 = time.monotonic()
    proc = skurec("demo", "--workdir", str(work), "--catalogue", url, *BUILD_ARGS, timeout=300)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 120  # a configuration error is not retried
    for text in (proc.stdout, proc.stderr):
        assert "SIGSECRET123" not in text and "CREDSECRET456" not in text
    assert "REDACTED" in (work / "skurec.json").read_text()
    assert_one_line_error(skurec("run", "--workdir", str(work)), "stored redacted", "--catalogue")
    for path in work.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"SIGSECRET123" not in data and b"CREDSECRET456" not in data, path


# ------------------------------------------------------------------------------------------------ 7. copied workdir
def test_item7_a_copied_workdir_never_writes_into_the_original(built, copy):
    stored = json.loads((copy / "skurec.json").read_text())
    assert str(built["work"]) not in json.dumps(stored)
    assert stored["dagster_home"] == "dagster_home" and stored["drop_location"] == "drop"
    probe = "import os, sys; from skurec_assets.cli import _load_settings; from pathlib import Path; "
    probe += "s = _load_settings(Path(sys.argv[1])); print(os.environ['DAGSTER_HOME']); print(s['drop_location'])"
    out = subprocess.run([sys.executable, "-c", probe, str(copy)], capture_output=True, text=True, env=_env())
    home, drop = out.stdout.split()
    assert Path(home) == copy / "dagster_home" and Path(drop) == copy / "drop", out.stderr


def test_item7_settings_of_an_older_skurec_are_rebased_on_copy(built, copy):
    """A skurec.json written with absolute paths (before this fix) is rebased onto the copy's location."""
    old = {
        "workdir": str(built["work"]),
        "dagster_home": str(built["work"] / "dagster_home"),
        "drop_location": str(built["work"] / "drop"),
        "catalogue": str(built["manifest"]),
        "encoder": "tiny_random_vit",
    }
    (copy / "skurec.json").write_text(json.dumps(old))
    probe = "import os, sys; from skurec_assets.cli import _load_settings; from pathlib import Path; "
    probe += "s = _load_settings(Path(sys.argv[1])); print(os.environ['DAGSTER_HOME'])"
    out = subprocess.run([sys.executable, "-c", probe, str(copy)], capture_output=True, text=True, env=_env())
    assert Path(out.stdout.strip()) == copy / "dagster_home", out.stderr


def test_item7_a_moved_workdir_reads_its_own_copy_of_ingested_batch_images(tmp_path):
    """Batch rows record where their images were copied at ingestion; a moved work directory must read its own copy
    (the original may be gone), not the original's."""
    from support.loop import write_batch

    from skurec.catalogue.batches import find_batch, inspect_batch
    from skurec.catalogue.ingest import ingest_batch, ingested_batch_rows

    drop = tmp_path / "drop"
    write_batch(drop, "b1", {"sku-red": 3}, seed0=5)
    original = Workspace(str(tmp_path / "original"))
    ingest_batch(original, inspect_batch(find_batch(str(drop), "b1")))
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "original"), moved)
    rows = ingested_batch_rows(Workspace(str(moved)))
    assert len(rows) == 3
    assert all(u.startswith(str(moved) + "/") and Path(u).is_file() for u in rows["image_uri"])


# ------------------------------------------------------------------------------------------------ 8. one-line errors
def test_item8_model_and_bundle_errors_are_one_line(built, copy):
    img = str(built["image"])
    assert_one_line_error(skurec("predict", img, "--workdir", str(copy), "--model", "nosuch"), "no model 'nosuch'")
    model_dir = _deployed_card_path(copy).parent
    weights = sorted(p for p in model_dir.rglob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert_one_line_error(skurec("predict", img, "--workdir", str(copy)), "modified after training")
    weights.unlink()
    assert_one_line_error(skurec("predict", img, "--workdir", str(copy)), weights.name, "missing", "Restore")


def test_item8_add_batch_on_a_non_demo_catalogue(copy):
    assert_one_line_error(skurec("demo", "--workdir", str(copy), "--add-batch"), "--add-batch", "drop")


def test_item8_configuration_errors_fail_before_the_run(tmp_path):
    t0 = time.monotonic()
    proc = skurec("demo", "--workdir", str(tmp_path / "w1"), "--encoder", "tiny_random_vit", timeout=120)
    assert_one_line_error(proc, "--layers 0")
    missing = skurec("demo", "--workdir", str(tmp_path / "w2"), "--catalogue", str(tmp_path / "nope.csv"))
    assert_one_line_error(missing, "nope.csv", "does not exist")
    assert time.monotonic() - t0 < 90
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()  # no run was started
    # item 10: readers never create a work directory
    reader = skurec("predict", str(tmp_path / "x.png"), "--workdir", str(tmp_path / "nowhere"))
    assert_one_line_error(reader, "does not exist")
    assert not (tmp_path / "nowhere").exists()
    assert_one_line_error(skurec("run", "--workdir", str(tmp_path / "nowhere")), "skurec demo")


def test_item8_ui_on_a_busy_port_exits(copy):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        proc = skurec("ui", "--workdir", str(copy), "--port", str(port), timeout=60)
        assert time.monotonic() - t0 < 30
    assert_one_line_error(proc, f"port {port}", "--port")


# ------------------------------------------------------------------------------------------------ 9. quiet by default
def test_item9_demo_output_is_short_and_labels_superclass_accuracy(built):
    out = built["out"].stdout + built["out"].stderr
    lines = out.splitlines()
    assert len(lines) < 60, out
    assert max(len(ln) for ln in lines) <= 170, [ln for ln in lines if len(ln) > 170]
    assert "DEBUG" not in out and "STEP_START" not in out and "LOADED_INPUT" not in out
    assert "superclass accuracy (coarse_only)" in out
    assert "validated on only" in out  # item 10: 11 validation images deploy with a warning naming the number


# ------------------------------------------------------------------------------------------------ 10. small things
def test_item10_run_defaults_to_the_same_workdir_as_every_command():
    from skurec_assets.cli import build_parser

    parser = build_parser()
    defaults = {c: parser.parse_args([c, *(["x.png"] if c == "predict" else [])]).workdir for c in ("run", "ui")}
    defaults["predict"] = parser.parse_args(["predict", "x.png"]).workdir
    defaults["demo"] = parser.parse_args(["demo"]).workdir
    assert len(set(defaults.values())) == 1, defaults
    text = parser._subparsers._group_actions[0].choices["demo"].format_help()
    assert "tiny_random_vit" in text and "efficientnet_lite2" in text  # --encoder lists the names


# ------------------------------------------------------------------------------------------------ 11. read roots
def test_item11_a_manifest_cannot_read_beyond_its_folder_without_an_allow_list(tmp_path):
    from skurec.catalogue.importer import import_catalogue

    cat, outside = tmp_path / "cat", tmp_path / "outside"
    (cat / "img").mkdir(parents=True)
    outside.mkdir()
    (cat / "img" / "ok.png").write_bytes(sku_png("sku-red", 1))
    (outside / "real.png").write_bytes(sku_png("sku-blue", 2))
    os.symlink(outside / "real.png", cat / "img" / "link.png")
    rows = {
        "ok": "img/ok.png",
        "passwd": "/etc/passwd",
        "dotdot": "../outside/real.png",
        "absolute": str(outside / "real.png"),
        "loopback": "http://127.0.0.1:9/x.png",
        "link": "img/link.png",
    }
    manifest = cat / "manifest.csv"
    manifest.write_text("image_uri,sku_id\n" + "".join(f"{uri},{name}\n" for name, uri in rows.items()))

    got = import_catalogue(str(manifest)).rows.set_index("sku_id")["import_error"].to_dict()
    assert got == {"ok": None, **{k: "path_outside_root" for k in rows if k != "ok"}}

    allowed = import_catalogue(str(manifest), allow=[str(outside)]).rows.set_index("sku_id")["import_error"]
    assert allowed.to_dict() == {
        "ok": None,
        "passwd": "path_outside_root",
        "dotdot": None,
        "absolute": None,
        "loopback": "path_outside_root",
        "link": None,
    }


def test_item11_symlinked_sku_folders_are_read_or_quarantined_never_skipped(tmp_path):
    from skurec.catalogue.importer import import_catalogue

    root, elsewhere = tmp_path / "cat", tmp_path / "elsewhere"
    for d, sku in ((root / "real", "sku-red"), (root / ".store" / "inside", "sku-green"), (elsewhere, "sku-blue")):
        d.mkdir(parents=True)
        for i in range(2):
            (d / f"{i}.png").write_bytes(sku_png(sku, i))
    os.symlink(root / ".store" / "inside", root / "linked-inside")
    os.symlink(elsewhere, root / "linked-outside")

    rows = import_catalogue(str(root)).rows
    by_sku = rows.groupby("sku_id")["import_error"].apply(list).to_dict()
    assert by_sku["real"] == [None, None]
    assert by_sku["linked-inside"] == [None, None]  # a symlinked folder inside the root is read
    assert by_sku["linked-outside"] == ["path_outside_root"]  # outside: one row with the reason, not silence
    detail = rows.loc[rows["sku_id"] == "linked-outside", "import_detail"].iloc[0]
    assert str(elsewhere) in detail and "SKUREC_CATALOGUE_ALLOW" in detail
    allowed = import_catalogue(str(root), allow=[str(elsewhere)]).rows
    assert allowed.loc[allowed["sku_id"] == "linked-outside", "import_error"].isna().all()
    assert (allowed["sku_id"] == "linked-outside").sum() == 2


def test_item10_an_images_split_never_changes_when_a_batch_arrives(tmp_path):
    """The audit's "class without val" override used to move: a new image hashing to val sent the override image
    back to train. Images already audited keep their split."""
    import hashlib

    from skurec.catalogue.audit import AuditConfig, audit, split_hash
    from skurec.catalogue.importer import import_catalogue

    cfg = AuditConfig(min_samples=2)
    pool = {}
    for seed in range(400):
        data = sku_png("sku-red", seed)
        pool[seed] = split_hash(hashlib.sha256(data).hexdigest(), cfg.split_salt)
    train_like = [s for s, h in pool.items() if h >= cfg.val_fraction][:4]
    val_like = [s for s, h in pool.items() if h < cfg.val_fraction][:1]
    cat = tmp_path / "cat"
    (cat / "a").mkdir(parents=True)
    for s in train_like:
        (cat / "a" / f"{s}.png").write_bytes(sku_png("sku-red", s))
    import dagster as dg

    from skurec_assets.ingest import audited_catalogue
    from skurec_resources import CatalogueResource, StorageResource

    def audited():
        resources = {
            "storage": StorageResource(workdir=str(tmp_path / "work")),
            "catalogue": CatalogueResource(location=str(cat), min_samples=cfg.min_samples),
        }
        assert dg.materialize([audited_catalogue], resources=resources).success
        return Workspace(str(tmp_path / "work")).read_table("images").set_index("image_id")["split"]

    first = audited()
    assert (first == "val").sum() == 1  # the override gave the class its validation image
    for s in val_like:  # a batch brings an image that hashes to val
        (cat / "a" / f"{s}.png").write_bytes(sku_png("sku-red", s))
    again = audited()
    assert len(again) == len(first) + 1
    assert again.loc[first.index].to_dict() == first.to_dict()
    stateless = audit(import_catalogue(str(cat)).rows, cfg).images.set_index("image_id")["split"]
    assert stateless.loc[first.index].to_dict() != first.to_dict()  # what the audit did before: the override moved
