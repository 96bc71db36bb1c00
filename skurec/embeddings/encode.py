"""Batched, parallel embedding of many images with a :class:`~skurec.encoders.FrozenEncoder`.

Reading + decoding (:func:`skurec.images.decode_rgb`, with JPEG draft decoding at the encoder's
``min_decode_side``) + ``encoder.preprocess`` run in a small thread pool, a couple of batches AHEAD of the forward
pass, which runs in the calling thread (PIL and torch both release the GIL, so the two overlap). Results are yielded
batch by batch as soon as they are computed, so the caller (the embedding cache) can persist each batch atomically
and a killed run keeps what it wrote. An image that cannot be read or decoded is reported in
:attr:`EmbeddedBatch.failures` with its :class:`~skurec.images.ImageRejected` reason code and never stops the run.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from skurec.images import ImageRejected, decode_rgb

if TYPE_CHECKING:
    from PIL import Image

    from skurec.encoders import FrozenEncoder

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, "int | None"], None]
Item = tuple[str, Callable[[], bytes]]
#: ``transform(image_id, decoded_rgb) -> rgb`` applied between decoding and ``encoder.preprocess`` (train-time views)
Transform = Callable[[str, "Image.Image"], "Image.Image"]

# Reason codes added by the pipeline (decode failures keep ImageRejected.reason, e.g. "corrupt_image").
READ_ERROR = "read_error"
PREPROCESS_ERROR = "preprocess_error"


@dataclass
class EmbeddedBatch:
    """One batch of results, in input order: embedded ``ids`` with their ``vectors`` and the ``failures``."""

    ids: list[str]
    vectors: np.ndarray  # (len(ids), dim) float32, L2-normalised
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, reason_code, detail)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise ValueError(f"vectors shape {self.vectors.shape} does not match {len(self.ids)} ids")


@dataclass
class _Prepared:
    ids: list[str]
    tensor: torch.Tensor | None  # (n, 3, H, W) or None when every image failed
    failures: list[tuple[str, str, str]]
    n_items: int


def default_num_workers() -> int:
    """Decode threads: 1 on a <= 2-core machine (torch uses the cores for the forward), else up to 8.

    On CPU the forward pass dominates (about 10x the decode cost for these models), so one decode thread keeps it
    fed while torch keeps its intra-op threads; with a GPU more decode threads are needed to keep up.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cpus <= 2:
        return 1
    return max(1, min(8, cpus - 1 if torch.cuda.is_available() else cpus // 4))


def prepare_one(
    encoder: FrozenEncoder,
    image_id: str,
    load: Callable[[], bytes],
    transform: Transform | None = None,
    decode_side: int | None = None,
) -> torch.Tensor | tuple[str, str, str]:
    """Read, decode, optionally ``transform`` and preprocess one image; a failure tuple ``(id, reason, detail)``
    instead of raising. ``decode_side``: the JPEG draft target (default: ``encoder.min_decode_side``)."""
    try:
        data = load()
    except Exception as exc:  # storage errors must not stop the run
        return (image_id, READ_ERROR, f"{type(exc).__name__}: {exc}")
    try:
        img = decode_rgb(data, target_min_side=decode_side or encoder.min_decode_side)
    except ImageRejected as exc:
        return (image_id, exc.reason, exc.detail)
    try:
        if transform is not None:
            img = transform(image_id, img)
        return encoder.preprocess(img)
    except Exception as exc:
        return (image_id, PREPROCESS_ERROR, f"{type(exc).__name__}: {exc}")


def _prepare_batch(
    encoder: FrozenEncoder, chunk: Sequence[Item], transform: Transform | None = None, decode_side: int | None = None
) -> _Prepared:
    ids: list[str] = []
    tensors: list[torch.Tensor] = []
    failures: list[tuple[str, str, str]] = []
    for image_id, load in chunk:
        out = prepare_one(encoder, image_id, load, transform, decode_side)
        if isinstance(out, tuple):
            failures.append(out)
        else:
            ids.append(image_id)
            tensors.append(out)
    tensor = torch.stack(tensors) if tensors else None
    if tensor is not None and encoder.device.type == "cuda":
        tensor = tensor.pin_memory()
    return _Prepared(ids, tensor, failures, len(chunk))


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _make_tqdm(total: int | None, enabled: bool | None, desc: str = "embedding"):  # type: ignore[no-untyped-def]
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, leave=False)


def iter_embeddings(
    encoder: FrozenEncoder,
    items: Iterable[Item],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressFn | None = None,
    prefetch_batches: int = 2,
    tqdm_bar: bool | None = None,
    transform: Transform | None = None,
    decode_side: int | None = None,
    desc: str = "embedding",
) -> Iterator[EmbeddedBatch]:
    """Embed ``(image_id, load_bytes)`` items; yield one :class:`EmbeddedBatch` per input chunk, in input order.

    ``num_workers`` decode threads (default :func:`default_num_workers`) prepare up to ``num_workers +
    prefetch_batches`` batches ahead while the current batch runs through the encoder. ``progress(n_done, n_total)``
    is called after each batch (``n_total`` is None for unsized iterables); a tqdm bar is shown when stderr is a
    terminal (``tqdm_bar`` forces it on/off; ``desc`` labels it). ``transform(image_id, rgb)`` runs on each decoded
    image before ``encoder.preprocess`` (train-time views), decoded at ``decode_side`` when given. Closing the
    generator early cancels the pending work.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if prefetch_batches < 0:
        raise ValueError(f"prefetch_batches must be >= 0, got {prefetch_batches}")
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    n_total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    bar = _make_tqdm(n_total, tqdm_bar, desc)
    chunks = _chunks(items, batch_size)
    pending: deque[Future[_Prepared]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="skurec-decode")
    n_done = 0
    try:

        def refill() -> None:
            while len(pending) < workers + prefetch_batches:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                pending.append(pool.submit(_prepare_batch, encoder, chunk, transform, decode_side))

        refill()
        while pending:
            prepared = pending.popleft().result()
            refill()  # keep the decode threads busy while this batch runs through the encoder
            if prepared.tensor is not None:
                vectors = encoder.forward_batch(prepared.tensor).numpy().astype(np.float32, copy=False)
            else:
                vectors = np.zeros((0, encoder.dim), dtype=np.float32)
            n_done += prepared.n_items
            for image_id, reason, detail in prepared.failures:
                logger.debug("image %s rejected: %s (%s)", image_id, reason, detail)
            if bar is not None:
                bar.update(prepared.n_items)
            if progress is not None:
                progress(n_done, n_total)
            yield EmbeddedBatch(prepared.ids, vectors, prepared.failures)
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()


def embed_all(encoder: FrozenEncoder, items: Iterable[Item], **kwargs: object) -> EmbeddedBatch:
    """Run :func:`iter_embeddings` to completion and concatenate the batches (convenience for small jobs)."""
    ids: list[str] = []
    vectors = [np.zeros((0, encoder.dim), dtype=np.float32)]
    failures: list[tuple[str, str, str]] = []
    for batch in iter_embeddings(encoder, items, **kwargs):  # type: ignore[arg-type]
        ids.extend(batch.ids)
        vectors.append(batch.vectors)
        failures.extend(batch.failures)
    return EmbeddedBatch(ids, np.concatenate(vectors, axis=0), failures)


def worker_device(requested: str | None, worker_index: int, n_gpus: int | None = None) -> str | None:
    """The device a parallel embedding worker (one hash shard of the catalogue) should use.

    ``requested`` is the encoder's configured device. When it is unset (or a bare ``"cuda"``) and the process sees
    several GPUs, worker ``i`` takes ``cuda:{i % n_gpus}``, so shards embedded at the same time on one multi-GPU
    machine spread over its devices. An explicit device (``"cpu"``, ``"cuda:1"``) is kept as is; with one GPU or
    none the answer is ``requested`` (``None``: :func:`skurec.encoders.base.default_device` picks CUDA or CPU). On a
    pool where each worker is pinned to one GPU (``CUDA_VISIBLE_DEVICES``) every worker sees one device: ``cuda:0``.
    """
    if requested not in (None, "cuda"):
        return requested
    if n_gpus is None:
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus <= 1:
        return requested
    return f"cuda:{worker_index % n_gpus}"
