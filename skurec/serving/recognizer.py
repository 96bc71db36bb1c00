"""Real-time recognition: image -> top-k SKUs with scores and superclass, or ``unknown`` when not confident.

:class:`Recognizer` loads a published model (by default the deployed one) and the frozen encoder named in its
model card, once; every call then only decodes the image (JPEG DCT-domain downscaling via ``Image.draft``),
preprocesses it, runs the encoder under ``torch.inference_mode`` and the classifier on one embedding. There is no
file or network I/O per call beyond reading the image itself, so the recogniser adds a fraction of a millisecond to
the encoder's own latency (``benchmarks/latency.py`` measures it).

Predictions whose top-1 score (the hierarchical model's ``p(superclass) * p(SKU | superclass)``) is below
``threshold`` (default: the model's threshold calibrated on its validation split, see
:func:`skurec.deployment.calibration.calibrate_threshold`) are flagged ``unknown`` instead of guessed;
:class:`skurec.serving.review_queue.ReviewQueue` collects them so a person can label them and drop them back in as a batch.
No Dagster import here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from skurec.deployment.bundle import load_published
from skurec.deployment.scoring import ScoreGraph, ScoringUnsupported, graph_disagreement, score_arrays
from skurec.edge.decide import UNKNOWN, decide, fuse_track
from skurec.edge.inputs import ImageInput, as_rgb, encode_png
from skurec.images import sha256_bytes
from skurec.store.model_store import ModelStore
from skurec.store.workspace import Workspace, is_remote

DEFAULT_THRESHOLD = 0.5
logger = logging.getLogger("skurec.serving")


class RecognizerError(RuntimeError):
    """The recogniser cannot be built (no deployed model, encoder mismatch) or an input is not an image."""


@dataclass
class Recognition:
    """One image's result. ``label`` is the top-1 SKU id, or ``"unknown"`` when ``score < threshold``."""

    label: str
    sku_id: str | None  # top-1 SKU id even when unknown (the best guess, for the review queue); None if no candidate
    score: float
    unknown: bool
    superclass: int
    top_k: list[dict[str, Any]]
    model_id: str
    threshold: float
    image: str | None = None
    image_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    queued_for_review: bool | None = None  # set when a review queue was given: was this image queued?

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        if d["queued_for_review"] is None:
            d.pop("queued_for_review")
        return d


def _as_rgb(image: ImageInput, min_side: int) -> tuple[Image.Image, bytes | None, str | None]:
    """Decode any supported input into an RGB PIL image (the edge runner's decoder: one code path for both)."""
    return as_rgb(image, min_side, RecognizerError)


