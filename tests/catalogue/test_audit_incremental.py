"""Incremental audit: with the previous audit's probes, only new or changed files are read, and the tables are
identical to those of a full audit (local disk, and a real S3 API on loopback)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest
from support.files import image_bytes, write_folder_catalogue
from support.s3server import S3Server, s3  # noqa: F401  (s3 is a fixture)

import skurec.catalogue.audit as audit_mod
from skurec.catalogue.audit import PROBE_COLUMNS, AuditConfig, audit
from skurec.catalogue.importer import import_catalogue

CFG = AuditConfig(min_samples=3)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every location the audit reads (calls of read_uri_bytes), in order."""
    seen: list[str] = []
    real = audit_mod.read_uri_bytes

    def counting(uri, *args, **kwargs):
        seen.append(uri)
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(audit_mod, "read_uri_bytes", counting)
    return seen


def _assert_same(a, b) -> None:
    for name in ("images", "quarantine", "classes"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=True, obj=name)
    assert a.summary == b.summary
    pd.testing.assert_frame_equal(a.probes, b.probes, obj="probes")


def _manifest(root: Path, extra: list[str] = ()) -> Path:
    lines = ["image_uri,sku_id"] + [f"{p.relative_to(root)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    lines += list(extra)
    man = root / "manifest.csv"
    man.write_text("\n".join(lines) + "\n")
    return man


def test_incremental_audit_reads_only_new_rows_and_equals_a_full_audit(tmp_path: Path, reads: list[str]) -> None:
    root = write_folder_catalogue(tmp_path / "cat", {"a": 6, "b": 6, "c": 2})
    (root / "a" / "bad.png").write_bytes(b"not an image at all")  # a quarantined row, reused as such
    (root / "b" / "dup.png").write_bytes((root / "b" / "000.png").read_bytes())  # duplicate_image
    man = _manifest(root, extra=["a/gone.png,a"])  # missing_file: always looked at again
    first = audit(import_catalogue(str(man)).rows, CFG)
    assert first.io == {"n_locations": 17, "n_read": 17, "n_reused": 0}
    assert list(first.probes.columns) == PROBE_COLUMNS and len(first.probes) == 17
    assert set(first.quarantine["reason"]) == {"not_an_image", "duplicate_image", "missing_file"}

    # A labelled batch arrives: new images of an old and a new SKU, one conflicting with an old image.
    write_folder_catalogue(tmp_path / "more", {"a": 2, "d": 3}, seed0=500)
    for p in (tmp_path / "more").rglob("*.png"):
        (root / p.parent.name).mkdir(exist_ok=True)
        (root / p.parent.name / f"new_{p.name}").write_bytes(p.read_bytes())
    (root / "d" / "new_conflict.png").write_bytes((root / "c" / "000.png").read_bytes())
    man = _manifest(root, extra=["a/gone.png,a"])
    new = {str(p) for p in root.rglob("new_*.png")}
    reads.clear()
    incremental = audit(import_catalogue(str(man)).rows, CFG, previous=first)
    assert set(reads) == new | {str(root / "a" / "gone.png")}  # only the new rows (+ the missing file) were read
    assert len(reads) == len(new) + 1
    assert incremental.io == {"n_locations": 23, "n_read": 7, "n_reused": 16}

    reads.clear()
    full = audit(import_catalogue(str(man)).rows, CFG)
    assert len(reads) == 23
    _assert_same(incremental, full)
    assert "label_conflict" in set(full.quarantine["reason"])
    # The other accepted forms of previous=: the probes table itself, or a mapping of the previous tables.
    for prev in (first.probes, {"images": first.images, "quarantine": first.quarantine, "probes": first.probes}):
        reads.clear()
        _assert_same(audit(import_catalogue(str(man)).rows, CFG, previous=prev), full)
        assert len(reads) == 7


def test_changed_files_are_read_again(tmp_path: Path, reads: list[str]) -> None:
    root = write_folder_catalogue(tmp_path / "cat", {"a": 5, "b": 5})
    for i in range(2):  # BMP: a rewrite with other pixels has exactly the same size
        (root / "a" / f"{i}.bmp").write_bytes(image_bytes(100 + i, fmt="BMP"))
    rows = lambda: import_catalogue(str(root)).rows  # noqa: E731
    first = audit(rows(), CFG)

    same_size = root / "a" / "0.bmp"
    st = same_size.stat()
    replacement = image_bytes(300, fmt="BMP")
    assert len(replacement) == st.st_size and replacement != same_size.read_bytes()
    same_size.write_bytes(replacement)
    os.utime(same_size, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime back (cp -p, touch -r)
    corrupted = root / "b" / "001.png"
    corrupted.write_bytes(corrupted.read_bytes()[:30])
    replaced = root / "b" / "002.png"
    tmp = root / "b" / ".swap"
    tmp.write_bytes(image_bytes(301))
    os.replace(tmp, replaced)  # replaced by a rename

    reads.clear()
    incremental = audit(rows(), CFG, previous=first)
    assert sorted(reads) == sorted(map(str, (same_size, corrupted, replaced)))
    full = audit(rows(), CFG)
    _assert_same(incremental, full)
    got = incremental.images.set_index("image_uri")
    assert got.loc[str(same_size), "image_id"] != first.images.set_index("image_uri").loc[str(same_size), "image_id"]
    assert incremental.quarantine.set_index("image_uri").loc[str(corrupted), "reason"] == "corrupt_image"


def test_previous_without_stamps_or_with_other_settings_is_not_trusted(
    tmp_path: Path, reads: list[str], caplog
) -> None:
    root = write_folder_catalogue(tmp_path / "cat", {"a": 4})
    first = audit(import_catalogue(str(root)).rows, CFG)
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="skurec.catalogue.audit"):
        audit(import_catalogue(str(root)).rows, CFG, previous={"images": first.images, "quarantine": first.quarantine})
    assert len(reads) == 4 and "probes" in caplog.text
    # An older probe version (what an image is checked for changed): read again.
    stale = first.probes.assign(probe_version="probe-v0")
    reads.clear()
    audit(import_catalogue(str(root)).rows, CFG, previous=stale)
    assert len(reads) == 4
    # A smaller size limit than the one the previous audit ran with: the limit is applied, not the old verdict.
    reads.clear()
    small = audit(import_catalogue(str(root)).rows, AuditConfig(min_samples=3, max_image_bytes=10), previous=first)
    assert set(small.quarantine["reason"]) == {"file_too_large"} and len(reads) == 4
    with pytest.raises(ValueError, match="lacks column"):
        audit(import_catalogue(str(root)).rows, CFG, previous=first.probes.drop(columns="stamp"))


def test_incremental_audit_on_s3_lists_instead_of_reading(s3: S3Server, tmp_path: Path, reads: list[str]) -> None:
    bucket = s3.new_bucket()
    local = write_folder_catalogue(tmp_path / "cat", {"a": 4, "b": 4})
    s3.upload_tree(local, bucket, "catalogue")
    location, opts = f"s3://{bucket}/catalogue", s3.storage_options
    first = audit(import_catalogue(location, storage_options=opts).rows, CFG, storage_options=opts)
    assert first.probes["stamp"].str.startswith("remote:").all()

    c = s3.client()
    c.put_object(Bucket=bucket, Key="catalogue/b/new.png", Body=image_bytes(900))
    old = c.get_object(Bucket=bucket, Key="catalogue/a/000.png")["Body"].read()
    other = image_bytes(901)
    c.put_object(Bucket=bucket, Key="catalogue/a/000.png", Body=other)  # overwritten (new ETag)
    assert other != old
    reads.clear()
    incremental = audit(
        import_catalogue(location, storage_options=opts).rows, CFG, storage_options=opts, previous=first
    )
    assert sorted(reads) == [f"{location}/a/000.png", f"{location}/b/new.png"]
    full = audit(import_catalogue(location, storage_options=opts).rows, CFG, storage_options=opts)
    _assert_same(incremental, full)
