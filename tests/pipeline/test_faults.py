"""Faults: a SIGKILLed embedding run, readers racing writers, and damaged files in the embedding cache.

The embedding cache must keep every part flushed before a crash (the rerun embeds only what is missing), a reader
must never see a half-written Parquet file, and a stray temporary file or a damaged part must never crash a read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from support.badinputs import encode, pattern_image

from skurec.embeddings.cache import CORRUPT_DIR, EmbeddingCache
from skurec.encoders import load_encoder
from skurec.store.workspace import Workspace

N_KILL_IMAGES = 320
FLUSH_ROWS = 16

# The embedding run, as its own process. The progress hook sleeps a little per batch: the tiny encoder is so fast
# that without it the run could finish before the test gets to kill it. Everything else is the real code path.
EMBED_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from skurec.embeddings.cache import EmbeddingCache
    from skurec.encoders import load_encoder
    from skurec.store.workspace import Workspace

    workdir, table, throttle = sys.argv[1], sys.argv[2], float(sys.argv[3])
    images = pd.read_parquet(table)
    cache = EmbeddingCache(Workspace(workdir), flush_rows=%d)
    enc = load_encoder("tiny_random_vit", device="cpu")
    print("STARTED", flush=True)
    stats = cache.update(enc, images, batch_size=8, num_workers=1, progress=lambda d, t: time.sleep(throttle))
    print("DONE", stats.n_computed, flush=True)
    """
    % FLUSH_ROWS
)


def _make_images(folder: Path, n: int) -> pd.DataFrame:
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        data = encode(pattern_image(10_000 + i, (24, 24)), "PNG")
        path = folder / f"{i:04d}.png"
        path.write_bytes(data)
        rows.append({"image_id": hashlib.sha256(data).hexdigest(), "image_uri": str(path)})
    return pd.DataFrame(rows)


def _child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    return env


