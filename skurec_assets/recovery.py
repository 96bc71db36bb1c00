"""Start-of-run recovery of a work directory, under its writer lock (:func:`skurec.store.lock.writer_lock`).

A process killed mid-run leaves traces that must not outlive it: the Dagster runs it started stay STARTED forever,
its ``dagster_step_io/<run_id>/`` hand-offs and ``.tmp-*`` files stay on disk, and a kill between moving the
deployment pointer and writing the history leaves the history one event short. :func:`recover_workdir` repairs all
of them before the next writer starts. Runs started by the ``skurec`` command carry the tags of
:func:`process_tags` (pid and host), so a dead one is recognised exactly; runs the UI launched are left to the Dagster
daemon's run monitoring.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from skurec.layout import DAGSTER_HOME_DIR, STEP_IO_DIR
from skurec.store.lock import pid_alive
from skurec.store.model_store import ModelStore
from skurec.store.workspace import TEMP_PREFIX, Workspace

RUN_PID_TAG = "skurec/pid"
RUN_HOST_TAG = "skurec/host"
#: with a live run in the instance, only temp files older than this are removed (a write in progress is younger)
LIVE_TEMP_AGE_S = 600.0
#: with no live run, temp files older than this are removed: readers that write (``predict --review-queue``) never
#: take the lock, and one of their writes in progress is never that old
IDLE_TEMP_AGE_S = 60.0

log = logging.getLogger(__name__)


def process_tags() -> dict[str, str]:
    """Tags naming this process on every run it starts (how a later start knows a STARTED run is dead)."""
    return {RUN_PID_TAG: str(os.getpid()), RUN_HOST_TAG: socket.gethostname()}


def _live_statuses():
    import dagster as dg

    return [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]


def fail_dead_runs(instance: Any) -> list[str]:
    """Mark runs this host's ``skurec`` processes started and that died (killed, crashed) as failed."""
    import dagster as dg

    host = socket.gethostname()
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_live_statuses())):
        pid, run_host = run.tags.get(RUN_PID_TAG), run.tags.get(RUN_HOST_TAG)
        if pid is None or run_host != host or pid_alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"the skurec process {pid} that ran it died (killed or crashed)")
        failed.append(run.run_id)
    if failed:
        log.warning("marked %d run(s) of dead skurec processes as failed: %s", len(failed), ", ".join(failed))
    return failed


def recover_workdir(ws: Workspace, instance: Any | None) -> dict[str, Any]:
    """Reconcile the model history, fail dead runs, drop dead runs' step hand-offs and temp files."""
    out: dict[str, Any] = {"history_reconciled": ModelStore(ws).reconcile_history()}
    live: set[str] = set()
    if instance is not None:
        import dagster as dg

        out["failed_runs"] = fail_dead_runs(instance)
        live = {r.run_id for r in instance.get_runs(filters=dg.RunsFilter(statuses=_live_statuses()))}
    removed = []
    for name in ws.listdir(STEP_IO_DIR):
        if name not in live:
            ws.delete(f"{STEP_IO_DIR}/{name}")
            removed.append(name)
    out["step_io_removed"] = removed
    out["temp_files_removed"] = remove_temp_files(ws, older_than_s=LIVE_TEMP_AGE_S if live else IDLE_TEMP_AGE_S)
    return out


def remove_temp_files(ws: Workspace, older_than_s: float = 0.0) -> int:
    """Delete ``.tmp-*`` files anywhere in a local work directory (dead writers' partial writes)."""
    if ws.remote:
        return 0
    import time

    now, n = time.time(), 0
    for folder, dirs, files in os.walk(ws.root):
        dirs[:] = [d for d in dirs if d != DAGSTER_HOME_DIR]  # Dagster's own files are Dagster's
        for name in files:
            full = os.path.join(folder, name)
            if name.startswith(TEMP_PREFIX):
                try:
                    if now - os.stat(full).st_mtime >= older_than_s:
                        os.unlink(full)
                        n += 1
                except FileNotFoundError:
                    pass
    if n:
        log.info("removed %d temporary file(s) of interrupted writes in %s", n, ws.root)
    return n
