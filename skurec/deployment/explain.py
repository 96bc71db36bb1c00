"""Why this answer: for each of a prediction's top-k SKUs, the nearest training images of that SKU.

Exemplars are chosen when a model is published (:func:`exemplar_files`): per SKU up to ``per_class`` of its training
images, spread over the class (farthest-point sampling from the image nearest the class mean), stored in the model
bundle as ``exemplars/vectors.safetensors`` (float16) + ``exemplars/index.json`` (image id, SKU, URI of each row). The
model store verifies both against their SHA-256 with every other bundle file, so explanations need neither the
embedding cache nor the catalogue tables. numpy + safetensors only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skurec.layout import BUNDLE_EXEMPLARS_INDEX, BUNDLE_EXEMPLARS_VECTORS

PER_CLASS = 8


def select_exemplars(X: np.ndarray, y: np.ndarray, per_class: int = PER_CLASS) -> np.ndarray:
    """Row indices of up to ``per_class`` exemplars per class: the row nearest the class mean, then repeatedly the
    row farthest (cosine) from those chosen (the class's variety: viewpoints, lighting, packaging states)."""
    out: list[int] = []
    y = np.asarray(y)
    for c in sorted(set(y.tolist())):
        rows = np.flatnonzero(y == c)
        V = X[rows].astype(np.float32)
        mean = V.mean(axis=0)
        chosen = [int(np.argmax(V @ mean))]
        best = V @ V[chosen[0]]
        while len(chosen) < min(per_class, len(rows)):
            j = int(np.argmin(best))
            chosen.append(j)
            best = np.maximum(best, V @ V[j])
        out += rows[chosen].tolist()
    return np.asarray(out, dtype=np.int64)


def exemplar_files(ws: Any, card: Mapping[str, Any], table: Any, per_class: int = PER_CLASS) -> dict[str, bytes]:
    """The exemplar files of a model trained on ``table`` (its training rows), from the embedding cache of the card's
    encoder; ``{}`` when those embeddings are not available (e.g. a model published outside the pipeline)."""
    from safetensors.numpy import save

    from skurec.embeddings.cache import EmbeddingCache

    encoder_id = (card.get("encoder") or {}).get("encoder_id")
    if not encoder_id or table is None or not len(table):
        return {}
    train = table[table["split"] == "train"] if "split" in table else table
    try:
        ids, X = EmbeddingCache(ws).load(encoder_id, [str(i) for i in train["image_id"]])
    except Exception:  # no cache for this encoder (or some rows missing): the model simply has no explanations
        return {}
    y = train["sku_id"].astype(str).to_numpy()
    pick = select_exemplars(X, y, per_class)
    uris: dict[str, str] = {}
    if ws.has_table("images"):
        images = ws.read_table("images", columns=["image_id", "image_uri"])
        uris = dict(zip(images["image_id"].astype(str), images["image_uri"].astype(str)))
    index = [{"image_id": ids[i], "sku_id": str(y[i]), "image_uri": uris.get(ids[i])} for i in pick.tolist()]
    vectors = np.ascontiguousarray(X[pick], dtype=np.float16)
    return {
        BUNDLE_EXEMPLARS_VECTORS: save({"vectors": vectors}),
        BUNDLE_EXEMPLARS_INDEX: json.dumps({"rows": index, "dtype": "float16"}, sort_keys=True).encode("utf-8"),
    }


@dataclass
class Exemplars:
    """Exemplar vectors (n, d) float32 (stored float16) and their rows (image id, SKU, URI)."""

    vectors: np.ndarray
    rows: list[dict[str, Any]]

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> Exemplars | None:
        """The exemplars of a bundle's (already hash-verified) files; None when the model has none."""
        from safetensors.numpy import load

        if BUNDLE_EXEMPLARS_VECTORS not in files or BUNDLE_EXEMPLARS_INDEX not in files:
            return None
        vectors = load(files[BUNDLE_EXEMPLARS_VECTORS])["vectors"].astype(np.float32)
        rows = json.loads(files[BUNDLE_EXEMPLARS_INDEX].decode("utf-8"))["rows"]
        if vectors.ndim != 2 or len(rows) != len(vectors):
            raise ValueError(f"exemplar files disagree: {len(rows)} rows but vectors {vectors.shape}")
        return cls(vectors, rows)

    def __post_init__(self) -> None:
        self._by_sku: dict[str, np.ndarray] = {}
        skus = np.asarray([r["sku_id"] for r in self.rows])
        for s in sorted(set(skus.tolist())):
            self._by_sku[s] = np.flatnonzero(skus == s)

    def nearest(self, emb: np.ndarray, skus: Sequence[str], n: int = 3) -> dict[str, list[dict[str, Any]]]:
        """For each SKU, its ``n`` exemplars most similar (cosine) to the embedding ``emb`` (d,)."""
        q = np.asarray(emb, dtype=np.float32).reshape(-1)
        out: dict[str, list[dict[str, Any]]] = {}
        for s in skus:
            rows = self._by_sku.get(s)
            if rows is None:
                out[s] = []
                continue
            sims = self.vectors[rows] @ q
            order = np.argsort(-sims, kind="stable")[:n]
            out[s] = [{**self.rows[rows[j]], "similarity": round(float(sims[j]), 4)} for j in order]
        return out


def gallery_rows(
    X_eval: np.ndarray,
    y_eval: np.ndarray,
    y_pred: np.ndarray,
    X_train: np.ndarray,
    y_train: np.ndarray,
    skus_of_interest: Sequence[str],
    max_rows: int = 6,
    n: int = 3,
) -> list[dict[str, Any]]:
    """The wrong answers on SKUs of interest (the worst look-alike groups), first ``max_rows`` by the confidence gap,
    each with the ``n`` training images of the predicted and of the true SKU nearest to the query (row indices)."""
    y_eval, y_pred, y_train = (np.asarray(a).astype(str) for a in (y_eval, y_pred, y_train))
    wrong = np.flatnonzero((y_pred != y_eval) & np.isin(y_eval, list(skus_of_interest)))
    rows = []
    for i in wrong[:max_rows].tolist():
        row = {"query": i, "true": y_eval[i], "pred": y_pred[i]}
        for key, sku in (("near_pred", y_pred[i]), ("near_true", y_eval[i])):
            cand = np.flatnonzero(y_train == sku)
            sims = X_train[cand] @ X_eval[i]
            order = np.argsort(-sims, kind="stable")[:n]
            row[key] = [(int(cand[j]), round(float(sims[j]), 3)) for j in order]
        rows.append(row)
    return rows


def error_gallery_png(
    rows: Sequence[Mapping[str, Any]],
    load_eval: Any,
    load_train: Any,
    thumb: int = 96,
    title: str = "Errors in the worst look-alike groups: query | nearest training images of the PREDICTED SKU | of the TRUE SKU",
) -> bytes:
    """PNG grid: one row per error (:func:`gallery_rows`): the query photo, then the nearest training photos of the
    predicted SKU and of the true SKU with their cosine similarity. ``load_eval(i)`` / ``load_train(j)`` return
    image bytes (or None when unreadable: a grey tile)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from skurec.images import decode_rgb

    def tile(data: bytes | None) -> np.ndarray:
        try:
            img = decode_rgb(data, target_min_side=thumb) if data else None
        except Exception:
            img = None
        if img is None:
            return np.full((thumb, thumb, 3), 200, np.uint8)
        img.thumbnail((thumb, thumb))
        out = np.full((thumb, thumb, 3), 255, np.uint8)
        a = np.asarray(img)
        out[: a.shape[0], : a.shape[1]] = a
        return out

    n = max([len(r["near_pred"]) for r in rows] + [1])
    cols = 1 + 2 * n
    fig = Figure(figsize=(1.3 * cols, 1.45 * max(1, len(rows)) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    if not rows:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no error in the worst look-alike groups", ha="center", va="center")
        ax.set_axis_off()
    for r, row in enumerate(rows):
        cells = [(load_eval(row["query"]), f"query: {row['true']}\nanswer: {row['pred']}")]
        cells += [(load_train(j), f"pred {row['pred'][:14]}\n{s:.3f}") for j, s in row["near_pred"]]
        cells += [(load_train(j), f"true {row['true'][:14]}\n{s:.3f}") for j, s in row["near_true"]]
        for c, (data, label) in enumerate(cells):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(tile(data))
            ax.set_title(label, fontsize=5)
            ax.set_axis_off()
    fig.suptitle(title, fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


__all__ = ["Exemplars", "PER_CLASS", "error_gallery_png", "exemplar_files", "gallery_rows", "select_exemplars"]