class Recognizer:
    """A loaded model + encoder that maps images to SKUs. Build it with :meth:`from_workdir` (or inject both)."""

    def __init__(
        self,
        model: Any,
        card: dict,
        encoder: Any,
        *,
        top_k: int = 3,
        threshold: float | None = None,
        m: int | None = None,
        model_id: str | None = None,
        exemplars: Any | None = None,
    ):
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.recognition: dict[str, Any] = dict(card.get("recognition") or {})
        if threshold is None:  # the model's calibrated threshold (see skurec.deployment.calibration)
            threshold = self.recognition.get("threshold")
            threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        if self.recognition.get("unknown_score", "max_prob") == "max_prob" and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        want = (card.get("encoder") or {}).get("encoder_id")
        if want and encoder.encoder_id != want:
            raise RecognizerError(
                f"model {model_id or card.get('model_id')} was trained on embeddings of encoder {want} but the encoder "
                f"given is {encoder.encoder_id}; load the encoder named in the model card"
            )
        if getattr(model, "dim", encoder.dim) != encoder.dim:
            raise RecognizerError(f"model expects {model.dim}-d embeddings but the encoder produces {encoder.dim}-d")
        self.model = model
        self.card = card
        self.encoder = encoder
        self.top_k = int(top_k)
        self.threshold = float(threshold)
        self.m = m
        self.model_id = model_id or card.get("model_id", "")
        self.names: dict[str, str] = dict((card.get("classes") or {}).get("names") or {})
        self.exemplars = exemplars  # skurec.deployment.explain.Exemplars (nearest training images per SKU) or None
        self._min_side = int(encoder.min_decode_side)
        try:  # every SKU's score as one torch graph (what the edge bundle exports); None: the model's predict_topk
            self.graph: ScoreGraph | None = ScoreGraph(model, m)
        except ScoringUnsupported:
            self.graph = None
        if self.graph is not None:
            why = graph_disagreement(self.graph, model)
            if why is not None:  # a model whose scoring changed without skurec.deployment.scoring: answer as before
                logger.warning(
                    "score graph of %s disagrees with its predict_topk (%s): answering with predict_topk, without "
                    "calibration, explanations of the full posterior or edge export",
                    self.model_id,
                    why,
                )
                self.graph = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_workdir(
        cls,
        workdir: str | os.PathLike | Workspace,
        model_id: str | None = None,
        *,
        device: str | None = "cpu",
        encoder: Any | None = None,
        checkpoint: str | None = None,
        top_k: int = 3,
        threshold: float | None = None,
        m: int | None = None,
        storage_options: dict | None = None,
    ) -> Recognizer:
        """Load ``model_id`` (default: the deployed model) and the encoder its card names.

        ``checkpoint``: local weights for checkpoint-based encoders (``dinov2_vits14``, ``timm:<arch>``; default
        ``$SKUREC_ENCODER_CHECKPOINT``). ``encoder``: an already loaded encoder (must have the card's encoder id).
        ``threshold``: top-1 score below which the answer is ``unknown``; default: the threshold calibrated on the
        validation split when the model was published (model card ``recognition.threshold``), else 0.5.
        Only reads: a missing work directory, or one without a deployed model, raises :class:`RecognizerError` naming
        the path and the command that builds one; nothing is created.
        """
        ws = workdir if isinstance(workdir, Workspace) else _existing_workspace(workdir, storage_options)
        store = ModelStore(ws)
        model_id = model_id or store.deployed_id()
        if model_id is None:
            raise RecognizerError(
                f"no model is deployed in {ws.root_uri}; deploy one with `skurec run --workdir {ws.root_uri}` (a new "
                f"work directory: `skurec demo --workdir {ws.root_uri}`), or pass a model id"
            )
        published = load_published(ws, model_id, device=device or "cpu")
        if encoder is None:
            encoder = load_encoder_for_card(published.card, device=device, checkpoint=checkpoint)
        return cls(
            published.model,
            published.card,
            encoder,
            top_k=top_k,
            threshold=threshold,
            m=m,
            model_id=model_id,
            exemplars=published.exemplars,
        )

    # ------------------------------------------------------------------ inference
    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """``(n, dim)`` L2-normalised embeddings of the images (one batched forward)."""
        tensors = [self.encoder.preprocess(_as_rgb(im, self._min_side)[0]) for im in images]
        if not tensors:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return self.encoder.forward_batch(torch.stack(tensors)).numpy()

    def explain(self, emb: np.ndarray, rec: Recognition, n: int = 3) -> dict[str, list[dict[str, Any]]]:
        """For each of ``rec``'s top-k SKUs, its ``n`` training exemplars nearest to the embedding ``emb`` (d,):
        ``{sku_id: [{image_id, sku_id, image_uri, similarity}, ...]}``."""
        if self.exemplars is None:
            raise RecognizerError(
                f"model {self.model_id} has no exemplars (published without cached training embeddings); "
                "explanations need a model published by the pipeline"
            )
        return self.exemplars.nearest(emb, [t["sku_id"] for t in rec.top_k], n)

    def predict(self, image: ImageInput, review_queue: Any | None = None, explain: bool | int = False) -> Recognition:
        """Recognise one image. With ``review_queue``, an ``unknown`` result is also queued for labelling; with
        ``explain`` (True or the number of exemplars per SKU), ``extra["explanations"]`` holds the nearest training
        images of each top-k SKU (:meth:`explain`)."""
        img, data, name = _as_rgb(image, self._min_side)
        x = self.encoder.preprocess(img).unsqueeze(0)
        emb = self.encoder.forward_batch(x).numpy()
        rec = self._results(emb, [name], [data])[0]
        if explain:
            rec.extra["explanations"] = self.explain(emb[0], rec, 3 if explain is True else int(explain))
        if review_queue is not None:
            rec.queued_for_review = bool(rec.unknown)
            if rec.unknown:
                review_queue.add(rec, data if data is not None else encode_png(img))
        return rec

    def predict_many(
        self, images: Sequence[ImageInput], batch_size: int = 32, review_queue: Any | None = None
    ) -> list[Recognition]:
        """Recognise many images with batched forward passes (throughput mode)."""
        out: list[Recognition] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            decoded = [_as_rgb(im, self._min_side) for im in chunk]
            x = torch.stack([self.encoder.preprocess(img) for img, _, _ in decoded])
            emb = self.encoder.forward_batch(x).numpy()
            recs = self._results(emb, [n for _, _, n in decoded], [d for _, d, _ in decoded])
            if review_queue is not None:
                for rec, (img, data, _) in zip(recs, decoded):
                    rec.queued_for_review = bool(rec.unknown)
                    if rec.unknown:
                        review_queue.add(rec, data if data is not None else encode_png(img))
            out.extend(recs)
        return out

    def scores(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """The score graph's outputs (``log_scores``, ``energy``, ``distance``) for ``(n, d)`` embeddings."""
        if self.graph is None:
            raise RecognizerError(f"model kind {getattr(self.model, 'KIND', '?')} has no score graph")
        return score_arrays(self.graph, np.ascontiguousarray(emb, dtype=np.float32))

    def _decide(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        sc = getattr(self.model, "sc_of_index", None)
        return decide(
            outputs,
            self.model.classes,
            None if sc is None else sc.tolist(),
            self.recognition,
            self.top_k,
            self.threshold,
            self.graph.info.score_is_log,
            self.names,
        )

    def predict_track(self, frames: Sequence[ImageInput]) -> Recognition:
        """Several frames of one product (the cart moving past it) -> one answer from the fused evidence: the sum of
        the frames' calibrated log-posteriors, the unknown decision made on the fused score."""
        if not frames:
            raise RecognizerError("a track needs at least one frame")
        emb = self.embed(frames)
        ans = self._decide(fuse_track(self.scores(emb), self.recognition))[0]
        ans.pop("unknown_score")
        return Recognition(**ans, model_id=self.model_id, threshold=self.threshold, extra={"n_frames": len(frames)})

    def answer_embeddings(self, emb: np.ndarray) -> list[Recognition]:
        """The answers for embeddings already computed with this Recognizer's encoder (``embed``): what
        ``predict_many`` returns for the images, without decoding or embedding them again."""
        return self._results(emb, [None] * len(emb), [None] * len(emb))

    def _results(
        self, emb: np.ndarray, names: Sequence[str | None], datas: Sequence[bytes | None]
    ) -> list[Recognition]:
        if self.graph is not None:
            out = []
            for i, ans in enumerate(self._decide(self.scores(emb))):
                ans.pop("unknown_score")
                iid = sha256_bytes(datas[i]) if datas[i] is not None else None
                out.append(
                    Recognition(**ans, model_id=self.model_id, threshold=self.threshold, image=names[i], image_id=iid)
                )
            return out
        kwargs = {} if self.m is None else {"m": self.m}
        pred = self.model.predict_topk(emb, k=self.top_k, **kwargs)
        sc = pred.superclass if pred.superclass is not None else np.full(len(emb), -1)
        out = []
        for i in range(len(emb)):
            top = [
                {
                    "sku_id": str(lab),
                    "score": round(float(s), 6),
                    **({"sku_name": self.names[lab]} if lab in self.names else {}),
                }
                for lab, s in zip(pred.labels[i].tolist(), pred.scores[i].tolist())
                if lab
            ]
            best = top[0] if top else None
            score = best["score"] if best else 0.0
            unknown = best is None or score < self.threshold
            out.append(
                Recognition(
                    label=UNKNOWN if unknown else best["sku_id"],
                    sku_id=best["sku_id"] if best else None,
                    score=score,
                    unknown=unknown,
                    superclass=int(sc[i]),
                    top_k=top,
                    model_id=self.model_id,
                    threshold=self.threshold,
                    image=names[i],
                    image_id=sha256_bytes(datas[i]) if datas[i] is not None else None,
                )
            )
        return out


def _existing_workspace(workdir: str | os.PathLike, storage_options: dict | None) -> Workspace:
    """The work directory to read from. A reader never creates one: a local path that is not a folder is refused,
    naming the path and how to build a work directory."""
    root = os.fspath(workdir)
    if not is_remote(root) and not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise RecognizerError(
            f"work directory {root} {what}; build one with `skurec demo --workdir {root}` (add --catalogue PATH for "
            "your own catalogue), or point to the one `skurec demo` / `skurec run` built"
        )
    return Workspace(root, storage_options=storage_options)


def load_encoder_for_card(card: dict, device: str | None = "cpu", checkpoint: str | None = None) -> Any:
    """The frozen encoder a model card names, verified to have the same encoder id (weights hash + options)."""
    from skurec.encoders import load_encoder, recorded_checkpoint, takes_checkpoint

    ident = card.get("encoder") or {}
    name = ident.get("name")
    if not name:
        raise RecognizerError(f"model card of {card.get('model_id')} names no encoder; it cannot be served")
    opts = {k: v for k, v in (ident.get("options") or {}).items() if k in ("views", "input_size", "crop_pct", "layers")}
    if checkpoint is None and takes_checkpoint(name):  # the file recorded when the training embeddings were made
        checkpoint = recorded_checkpoint(ident)
    enc = load_encoder(name, checkpoint=checkpoint, device=device, **opts)
    if ident.get("encoder_id") and enc.encoder_id != ident["encoder_id"]:
        raise RecognizerError(
            f"the model was trained with encoder {ident['encoder_id']} (weights sha256 {str(ident.get('weights_sha256'))[:16]}...) "
            f"but loading {name!r} here gives {enc.encoder_id}; pass the same checkpoint file (--checkpoint / "
            "SKUREC_ENCODER_CHECKPOINT) that produced the training embeddings"
        )
    return enc
