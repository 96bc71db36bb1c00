"""The parallel embedding pipeline (tiny RANDOM ViT): order, ids, failures, equivalence with the naive loop."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from skurec.embeddings.encode import READ_ERROR, EmbeddedBatch, embed_all, iter_embeddings
from skurec.encoders import load_encoder
from skurec.images import decode_rgb


def _jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_rgba(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (30, 50, 4), dtype=np.uint8), "RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _const(data: bytes) -> Callable[[], bytes]:
    return lambda: data


@pytest.fixture(scope="module")
def encoder():  # type: ignore[no-untyped-def]
    return load_encoder("tiny_random_vit", device="cpu")


def _naive(encoder, blobs: list[bytes]) -> np.ndarray:  # type: ignore[no-untyped-def]
    rows = []
    for data in blobs:
        x = encoder.preprocess(decode_rgb(data, target_min_side=encoder.min_decode_side))
        rows.append(encoder.forward_batch(x[None]).numpy()[0])
    return np.stack(rows)


@pytest.mark.parametrize("batch_size,num_workers", [(4, 1), (3, 2), (32, 1), (1, 3)])
def test_same_vectors_and_order_as_naive_loop(encoder, batch_size: int, num_workers: int) -> None:  # type: ignore[no-untyped-def]
    blobs = [_jpeg(i, size=(40 + 3 * i, 36 + i)) for i in range(10)] + [_png_rgba(99)]
    items = [(f"img-{i}", _const(b)) for i, b in enumerate(blobs)]
    batches = list(iter_embeddings(encoder, items, batch_size=batch_size, num_workers=num_workers, tqdm_bar=False))
    assert all(isinstance(b, EmbeddedBatch) for b in batches)
    assert len(batches) == -(-len(items) // batch_size)  # ceil: batch sizes that don't divide n
    ids = [i for b in batches for i in b.ids]
    assert ids == [f"img-{i}" for i in range(len(blobs))]
    got = np.concatenate([b.vectors for b in batches])
    assert got.dtype == np.float32 and got.shape == (len(blobs), encoder.dim)
    np.testing.assert_allclose(got, _naive(encoder, blobs), rtol=1e-4, atol=1e-5)
    assert not any(b.failures for b in batches)


def test_failures_are_reported_and_do_not_stop_the_run(encoder) -> None:  # type: ignore[no-untyped-def]
    good = [_jpeg(i) for i in range(5)]
    full = _jpeg(50)
    truncated = full[: len(full) // 2]

    def unreadable() -> bytes:
        raise FileNotFoundError("s3://bucket/missing.jpg")

    items = [
        ("g0", _const(good[0])),
        ("empty", _const(b"")),
        ("g1", _const(good[1])),
        ("text", _const(b"this is not an image at all")),
        ("g2", _const(good[2])),
        ("truncated", _const(truncated)),
        ("missing", unreadable),
        ("g3", _const(good[3])),
        ("g4", _const(good[4])),
    ]
    result = embed_all(encoder, items, batch_size=2, num_workers=2, tqdm_bar=False)
    assert result.ids == ["g0", "g1", "g2", "g3", "g4"]
    reasons = {image_id: reason for image_id, reason, _detail in result.failures}
    assert reasons == {
        "empty": "empty_file",
        "text": "not_an_image",
        "truncated": "corrupt_image",
        "missing": READ_ERROR,
    }
    assert all(detail for _i, _r, detail in result.failures)
    np.testing.assert_allclose(result.vectors, _naive(encoder, good), rtol=1e-4, atol=1e-5)


def test_batch_with_only_failures_still_yields_its_failures(encoder) -> None:  # type: ignore[no-untyped-def]
    items = [("bad1", _const(b"x")), ("bad2", _const(b"")), ("ok", _const(_jpeg(1)))]
    batches = list(iter_embeddings(encoder, items, batch_size=2, tqdm_bar=False))
    assert batches[0].ids == [] and batches[0].vectors.shape == (0, encoder.dim)
    assert [f[0] for f in batches[0].failures] == ["bad1", "bad2"]
    assert batches[1].ids == ["ok"]


def test_progress_callback_and_generator_input(encoder) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[int, int | None]] = []
    items = [(str(i), _const(_jpeg(i))) for i in range(7)]
    list(iter_embeddings(encoder, items, batch_size=3, progress=lambda d, t: calls.append((d, t)), tqdm_bar=False))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    calls.clear()
    gen = (item for item in items)  # unsized iterable: total unknown
    out = list(iter_embeddings(encoder, gen, batch_size=4, progress=lambda d, t: calls.append((d, t)), tqdm_bar=False))
    assert calls == [(4, None), (7, None)] and sum(len(b.ids) for b in out) == 7


def test_decoding_runs_ahead_in_worker_threads(encoder) -> None:  # type: ignore[no-untyped-def]
    """Loads happen off the calling thread and a few batches ahead of the consumer (prefetch)."""
    main = threading.get_ident()
    loaded: list[int] = []
    lock = threading.Lock()

    def loader(i: int) -> Callable[[], bytes]:
        def load() -> bytes:
            assert threading.get_ident() != main
            with lock:
                loaded.append(i)
            return _jpeg(i)

        return load

    gen = iter_embeddings(
        encoder,
        [(str(i), loader(i)) for i in range(40)],
        batch_size=4,
        num_workers=1,
        prefetch_batches=2,
        tqdm_bar=False,
    )
    first = next(gen)
    assert first.ids == ["0", "1", "2", "3"]
    # While the first batch was embedded, up to (workers + prefetch) batches were queued; none beyond that.
    with lock:
        n_loaded = len(loaded)
    assert 4 <= n_loaded <= 4 * (1 + 1 + 2)
    gen.close()  # stopping early cancels the rest
    assert len(loaded) < 40


def test_invalid_arguments(encoder) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_embeddings(encoder, [], batch_size=0))
    with pytest.raises(ValueError, match="num_workers"):
        list(iter_embeddings(encoder, [], num_workers=0))
    assert list(iter_embeddings(encoder, [], tqdm_bar=False)) == []


def test_flip_encoder_through_pipeline_matches_naive(encoder) -> None:  # type: ignore[no-untyped-def]
    flip = load_encoder("tiny_random_vit", device="cpu", views="flip")
    blobs = [_jpeg(i) for i in range(5)]
    result = embed_all(flip, [(str(i), _const(b)) for i, b in enumerate(blobs)], batch_size=2, tqdm_bar=False)
    np.testing.assert_allclose(result.vectors, _naive(flip, blobs), rtol=1e-4, atol=1e-5)
    assert not np.allclose(result.vectors, _naive(encoder, blobs), atol=1e-3)
