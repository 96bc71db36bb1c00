"""Object storage for real: catalogue, embedding cache and work directory on an S3 API (moto server on loopback),
through s3fs, including a flaky endpoint and a check that credentials are never written anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from support.badinputs import encode, materialization_metadata, materialize_spine, pattern_image
from support.files import write_folder_catalogue
from support.s3server import S3Server, clear_s3fs_caches, s3  # noqa: F401  (s3 is a fixture)

from skurec.embeddings.cache import EmbeddingCache
from skurec.store.workspace import Workspace

COUNTS = {"sku-a": 5, "sku-b": 5, "sku-c": 4}
N_IMAGES = sum(COUNTS.values())


def _s3_run(server: S3Server, tmp_path: Path, bucket: str, location: str, instance=None, **kwargs):
    return materialize_spine(
        f"s3://{bucket}/work",
        location,
        duckdb_path=str(tmp_path / "mirror" / "skurec.duckdb"),
        s3_endpoint_url=server.endpoint_url,
        instance=instance,
        **kwargs,
    )


def _workspace(server: S3Server, bucket: str, tmp_path: Path) -> Workspace:
    return Workspace(
        f"s3://{bucket}/work",
        duckdb_path=str(tmp_path / "mirror" / "skurec.duckdb"),
        storage_options=server.storage_options,
    )


def test_folder_catalogue_cache_and_workdir_on_s3(s3: S3Server, tmp_path: Path):
    bucket = s3.new_bucket()
    local = write_folder_catalogue(tmp_path / "cat", COUNTS)
    assert s3.upload_tree(local, bucket, "catalogue") == N_IMAGES
    before = s3.snapshot(bucket, "catalogue/")

    r1 = _s3_run(s3, tmp_path, bucket, f"s3://{bucket}/catalogue")
    audit_meta = materialization_metadata(r1, "audited_catalogue")
    assert audit_meta["n_accepted"] == N_IMAGES and audit_meta["n_quarantined"] == 0
    m1 = materialization_metadata(r1, "image_embeddings")
    assert (m1["n_computed"], m1["n_already_cached"], m1["n_failed"]) == (N_IMAGES, 0, 0)

    # Everything lives in the bucket: tables, reports, the embedding cache (compacted to one part per hash shard).
    keys = set(s3.snapshot(bucket, "work/"))
    # The audit's tables live in one snapshot folder switched by the pointer tables/audit.json (issue 22, item 3).
    pointer = json.loads(s3.client().get_object(Bucket=bucket, Key="work/tables/audit.json")["Body"].read())
    for table in ("images", "quarantine", "classes"):
        assert f"work/{pointer['tables'][table]}" in keys and pointer["tables"][table].startswith("tables/audit/")
    assert "work/reports/audit_summary.json" in keys
    parts = [k for k in keys if k.startswith("work/embeddings/") and k.rsplit("/", 1)[-1].startswith("part-")]
    from skurec_assets.embeddings import default_shards

    n_shards = default_shards()
    assert sorted(k.rsplit("/", 1)[-1].split("-")[1] for k in parts) == [
        f"s{i:03d}of{n_shards:03d}" for i in range(n_shards)
    ]
    assert not any("/.tmp-" in k for k in keys)
    # ... and the SQL mirror is local, as configured.
    con = duckdb.connect(str(tmp_path / "mirror" / "skurec.duckdb"), read_only=True)
    assert con.execute("select count(*) from images").fetchone()[0] == N_IMAGES
    con.close()

    # Read the cache back through the core API: every accepted image has a unit vector.
    ws = _workspace(s3, bucket, tmp_path)
    ids = ws.read_table("images")["image_id"].tolist()
    got_ids, X = EmbeddingCache(ws).load(m1["encoder_id"], ids)
    assert got_ids == ids and X.shape[0] == N_IMAGES
    assert abs(float((X**2).sum(axis=1).mean()) - 1.0) < 1e-4

    # Rerun: nothing recomputed. New objects written by another client are seen (no stale s3fs listing).
    m2 = materialization_metadata(_s3_run(s3, tmp_path, bucket, f"s3://{bucket}/catalogue"), "image_embeddings")
    assert (m2["n_computed"], m2["n_already_cached"]) == (0, N_IMAGES)
    c = s3.client()
    for i in range(2):
        c.put_object(Bucket=bucket, Key=f"catalogue/sku-c/new{i}.png", Body=encode(pattern_image(900 + i), "PNG"))
    m3 = materialization_metadata(_s3_run(s3, tmp_path, bucket, f"s3://{bucket}/catalogue"), "image_embeddings")
    assert (m3["n_computed"], m3["n_already_cached"]) == (2, N_IMAGES)
    after = s3.snapshot(bucket, "catalogue/")
    assert {k: v for k, v in after.items() if "/new" not in k} == before  # inputs untouched


def test_manifest_on_s3_with_missing_key_and_escaping_path(s3: S3Server, tmp_path: Path):
    bucket = s3.new_bucket()
    local = write_folder_catalogue(tmp_path / "cat", {"a": 3, "b": 3})
    s3.upload_tree(local, bucket, "shop/images")
    s3.client().put_object(Bucket=bucket, Key="private/secret.png", Body=encode(pattern_image(5), "PNG"))
    lines = ["image_uri,sku_id"]
    lines += [f"images/{p.relative_to(local).as_posix()},{p.parent.name}" for p in sorted(local.rglob("*.png"))]
    lines += [
        "images/a/not_there.png,a",  # relative, missing key
        f"s3://{bucket}/shop/images/b/also_missing.png,b",  # absolute URI, missing key
        "../private/secret.png,a",  # escapes the manifest's folder
        f"s3://{bucket}-does-not-exist/x.png,a",  # another bucket: not a read root unless allowed (issue 22)
    ]
    s3.client().put_object(Bucket=bucket, Key="shop/manifest.csv", Body=("\n".join(lines) + "\n").encode())

    result = _s3_run(s3, tmp_path, bucket, f"s3://{bucket}/shop/manifest.csv")
    meta = materialization_metadata(result, "audited_catalogue")
    assert meta["n_input_rows"] == 10 and meta["n_accepted"] == 6
    assert meta["quarantine_reasons"] == {"missing_file": 2, "path_outside_root": 2}
    q = _workspace(s3, bucket, tmp_path).read_table("quarantine").set_index("row_number")["reason"].to_dict()
    assert q == {8: "missing_file", 9: "missing_file", 10: "path_outside_root", 11: "path_outside_root"}
    assert materialization_metadata(result, "image_embeddings")["n_computed"] == 6


def test_pipeline_completes_when_a_fifth_of_s3_reads_fail(s3: S3Server, tmp_path: Path, monkeypatch):
    """503 SlowDown on 20% of GET/HEAD requests (object reads, heads, listings). botocore's own retries are turned
    off (AWS_MAX_ATTEMPTS=1) so that the s3fs and skurec retry layers must carry the run."""
    bucket = s3.new_bucket()
    local = write_folder_catalogue(tmp_path / "cat", COUNTS)
    s3.upload_tree(local, bucket, "catalogue")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    clear_s3fs_caches()
    s3.faults.fail_every = 5

    result = _s3_run(s3, tmp_path, bucket, f"s3://{bucket}/catalogue")
    s3.faults.fail_every = 0
    injected = s3.faults.counts["injected"]
    assert injected >= 15, s3.faults.counts  # the faults really happened (a fifth of reads, retries included) ...
    assert injected == s3.faults.reads() // 5
    audit_meta = materialization_metadata(result, "audited_catalogue")  # ... and changed nothing in the outcome
    assert (audit_meta["n_accepted"], audit_meta["n_quarantined"]) == (N_IMAGES, 0)
    m = materialization_metadata(result, "image_embeddings")
    assert (m["n_computed"], m["n_failed"]) == (N_IMAGES, 0)
    ws = _workspace(s3, bucket, tmp_path)
    ids = ws.read_table("images")["image_id"].tolist()
    assert EmbeddingCache(ws).load(m["encoder_id"], ids)[1].shape == (N_IMAGES, 32)


def test_workspace_retries_what_s3fs_gives_up_on(s3: S3Server, tmp_path: Path, monkeypatch, caplog):
    """With botocore and s3fs each allowed a single attempt, a quarter of the reads failing must be absorbed by
    skurec's own retry layer."""
    import s3fs

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    clear_s3fs_caches()
    bucket = s3.new_bucket()
    ws = _workspace(s3, bucket, tmp_path)
    s3.faults.fail_every = 4
    caplog.set_level("WARNING", logger="skurec.store.workspace")
    import pandas as pd

    for i in range(10):
        ws.write_json(f"reports/r{i}.json", {"i": i})
        ws.write_parquet(f"t/p{i}.parquet", pd.DataFrame({"i": [i]}))
        assert ws.read_json(f"reports/r{i}.json") == {"i": i}
        assert ws.read_parquet(f"t/p{i}.parquet").column("i").to_pylist() == [i]
        assert ws.exists(f"reports/r{i}.json") and not ws.exists(f"reports/none{i}.json")
        assert len(ws.glob("reports/*.json")) == i + 1
    s3.faults.fail_every = 0
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert s3.faults.counts["injected"] >= 15
    assert len(retries) >= 10, s3.faults.counts  # every injected fault surfaced to skurec and was retried there


