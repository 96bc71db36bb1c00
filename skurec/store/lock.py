"""One writer per work directory: a lock that names its holder, is released when the holder dies, and never blocks
readers.

Two builds on one work directory interleave their tables, models and Dagster storage (one deployed the other's model;
two first runs raced to create the SQLite schema). Every command that writes (``skurec demo``, ``skurec run``,
``skurec demo --add-batch``, and ``skurec ui`` while its daemon is up) holds :func:`writer_lock` for its whole run. The lock is ``filelock.FileLock``
(``flock`` on POSIX): the operating system drops it when the holding process exits or is killed, so a crash never
leaves a stale lock. The holder's pid, host, command and start time are written beside it, so the second writer is
told who holds it. Readers (``skurec predict``, ``skurec lineage``, the Recognizer) never take it: every file they
read is replaced atomically.

A remote work directory (``s3://...``) has no lock (object stores have no ``flock``); run one writer there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from skurec.layout import WRITER_LOCK, WRITER_LOCK_HOLDER


class WorkdirBusyError(RuntimeError):
    """Another process holds the work directory's writer lock."""


def lock_holder(workdir: str | os.PathLike) -> dict:
    """The recorded holder of the writer lock (pid, host, command, since); ``{}`` when none was recorded."""
    try:
        return json.loads((Path(workdir) / WRITER_LOCK_HOLDER).read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def writer_lock(workdir: str | os.PathLike, command: str, timeout_s: float = 0.0) -> Iterator[dict]:
    """Hold the work directory's writer lock for the ``with`` block; :class:`WorkdirBusyError` naming the holder
    when another process holds it (after waiting ``timeout_s``)."""
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / WRITER_LOCK), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        h = _wait_for_holder(root)
        who = (
            f"pid {h.get('pid')} on host {h.get('host')} (`{h.get('command')}`, since {h.get('since')})"
            if h
            else "another process"
        )
        raise WorkdirBusyError(
            f"work directory {root} is in use by {who}; wait for it to finish or use another --workdir "
            "(skurec predict / lineage can read it meanwhile; with `skurec ui` up, add batches with --add-batch "
            "--no-run and let its sensor ingest them)"
        ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = root / WRITER_LOCK_HOLDER
    try:
        tmp = root / f".tmp-{os.getpid()}-{WRITER_LOCK_HOLDER}"
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, path)
        yield holder
    finally:
        try:
            if lock_holder(root).get("pid") == holder["pid"]:
                path.unlink()
        except OSError:
            pass
        lock.release()


def _wait_for_holder(root: Path, wait_s: float = 5.0) -> dict:
    """The holder record, waiting up to ``wait_s`` for it: the holder writes it just after taking the lock, so a
    second writer arriving in that instant would otherwise see the lock held and no name on it."""
    deadline = time.monotonic() + wait_s
    while True:
        h = lock_holder(root)
        if h or time.monotonic() >= deadline:
            return h
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, ValueError):
        return False
    return True
