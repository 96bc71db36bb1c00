"""Embedding cache: L2-normalised float32 vectors as Parquet, keyed by (image_id, encoder_id).

Layout: ``<workdir>/embeddings/<encoder_id>/part-<time>-<uuid>.parquet``, or, for the embedding of one hash shard
of the catalogue, ``part-s<shard>of<n_shards>-<time>-<uuid>.parquet`` (:func:`shard_of` puts every image id in one
of ``n_shards`` shards; each shard is embedded by its own step and writes and compacts only its own parts, so shards
embedded at the same time on different workers never touch each other's files). Readers take the union of every
part in the folder, sharded or not, so changing the number of shards re-embeds nothing.

Each part is written atomically as soon as ``flush_rows`` vectors are ready, so a run that is killed keeps everything
it flushed and the rerun embeds only what is missing. An image already embedded with the same encoder is never
embedded again. Parts are compacted into one file (per shard) at the end of a run (write the merged part first, then
delete the old ones; readers de-duplicate by image id, so a crash in between loses nothing).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from skurec.layout import EMBEDDINGS_DIR
from skurec.store.workspace import Workspace, parse_parquet, read_uri_bytes

log = logging.getLogger(__name__)

CORRUPT_DIR = "corrupt"
PART_COLUMNS = {"image_id": pa.string(), "encoder_id": pa.string()}


def shard_of(image_id: str, n_shards: int) -> int:
    """The hash shard (0 .. n_shards-1) of an image id: stable across processes, machines and runs (SHA-256, not
    Python's salted ``hash``), so an image always falls in the same shard and a batch of new images touches only the
    shards its ids hash to."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if n_shards == 1:
        return 0
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "big") % n_shards


def shard_column(image_ids: pd.Series, n_shards: int) -> np.ndarray:
    """:func:`shard_of` for a column of ids."""
    return np.fromiter((shard_of(i, n_shards) for i in image_ids), dtype=np.int64, count=len(image_ids))


