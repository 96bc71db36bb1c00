"""Any image input -> an RGB PIL image, exactly as the Recognizer decodes it (numpy + Pillow only)."""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

from skurec.images import ImageRejected, decode_rgb

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


def as_rgb(
    image: ImageInput, min_side: int, error: type[Exception] = ValueError
) -> tuple[Image.Image, bytes | None, str | None]:
    """Decode any supported input into an RGB PIL image; returns (image, raw bytes if any, display name)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise error(f"cannot read image {path!r}: {exc}") from exc
        return _decode(data, min_side, path, error), data, path
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return _decode(data, min_side, "<bytes>", error), data, None
    if isinstance(image, Image.Image):
        return (image if image.mode == "RGB" else image.convert("RGB")), None, None
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise error(f"a numpy image must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        img = Image.fromarray(np.ascontiguousarray(arr))
        return (img if img.mode == "RGB" else img.convert("RGB")), None, None
    raise error(f"unsupported image input {type(image).__name__}; pass a path, bytes, a PIL image or a numpy array")


def _decode(data: bytes, min_side: int, name: str, error: type[Exception]) -> Image.Image:
    try:
        return decode_rgb(data, target_min_side=min_side)
    except ImageRejected as exc:
        raise error(f"{name} is not a usable image: {exc.reason} ({exc.detail})") from exc


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
