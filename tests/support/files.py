"""Test data on disk: generated images, folder catalogues and snapshots of a tree (shared by the test packages)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: int = 40, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small distinct image: colour blocks derived from ``seed``."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((4, 4, 3)) * 255).astype("uint8")
    img = Image.fromarray(arr, "RGB").resize((size, size), Image.NEAREST)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_folder_catalogue(root: Path, counts: dict[str, int], seed0: int = 0) -> Path:
    """ROOT/<sku>/<i>.png with distinct images; returns root."""
    seed = seed0
    for sku, n in counts.items():
        d = root / sku
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"{i:03d}.png").write_bytes(image_bytes(seed))
            seed += 1
    return root


def snapshot_tree(root: Path) -> dict[str, tuple[int, float, bytes]]:
    """Every file under root with size, mtime and bytes: to prove inputs were not modified."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime, p.read_bytes())
    return out