def shard_tag(shard: int, n_shards: int) -> str:
    """The file-name tag of a shard's parts, e.g. ``s003of008``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    return f"s{shard:03d}of{n_shards:03d}"


def _check_part_schema(table: pa.Table, columns: list[str]) -> None:
    """Raise ValueError unless ``table`` has the part columns asked for, with the right types."""
    for name in columns:
        if name not in table.column_names:
            raise ValueError(f"part lacks column {name!r}")
        typ = table.schema.field(name).type
        if name == "embedding":
            if not (pa.types.is_fixed_size_list(typ) and pa.types.is_floating(typ.value_type)):
                raise ValueError(f"column 'embedding' has type {typ}, expected fixed_size_list<float>")
        elif name in PART_COLUMNS and typ != PART_COLUMNS[name]:
            raise ValueError(f"column {name!r} has type {typ}, expected {PART_COLUMNS[name]}")


@dataclass
class UpdateStats:
    encoder_id: str
    n_requested: int
    n_cached: int
    n_computed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, reason, detail)
    seconds: float = 0.0
    n_parts_written: int = 0

    def as_metadata(self) -> dict:
        return {
            "encoder_id": self.encoder_id,
            "n_requested": self.n_requested,
            "n_already_cached": self.n_cached,
            "n_computed": self.n_computed,
            "n_failed": len(self.failures),
            "seconds": round(self.seconds, 2),
            "images_per_second": round(self.n_computed / self.seconds, 2)
            if self.seconds > 0 and self.n_computed
            else 0.0,
        }


def _safe_dir(encoder_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", encoder_id)


class EmbeddingCache:
    def __init__(self, workspace: Workspace, flush_rows: int = 512):
        self.ws = workspace
        self.flush_rows = flush_rows

    def rel_dir(self, encoder_id: str) -> str:
        return f"{EMBEDDINGS_DIR}/{_safe_dir(encoder_id)}"

    def parts(self, encoder_id: str, shard: tuple[int, int] | None = None) -> list[str]:
        """Relative paths of the complete part files (temporary ``.tmp-*`` files never match): all of them (the
        union of every shard), or only those written for ``shard`` = ``(shard, n_shards)``."""
        tag = "" if shard is None else shard_tag(*shard) + "-"
        return [p for p in self.ws.glob(f"{self.rel_dir(encoder_id)}/part-{tag}*.parquet")]

    def corrupt_dir(self, encoder_id: str) -> str:
        return f"{self.rel_dir(encoder_id)}/{CORRUPT_DIR}"

    def cached_ids(self, encoder_id: str, verify: bool = False) -> set[str]:
        """Ids with a cached vector. ``verify=True`` also reads and checks the vectors (page checksums, one
        dimension across parts), so a part whose vectors are damaged is quarantined here and its images count as
        missing; :meth:`update` verifies, so the embedding run heals a damaged cache instead of training failing."""
        ids: set[str] = set()
        columns = ["image_id", "embedding"] if verify else ["image_id"]
        dim: int | None = None
        for part in self.parts(encoder_id):
            table = self._read_part(encoder_id, part, columns)
            if table is None:
                continue
            if verify:
                part_dim = table.schema.field("embedding").type.list_size
                if dim is not None and part_dim != dim:
                    self._quarantine_part(encoder_id, part, f"vectors have {part_dim} dims, other parts {dim}")
                    continue
                dim = part_dim
            ids.update(table.column("image_id").to_pylist())
        return ids

    def _read_part(self, encoder_id: str, part: str, columns: list[str]) -> pa.Table | None:
        """One part, or None when it is unusable: gone (compacted away by another run) or damaged (truncated,
        not Parquet, wrong columns). A damaged part is moved to ``corrupt/`` with a warning, so it is never read
        again and the images it held are simply embedded again by the next update."""
        try:
            data = self.ws.read_bytes(part)  # storage errors (after retries) propagate: they say nothing of the part
        except FileNotFoundError:
            log.debug("part %s disappeared while reading (compacted by another run)", part)
            return None
        try:
            table = parse_parquet(data, columns)
            _check_part_schema(table, columns)
        except Exception as exc:  # the bytes are not a valid part: truncated, checksum mismatch, wrong schema
            self._quarantine_part(encoder_id, part, f"{type(exc).__name__}: {exc}")
            return None
        return table

    def _quarantine_part(self, encoder_id: str, part: str, why: str) -> None:
        dest = f"{self.corrupt_dir(encoder_id)}/{part.rsplit('/', 1)[-1]}"
        log.warning(
            "embedding cache part %s is damaged (%s); moved to %s, its images will be embedded again", part, why, dest
        )
        try:
            self.ws.move(part, dest)
        except FileNotFoundError:
            pass  # another reader moved it first

    # ------------------------------------------------------------------ write
    def _write_part(
        self, encoder_id: str, ids: list[str], vectors: np.ndarray, shard: tuple[int, int] | None = None
    ) -> str:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        table = pa.table(
            {
                "image_id": pa.array(ids, pa.string()),
                "encoder_id": pa.array([encoder_id] * len(ids), pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            }
        )
        tag = "" if shard is None else shard_tag(*shard) + "-"
        rel = f"{self.rel_dir(encoder_id)}/part-{tag}{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        self.ws.write_parquet(rel, table)
        return rel

    def update(
        self,
        encoder,
        images: pd.DataFrame,
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        storage_options: dict | None = None,
        compact: bool = True,
        shard: tuple[int, int] | None = None,
        verify: bool = True,
        train_view: tuple[int, int] | None = None,
    ) -> UpdateStats:
        """Embed every row of ``images`` (columns image_id, image_uri) not yet cached for ``encoder``.

        ``shard=(s, n_shards)``: only the images of hash shard ``s`` (:func:`shard_of`) are considered; the new
        vectors go to that shard's own parts and only those are compacted, so the shards can be embedded at the same
        time by different processes or machines. ``verify=False`` reads only the cached ids (not the vectors): for a
        shard step after :meth:`plan_shards` verified the whole cache in the same run.

        ``train_view=(j, seed)``: embed train-time view ``j`` (:func:`skurec.encoders.views.train_view`, then the
        encoder's ordinary preprocessing) of each image instead of the image itself, under
        :func:`~skurec.encoders.views.view_encoder_id` (its own folder, keyed by the ordinary image id): every
        ``(image, view, seed)`` is embedded once, like a plain vector."""
        from skurec.embeddings.encode import iter_embeddings

        encoder_id = encoder.encoder_id
        view_kwargs: dict = {}
        if train_view is not None:
            from skurec.encoders.views import train_view as make_view
            from skurec.encoders.views import train_view_decode_side, view_encoder_id

            j, seed = int(train_view[0]), int(train_view[1])
            encoder_id = view_encoder_id(encoder.encoder_id, j, seed)
            view_kwargs = {
                "transform": lambda image_id, img: make_view(img, j, seed, image_id),
                "decode_side": train_view_decode_side(encoder.min_decode_side),
                "desc": f"embedding train view {j}",
            }
        wanted = images.drop_duplicates("image_id")
        if shard is not None:
            wanted = wanted[shard_column(wanted["image_id"], shard[1]) == shard[0]]
        cached = self.cached_ids(encoder_id, verify=verify)
        missing = wanted[~wanted["image_id"].isin(cached)]
        stats = UpdateStats(encoder_id=encoder_id, n_requested=len(wanted), n_cached=len(wanted) - len(missing))
        if missing.empty:
            return stats
        t0 = time.perf_counter()
        items = [
            (row.image_id, (lambda uri=row.image_uri: read_uri_bytes(uri, storage_options=storage_options)))
            for row in missing.itertuples()
        ]
        buf_ids: list[str] = []
        buf_vecs: list[np.ndarray] = []

        def flush() -> None:
            if buf_ids:
                self._write_part(encoder_id, list(buf_ids), np.concatenate(buf_vecs), shard=shard)
                stats.n_parts_written += 1
                buf_ids.clear()
                buf_vecs.clear()

        batches = iter_embeddings(
            encoder, items, batch_size=batch_size, num_workers=num_workers, progress=progress, **view_kwargs
        )
        for batch in batches:
            stats.failures.extend(batch.failures)
            if len(batch.ids):
                buf_ids.extend(batch.ids)
                buf_vecs.append(batch.vectors)
                stats.n_computed += len(batch.ids)
            if len(buf_ids) >= self.flush_rows:
                flush()
        flush()
        stats.seconds = time.perf_counter() - t0
        if compact:
            self.compact(encoder_id, shard=shard)
        return stats

    def plan_shards(self, encoder_id: str, images: pd.DataFrame, n_shards: int) -> dict[int, dict[str, int]]:
        """For each hash shard: ``{"n_images": ..., "n_missing": ...}`` (images of the shard, and those without a
        cached vector for ``encoder_id``). Verifies the cached vectors like :meth:`update` (a damaged part is
        quarantined here, its images count as missing), so the shard steps that follow can skip the verification."""
        wanted = images.drop_duplicates("image_id")
        shards = shard_column(wanted["image_id"], n_shards)
        cached = wanted["image_id"].isin(self.cached_ids(encoder_id, verify=True)).to_numpy()
        out = {s: {"n_images": 0, "n_missing": 0} for s in range(n_shards)}
        values, counts = np.unique(shards, return_counts=True)
        for s, m in zip(values.tolist(), counts.tolist()):
            out[int(s)]["n_images"] = int(m)
        for s in shards[~cached]:
            out[int(s)]["n_missing"] += 1
        return out

    def compact(self, encoder_id: str, shard: tuple[int, int] | None = None) -> None:
        """Merge the parts into one: write the merged part first, then delete exactly the parts it was read from
        (a part written meanwhile by another run is kept; a crash in between only leaves duplicates, which readers
        drop). Also removes temporary files left by killed writers. With ``shard`` only that shard's parts are
        merged (into one part of that shard): shard steps running at the same time never delete each other's parts."""
        self.ws.remove_stale_temp_files(self.rel_dir(encoder_id))
        parts = self.parts(encoder_id, shard=shard)
        if len(parts) <= 1:
            return
        ids, X, used = self._read_all(encoder_id, parts)
        if ids:
            self._write_part(encoder_id, ids, X, shard=shard)
        for p in used:
            self.ws.delete(p)

    # ------------------------------------------------------------------ read
    def _read_all(self, encoder_id: str, parts: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
        """(ids, vectors, parts actually read), first occurrence of an id wins; unusable parts are skipped."""
        ids: list[str] = []
        blocks: list[np.ndarray] = []
        used: list[str] = []
        seen: set[str] = set()
        dim: int | None = None
        for part in parts:
            t = self._read_part(encoder_id, part, ["image_id", "embedding"])
            if t is None:
                continue
            part_ids = t.column("image_id").to_pylist()
            emb = t.column("embedding").combine_chunks()
            if dim is None:
                dim = emb.type.list_size
            elif emb.type.list_size != dim:
                self._quarantine_part(encoder_id, part, f"vectors have {emb.type.list_size} dims, other parts {dim}")
                continue
            vecs = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
            keep = [k for k, i in enumerate(part_ids) if i not in seen]
            seen.update(part_ids)
            ids.extend(part_ids[k] for k in keep)
            blocks.append(vecs[keep])
            used.append(part)
        if not blocks:
            return [], np.zeros((0, 0), np.float32), used
        return ids, np.concatenate(blocks).astype(np.float32, copy=False), used

    def load(self, encoder_id: str, image_ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        """Vectors for ``image_ids`` in that order (all cached vectors when None). Missing ids raise KeyError."""
        ids, X, _ = self._read_all(encoder_id, self.parts(encoder_id))
        if image_ids is None:
            return ids, X
        index = {i: k for k, i in enumerate(ids)}
        missing = [i for i in image_ids if i not in index]
        if missing:
            raise KeyError(
                f"{len(missing)} image(s) have no cached embedding for {encoder_id}, e.g. {missing[:3]}; "
                "materialise image_embeddings first"
            )
        return list(image_ids), X[[index[i] for i in image_ids]]
