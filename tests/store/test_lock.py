"""The writer lock names its holder even to a writer that arrives in the instant between the holder taking the
lock and recording its name (the race the concurrent-demo test hit on CI)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from filelock import FileLock

from skurec.layout import WRITER_LOCK, WRITER_LOCK_HOLDER
from skurec.store.lock import WorkdirBusyError, writer_lock


def test_second_writer_waits_for_the_holder_record_before_refusing(tmp_path):
    held = FileLock(str(tmp_path / WRITER_LOCK))
    held.acquire()
    try:

        def record_late():
            time.sleep(0.5)
            (tmp_path / WRITER_LOCK_HOLDER).write_text(json.dumps({"pid": 4242, "host": "h", "command": "c"}))

        t = threading.Thread(target=record_late)
        t.start()
        with pytest.raises(WorkdirBusyError, match="in use by pid 4242 on host h"):
            with writer_lock(tmp_path, "second"):
                pass
        t.join()
    finally:
        held.release()


def test_holder_that_never_records_is_reported_as_another_process(tmp_path):
    held = FileLock(str(tmp_path / WRITER_LOCK))
    held.acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(WorkdirBusyError, match="in use by another process"):
            with writer_lock(tmp_path, "second"):
                pass
        assert time.monotonic() - t0 < 30
    finally:
        held.release()
