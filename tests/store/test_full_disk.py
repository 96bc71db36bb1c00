"""A full disk during an audit (issue 22, item 3): the audit's tables and summary change together or not at all, and
the error says "no space left on device".

Two ways to fill the disk: an injected ENOSPC at the n-th file written (works everywhere), and a real tmpfs mounted
for the test where the test may mount one (root in a container with CAP_SYS_ADMIN), else skipped.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from support.files import write_folder_catalogue

from skurec import layout
from skurec.store import workspace as workspace_module
from skurec.store.workspace import Workspace
from skurec_assets.ingest import audited_catalogue
from skurec_resources import CatalogueResource, StorageResource

SMALL = {"sku-a": 6, "sku-b": 6, "sku-c": 6}
LARGE = {**{f"sku-{i:02d}": 8 for i in range(40)}}


def _audit(work: Path, catalogue: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [audited_catalogue],
        resources={
            "storage": StorageResource(workdir=str(work)),
            "catalogue": CatalogueResource(location=str(catalogue), min_samples=3),
        },
        raise_on_error=False,
    )


def _state(work: Path) -> dict:
    """What a reader of the work directory sees, and whether it hangs together."""
    ws = Workspace(str(work))
    images, quarantine, classes = ws.read_table("images"), ws.read_table("quarantine"), ws.read_table("classes")
    probes = ws.read_table("audit_probes")
    summary = layout.audit_summary(ws)
    assert len(images) == summary["n_accepted"] and len(quarantine) == summary["n_quarantined"]
    assert set(classes["sku_id"]) == set(images["sku_id"]) and summary["n_classes"] == len(classes)
    assert len(probes) >= len(images)
    return {"n_images": len(images), "n_classes": len(classes), "snapshot": summary["catalogue_snapshot"]}


def _failure_text(result) -> str:
    return "\n".join(
        (e.event_specific_data.error.message or "") + str(e.event_specific_data.error.cause or "")
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    )


def test_injected_enospc_mid_audit_leaves_the_previous_audit_whole(tmp_path, monkeypatch):
    work = tmp_path / "work"
    assert _audit(work, write_folder_catalogue(tmp_path / "small", SMALL)).success
    before = _state(work)
    large = write_folder_catalogue(tmp_path / "large", LARGE, seed0=1000)

    # The disk fills up at the third data file the new audit writes (its first tables are already on disk).
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls["n"] += 1
            if calls["n"] >= 3:  # and stays full
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(workspace_module.os, "fsync", fsync)
    result = _audit(work, large)
    monkeypatch.undo()
    assert not result.success
    assert "no space left on device" in _failure_text(result).lower()
    assert _state(work) == before  # images, quarantine, classes, probes and summary: all still the old audit
    leftovers = [p for p in work.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []

    # With room again the next audit replaces the whole group, and only the last two snapshots are kept.
    assert _audit(work, large).success
    after = _state(work)
    assert after["n_images"] == sum(LARGE.values()) and after["n_classes"] == len(LARGE)
    assert len(os.listdir(work / layout.table_group_dir("audit"))) <= 2


def test_single_table_write_into_a_group_keeps_the_other_tables(tmp_path):
    ws = Workspace(str(tmp_path / "w"))
    ws.write_table("images", pd.DataFrame({"x": [1]}))  # written alone, before the group existed
    ws.write_table_group("audit", {"classes": pd.DataFrame({"c": [1, 2]})})
    assert len(ws.read_table("images")) == 1 and len(ws.read_table("classes")) == 2
    ws.write_table("images", pd.DataFrame({"x": [1, 2, 3]}))
    assert len(ws.read_table("images")) == 3 and len(ws.read_table("classes")) == 2
    with pytest.raises(ValueError, match="not in table group"):
        ws.write_table_group("audit", {"batch_inbox": pd.DataFrame({"x": [1]})})


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_tmpfs_during_an_audit(tmp_path, tmpfs):
    work = tmpfs / "work"
    assert _audit(work, write_folder_catalogue(tmp_path / "small", SMALL)).success
    before = _state(work)
    large = write_folder_catalogue(tmp_path / "large", LARGE, seed0=1000)
    # Room for the new images table and a little more, not for all of the new audit: the disk fills up in the middle
    # of it (after the images table was written), which is what left the catalogue half old, half new.
    scratch = tmp_path / "scratch"
    assert _audit(scratch, large).success
    images_bytes = (scratch / Workspace(str(scratch)).table_rel("images")).stat().st_size
    filler = tmpfs / "filler"
    free = shutil.disk_usage(tmpfs).free
    leave = (images_bytes // 4096 + 3) * 4096
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    result = _audit(work, large)
    assert not result.success
    assert "no space left on device" in _failure_text(result).lower()
    assert "disk i/o error" not in _failure_text(result).lower()
    assert _state(work) == before
    filler.unlink()
    assert _audit(work, large).success
    assert _state(work)["n_images"] == sum(LARGE.values())