SENTINEL = "SENTINEL-secret-0123456789-do-not-write"


def test_secret_key_is_never_written(s3: S3Server, tmp_path: Path, monkeypatch, caplog, capfd):
    """The secret access key travels only in the environment: it appears in no table, report, metadata, event
    log, captured log line or output of an S3 pipeline run."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SENTINEL)
    clear_s3fs_caches()
    bucket = s3.new_bucket()
    local = write_folder_catalogue(tmp_path / "cat", {"a": 3, "b": 3})
    s3.upload_tree(local, bucket, "catalogue")
    (tmp_path / "cat" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")  # a quarantine row, too
    s3.client().put_object(Bucket=bucket, Key="catalogue/a/broken.jpg", Body=b"\xff\xd8\xff broken")
    caplog.set_level("DEBUG")
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = _s3_run(s3, tmp_path, bucket, f"s3://{bucket}/catalogue", instance=instance)
        events = instance.all_logs(result.run_id)
        assert len(events) > 20
        event_text = "\n".join(dg.serialize_value(e) for e in events)
        run_text = dg.serialize_value(instance.get_run_by_id(result.run_id))
    assert "broken.jpg" in event_text  # the scan sees real content (the quarantine preview)...
    assert SENTINEL not in event_text and SENTINEL not in run_text  # ... but never the key

    written = s3.read_all(bucket, "work/")
    assert any(k.endswith("/quarantine.parquet") for k in written)
    for key, data in written.items():
        assert SENTINEL.encode() not in data, key
    for p in list(tmp_path.rglob("*")):  # DuckDB mirror, Dagster home (SQLite event log, compute logs)
        if p.is_file():
            assert SENTINEL.encode() not in p.read_bytes(), p
    assert caplog.records and not any(SENTINEL in r.getMessage() for r in caplog.records)
    out, err = capfd.readouterr()
    assert SENTINEL not in out and SENTINEL not in err
    # The audit summary report is plain JSON and also holds no endpoint credentials.
    summary = json.loads(written["work/reports/audit_summary.json"])
    assert summary["n_accepted"] == 6


@pytest.mark.parametrize("op", ["glob", "read_table"])
def test_workspace_sees_objects_written_by_another_client(s3: S3Server, tmp_path: Path, op):
    """s3fs caches listings per filesystem instance: the work directory must not serve a stale listing when another
    process (here: a plain boto3 client) writes into it."""
    bucket = s3.new_bucket()
    ws = _workspace(s3, bucket, tmp_path)
    ws.write_json("reports/a.json", {"v": 1})
    assert ws.glob("reports/*.json") == ["reports/a.json"]
    assert not ws.has_table("images")
    s3.client().put_object(Bucket=bucket, Key="work/reports/b.json", Body=b"{}")
    ws2 = _workspace(s3, bucket, tmp_path)  # same cached s3fs instance underneath
    assert ws2.fs is ws.fs
    if op == "glob":
        assert ws2.glob("reports/*.json") == ["reports/a.json", "reports/b.json"]
        assert ws2.listdir("reports") == ["a.json", "b.json"]
    else:
        import io

        import pandas as pd

        ws.write_parquet("tables/classes.parquet", pd.DataFrame({"x": [0]}))
        assert ws.listdir("tables") == ["classes.parquet"]  # a listing s3fs would cache
        buf = io.BytesIO()
        pd.DataFrame({"x": [1, 2]}).to_parquet(buf)
        s3.client().put_object(Bucket=bucket, Key="work/tables/images.parquet", Body=buf.getvalue())
        assert ws2.has_table("images")
        assert ws2.read_table("images")["x"].tolist() == [1, 2]
