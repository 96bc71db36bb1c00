"""CPU inference across cores WITHOUT OpenMP barriers: N Python threads, each running torch single-threaded.

Why: with torch's default intra-op parallelism every convolution is split across all cores and ends in an OpenMP
barrier. When anything else wants a core (our decode thread, or other processes on a shared 2-core box) one OpenMP
thread is descheduled and its partner spins at the barrier: measured on the 2-core dev machine, the bare forward of
EfficientNet-Lite2 fell from ~43 to 2-5 images/s (355 CPU-ms/image instead of ~45) under load. Giving each thread
whole micro-batches with ONE intra-op thread keeps every core doing useful work, so decoding can share the cores.

How: each pool thread first initialises torch's per-thread OpenMP state, then sets one intra-op thread for itself
(``torch.set_num_threads(1)`` changes the calling thread's OpenMP ICV); the caller's thread count is restored
afterwards and the result is VERIFIED (pool threads see 1, the caller sees its old value). If this torch build does
not behave like that (non-OpenMP backend), :func:`make_cpu_pool` returns None and the encoder falls back to plain
intra-op parallelism in the calling thread.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

logger = logging.getLogger(__name__)
_SETUP_LOCK = threading.Lock()


def _single_threaded_torch() -> None:
    torch.get_num_threads()  # trigger torch's lazy per-thread init first, so it cannot undo the next line later
    torch.set_num_threads(1)


def make_cpu_pool(n_threads: int) -> ThreadPoolExecutor | None:
    """A pool of ``n_threads`` threads running torch with one intra-op thread each, or None if unsupported."""
    if n_threads < 2:
        return None
    with _SETUP_LOCK:
        before = torch.get_num_threads()
        barrier = threading.Barrier(n_threads, timeout=30)
        pool = ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="skurec-forward")
        try:
            # n tasks that wait for each other force n distinct threads to start (and run the setup) now.
            list(pool.map(lambda _: (_single_threaded_torch(), barrier.wait()), range(n_threads)))
        finally:
            torch.set_num_threads(before)  # the caller's setting is unchanged
        seen = set(pool.map(lambda _: (torch.get_num_threads(), barrier.wait())[0], range(n_threads)))
    if seen != {1} or torch.get_num_threads() != before:
        logger.info("per-thread torch threading not supported here (pool sees %s); using intra-op threads", seen)
        pool.shutdown(wait=False)
        return None
    return pool
