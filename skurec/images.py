"""Safe image decoding shared by the audit (validation) and the embedding pipeline.

Every image that enters skurec goes through :func:`decode_rgb` or :func:`inspect_image`, so colour modes,
decompression bombs and corrupt files are handled in exactly one place. Failures raise
:class:`ImageRejected` whose ``reason`` is a short machine-readable code stored in the quarantine table.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

# Reject images that declare more pixels than this *before* decoding them (decompression bombs).
MAX_PIXELS = 64_000_000
# Images smaller than this on either side carry no usable signal for a product photo.
MIN_SIDE = 8

_WARNINGS_LOCK = threading.Lock()

_SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}


_ADDRESS = re.compile(r"<(_io\.BytesIO|[\w.]+) object at 0x[0-9a-fA-F]+>")


def _describe(exc: BaseException) -> str:
    """``Type: message`` without memory addresses (PIL names the ``BytesIO`` it read), so the same bad file always
    gets the same quarantine detail."""
    return f"{type(exc).__name__}: {_ADDRESS.sub('the image bytes', str(exc))}"


class ImageRejected(ValueError):
    """An image that cannot be used; ``reason`` is the quarantine code, ``detail`` the human text."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str


def sha256_bytes(data: bytes) -> str:
    """The image id: SHA-256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()


_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes) -> bool:
    """True when the bytes start with the signature of an image format we read (so a failure means corruption)."""
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _open(data: bytes) -> Image.Image:
    if len(data) == 0:
        raise ImageRejected("empty_file", "the file has zero bytes")
    try:
        # catch_warnings swaps process-global state: the lock keeps the audit's reader threads from restoring each
        # other's filters in the wrong order (Image.open only parses the header, so this serialises little).
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        if looks_like_image(data):
            raise ImageRejected("corrupt_image", f"image file is damaged or truncated ({_describe(exc)})") from exc
        raise ImageRejected(
            "not_an_image",
            f"the {len(data)} bytes are not an image in a supported format ({', '.join(sorted(_SUPPORTED_FORMATS))})",
        ) from exc
    if img.format not in _SUPPORTED_FORMATS:
        raise ImageRejected("unsupported_format", f"format {img.format!r} is not supported")
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageRejected("decompression_bomb", f"declared size {w}x{h} exceeds {MAX_PIXELS} pixels")
    if min(w, h) < MIN_SIDE:
        raise ImageRejected("too_small", f"image is {w}x{h}; each side must be at least {MIN_SIDE} px")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (RGBA, LA, P, CMYK, I;16, L, ...) to 8-bit RGB."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range instead of clipping.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.astype("uint8"), mode="L").convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes, target_min_side: int | None = None) -> Image.Image:
    """Decode bytes to an 8-bit RGB image, fully loaded.

    ``target_min_side`` lets JPEG decoding use libjpeg's DCT scaling (``Image.draft``) so that an image much larger
    than the model input is decoded at a fraction of the cost; the result's shorter side stays >= that value.
    """
    img = _open(data)
    try:
        if target_min_side and img.format in ("JPEG", "MPO"):
            w, h = img.size
            scale = min(w, h) / float(target_min_side)
            if scale >= 2:
                img.draft("RGB", (max(1, int(w / scale)), max(1, int(h / scale))))
        img.load()
        return _to_rgb(img)
    except ImageRejected:
        raise
    except Exception as exc:
        raise ImageRejected("corrupt_image", f"decoding failed ({_describe(exc)})") from exc


def inspect_image(data: bytes) -> ImageInfo:
    """Validate that bytes decode to a usable image (cheaply, at reduced size for JPEG) and describe it."""
    img = _open(data)
    info = ImageInfo(width=img.size[0], height=img.size[1], mode=img.mode, format=str(img.format))
    decode_rgb(data, target_min_side=32)
    return info


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def crop_normalize(
    img: Image.Image,
    resize_size: int,
    input_size: int,
    interpolation: str,
    mean: tuple[float, float, float] | list[float],
    std: tuple[float, float, float] | list[float],
):
    """An encoder's preprocessing, numpy + PIL only (the Recognizer's encoders and the edge runner share it): resize
    the shorter side to ``resize_size``, centre crop ``input_size``, scale to [0, 1] and normalise -> ``(3, S, S)``
    float32 array. Computed as ``x * (1 / (255 std)) + (-mean / std)`` in float32."""
    import numpy as np

    w, h = img.size
    short = int(resize_size)
    if w <= h:
        new_w, new_h = short, max(short, int(short * h / w))
    else:
        new_w, new_h = max(short, int(short * w / h)), short
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _RESAMPLE[interpolation])
    s = int(input_size)
    left = int(round((new_w - s) / 2.0))
    top = int(round((new_h - s) / 2.0))
    img = img.crop((left, top, left + s, top + s))
    std64 = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std64)).astype(np.float32)
    shift = (-np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)
    out = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)).astype(np.float32)
    out *= scale[:, None, None]  # (x / 255 - mean) / std  ==  x * scale + shift, in place (~6x faster)
    out += shift[:, None, None]
    return out