def test_sigkilled_embedding_run_is_resumed_without_recomputing(tmp_path: Path):
    images = _make_images(tmp_path / "imgs", N_KILL_IMAGES)
    table = tmp_path / "images.parquet"
    images.to_parquet(table)
    work = tmp_path / "work"
    ws = Workspace(str(work))
    enc = load_encoder("tiny_random_vit", device="cpu")
    cache = EmbeddingCache(ws, flush_rows=FLUSH_ROWS)

    proc = subprocess.Popen(
        [sys.executable, "-c", EMBED_SCRIPT, str(work), str(table), "0.03"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_child_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(cache.parts(enc.encoder_id)) < 3:
            assert proc.poll() is None, f"embedding run ended early: {proc.stdout.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no part files appeared within 90 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    out = proc.stdout.read().decode()
    assert proc.returncode == -signal.SIGKILL and "DONE" not in out, out[-2000:]

    # What survived the kill: whole parts only (each a multiple of the flush size), never a partial file.
    parts = cache.parts(enc.encoder_id)
    survived = cache.cached_ids(enc.encoder_id)
    assert len(parts) >= 3
    assert 0 < len(survived) < N_KILL_IMAGES
    assert len(survived) % FLUSH_ROWS == 0
    assert not Path(ws.path(cache.corrupt_dir(enc.encoder_id))).exists()  # nothing was damaged by the kill

    # The rerun reuses every embedding already written and computes only the rest.
    stats = cache.update(enc, images, batch_size=32, num_workers=1)
    assert stats.n_cached == len(survived)
    assert stats.n_computed == N_KILL_IMAGES - len(survived)
    assert not stats.failures
    ids, X = cache.load(enc.encoder_id, images["image_id"].tolist())
    assert X.shape == (N_KILL_IMAGES, enc.dim)
    assert len(cache.parts(enc.encoder_id)) == 1  # compacted after the successful run
    # Vectors flushed by the killed run are exactly what a clean run computes.
    sample = sorted(survived)[:8]
    fresh = EmbeddingCache(Workspace(str(tmp_path / "clean"))).update(enc, images[images["image_id"].isin(sample)])
    assert fresh.n_computed == 8
    _, X_fresh = EmbeddingCache(Workspace(str(tmp_path / "clean"))).load(enc.encoder_id, sample)
    _, X_kept = cache.load(enc.encoder_id, sample)
    np.testing.assert_allclose(X_kept, X_fresh, atol=1e-5)


# A writer process replacing one Parquet file again and again (alternating two contents) until it is killed.
WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np, pandas as pd
    from skurec.store.workspace import Workspace

    ws = Workspace(sys.argv[1])
    frames = [pd.DataFrame({"k": np.full(200_000, v, dtype=np.int64), "x": np.arange(200_000) * v}) for v in (1, 2)]
    ws.write_parquet("t.parquet", frames[0])
    print("READY", flush=True)
    i = 0
    while True:
        i += 1
        ws.write_parquet("t.parquet", frames[i % 2])
    """
)


def test_readers_never_see_a_partial_parquet_file(tmp_path: Path):
    """Read a file while another process keeps replacing it, then SIGKILL the writer mid-write: every read parses
    and is one whole version (all k equal, x consistent with k); after the kill the file is still whole."""
    ws = Workspace(str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_child_env(),
        start_new_session=True,
    )
    seen = set()
    try:
        assert proc.stdout.readline().decode().strip() == "READY"
        deadline = time.monotonic() + 2.5
        reads = 0
        while time.monotonic() < deadline:
            t = ws.read_parquet("t.parquet")
            k = t.column("k").to_numpy()
            assert len(k) == 200_000 and (k == k[0]).all()
            assert (t.column("x").to_numpy() == np.arange(200_000) * k[0]).all()
            seen.add(int(k[0]))
            reads += 1
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert reads >= 5 and seen == {1, 2}  # the file really was replaced while we read it
    assert len(ws.read_parquet("t.parquet")) == 200_000
    assert ws.glob("*.parquet") == ["t.parquet"]  # the killed writer's temp file is not visible to globs


def _two_part_cache(tmp_path: Path, n: int = 24) -> tuple[EmbeddingCache, object, pd.DataFrame]:
    images = _make_images(tmp_path / "imgs", n)
    enc = load_encoder("tiny_random_vit", device="cpu")
    cache = EmbeddingCache(Workspace(str(tmp_path / "work")), flush_rows=n // 2)
    cache.update(enc, images, batch_size=n // 2, num_workers=1, compact=False)
    assert len(cache.parts(enc.encoder_id)) == 2
    return cache, enc, images


def test_stray_truncated_temp_file_is_ignored_and_cleaned_up(tmp_path: Path):
    cache, enc, images = _two_part_cache(tmp_path)
    folder = Path(cache.ws.path(cache.rel_dir(enc.encoder_id)))
    good = (folder / Path(cache.parts(enc.encoder_id)[0]).name).read_bytes()
    stray = folder / ".tmp-0123abcd-part-999-deadbeef.parquet"  # what a writer killed before its rename leaves
    stray.write_bytes(good[: len(good) // 3])
    young = folder / ".tmp-4567ef01-part-998-deadbeef.parquet"  # a live writer's temp file: must be left alone
    young.write_bytes(good[:10])
    old = time.time() - 7200
    os.utime(stray, (old, old))

    assert len(cache.cached_ids(enc.encoder_id)) == len(images)
    ids, X = cache.load(enc.encoder_id)
    assert sorted(ids) == sorted(images["image_id"]) and X.shape == (len(images), enc.dim)
    cache.compact(enc.encoder_id)
    assert not stray.exists() and young.exists()
    assert len(cache.parts(enc.encoder_id)) == 1


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "not_parquet", "wrong_schema", "empty"])
def test_damaged_part_is_quarantined_with_a_warning_and_re_embedded(tmp_path: Path, caplog, damage: str):
    cache, enc, images = _two_part_cache(tmp_path)
    parts = cache.parts(enc.encoder_id)
    victim = Path(cache.ws.path(parts[1]))
    lost = set(cache.ws.read_parquet(parts[1]).column("image_id").to_pylist())
    data = victim.read_bytes()
    if damage == "truncated":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "bit_flip":  # silent corruption of the vectors' bytes: caught by the page checksums
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0)
        col = next(
            meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith("embedding")
        )
        buf = bytearray(data)
        start = col.dictionary_page_offset or col.data_page_offset  # the chunk starts with its dictionary page
        buf[start + col.total_compressed_size // 2] ^= 0x01
        victim.write_bytes(bytes(buf))
    elif damage == "not_parquet":
        victim.write_bytes(b"<html>503 Service Unavailable</html>")
    elif damage == "wrong_schema":
        buf = pa.BufferOutputStream()
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image_id": [1, 2], "embedding": ["a", "b"]}), buf)
        victim.write_bytes(buf.getvalue().to_pybytes())
    else:
        victim.write_bytes(b"")

    caplog.set_level(logging.WARNING, logger="skurec.embeddings.cache")
    if damage == "bit_flip":  # the image ids are intact: only reading the vectors reveals the damage ...
        assert cache.cached_ids(enc.encoder_id) == set(images["image_id"])
        with pytest.raises(KeyError, match="no cached embedding"):  # ... which load() does, and says what is missing
            cache.load(enc.encoder_id, images["image_id"].tolist())
    cached = cache.cached_ids(enc.encoder_id, verify=True)  # must not raise
    assert cached == set(images["image_id"]) - lost
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert not victim.exists()
    assert (victim.parent / CORRUPT_DIR / victim.name).exists()  # kept aside for inspection, never read again

    stats = cache.update(enc, images, batch_size=12, num_workers=1)
    assert (stats.n_cached, stats.n_computed) == (len(images) - len(lost), len(lost))
    ids, X = cache.load(enc.encoder_id, images["image_id"].tolist())
    assert X.shape == (len(images), enc.dim) and np.isfinite(X).all()


def test_crash_between_compaction_write_and_delete_loses_nothing(tmp_path: Path):
    """Compaction writes the merged part before deleting the old ones; a crash in between leaves every id twice,
    and readers must return each id once."""
    cache, enc, images = _two_part_cache(tmp_path)
    ids_all, X_all = cache.load(enc.encoder_id)
    cache._write_part(enc.encoder_id, ids_all, X_all)  # the merged part, then "crash": old parts not deleted
    assert len(cache.parts(enc.encoder_id)) == 3
    ids, X = cache.load(enc.encoder_id)
    assert len(ids) == len(set(ids)) == len(images)
    stats = cache.update(enc, images)
    assert (stats.n_cached, stats.n_computed) == (len(images), 0)
    cache.compact(enc.encoder_id)
    assert len(cache.parts(enc.encoder_id)) == 1
    assert sorted(cache.load(enc.encoder_id)[0]) == sorted(images["image_id"])


# ------------------------------------------------------------------------------------------------ issue 22, item 4
# A deployment SIGKILLed at its two kill points: just before the pointer moves, and just after it moved but before
# the history is written. The child pauses at the chosen point (a real sleep inside the real write path) and is
# killed there; everything else is the real ModelStore.
DEPLOY_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from skurec.store.model_store import ModelStore
    from skurec.store.workspace import Workspace

    workdir, point = sys.argv[1], sys.argv[2]
    ws = Workspace(workdir)
    store = ModelStore(ws)
    real_write, real_record = ws.write_bytes, store.record_event

    def write_bytes(rel, data):
        if rel == "models/deployed.json" and point == "before_pointer":
            print("AT", point, flush=True)
            time.sleep(120)
        return real_write(rel, data)

    def record_event(kind, event):
        if point == "before_history":
            print("AT", point, flush=True)
            time.sleep(120)
        return real_record(kind, event)

    ws.write_bytes, store.record_event = write_bytes, record_event
    store.deploy("m2", "better")
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("point", ["before_pointer", "before_history"])
def test_sigkilled_deployment_never_falsifies_history(tmp_path: Path, point: str):
    from skurec.store.model_store import ModelStore

    ws = Workspace(str(tmp_path / "work"))
    store = ModelStore(ws)
    store.save("m1", {"a.json": b"1"}, {})
    store.save("m2", {"a.json": b"2"}, {})
    store.deploy("m1", "first")
    proc = subprocess.Popen(
        [sys.executable, "-c", DEPLOY_SCRIPT, str(tmp_path / "work"), point],
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().split() == ["AT", point]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deployed = store.deployed_id()
    history = [h["model_id"] for h in store.history() if h["event"] == "deployed"]
    # The history names exactly the deployments that happened, before and after the next start's reconciliation.
    assert deployed == ("m1" if point == "before_pointer" else "m2")
    assert history == ["m1"]
    store.reconcile_history()
    history = [h["model_id"] for h in store.history() if h["event"] == "deployed"]
    assert history == (["m1"] if point == "before_pointer" else ["m1", "m2"])
    assert history[-1] == deployed
