"""Small matplotlib plots for reports a person reads (PNG bytes; the caller decides where they go)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def class_count_histogram_png(counts: list[int], min_samples: int, title: str = "Images per class") -> bytes:
    """Histogram of images per class with the minimum-sample threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if counts:
        ax.hist(counts, bins=min(40, max(5, len(set(counts)))), color="#4C72B0", edgecolor="white")
    ax.axvline(min_samples, color="#C44E52", linestyle="--", label=f"min_samples = {min_samples}")
    ax.set_xlabel("images per class")
    ax.set_ylabel("classes")
    ax.set_title(title)
    ax.legend()
    return _png(fig)
