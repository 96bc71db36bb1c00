"""The edge runner: image -> SKUs (or ``unknown``) from a verified bundle, with onnxruntime, numpy and Pillow only.

Preprocessing is the encoders' own numpy/PIL function (:func:`skurec.images.crop_normalize`, same decode with
JPEG draft scaling), and the answer is made by :func:`skurec.edge.decide.decide`, the function the Recognizer
uses, so both print the same JSON for the same image (the exporter checks it on every validation image).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from skurec.edge.bundle import CLASSIFIER_ONNX, ENCODER_ONNX, BundleError, EdgeBundle, load_bundle
from skurec.edge.decide import decide, fuse_track
from skurec.edge.inputs import ImageInput, as_rgb, encode_png
from skurec.images import crop_normalize, sha256_bytes


class EdgeInputError(ValueError):
    """An input is not a usable image."""


def _dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in shape]


class EdgeRunner:
    """A loaded bundle. ``threads``: onnxruntime intra-op threads (1 = one core, the cart's budget)."""

    def __init__(
        self,
        bundle: str | os.PathLike | EdgeBundle,
        *,
        threads: int = 1,
        top_k: int = 3,
        threshold: float | None = None,
    ):
        import onnxruntime as ort

        self.bundle = bundle if isinstance(bundle, EdgeBundle) else load_bundle(bundle)
        b = self.bundle
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.encoder = ort.InferenceSession(b.path(ENCODER_ONNX), opts, providers=["CPUExecutionProvider"])
            self.classifier = ort.InferenceSession(b.path(CLASSIFIER_ONNX), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"{b.root}: onnxruntime cannot load the bundle's models: {exc}") from exc
        self._check_shapes()
        self.classes = b.classes
        self.names: dict[str, str] = dict(b.labels.get("names") or {})
        self.tiers: dict[str, str] = dict(b.labels.get("tiers") or {})  # sku -> catalogue tier (head / tail)
        self.superclass_of_class = b.labels.get("superclass_of_class")
        self.score_is_log = bool(b.labels.get("score_is_log", True))
        self.recognition: dict[str, Any] = dict(b.thresholds.get("recognition") or {})
        self.threshold = float(b.thresholds["threshold"] if threshold is None else threshold)
        self.top_k = int(top_k)
        self.model_id = b.model_id
        p = b.preprocess
        self._pre = (int(p["resize_size"]), int(p["input_size"]), str(p["interpolation"]), p["mean"], p["std"])
        self._min_side = int(p["min_decode_side"])

    def _check_shapes(self) -> None:
        b = self.bundle
        enc_in, enc_out = self.encoder.get_inputs()[0], self.encoder.get_outputs()[0]
        cls_in, cls_out = self.classifier.get_inputs()[0], self.classifier.get_outputs()[0]
        s = int(b.preprocess["input_size"])
        if _dims(enc_in.shape)[1:] not in ([3, s, s], [None, None, None]):
            raise BundleError(f"{b.root}: encoder.onnx takes {enc_in.shape} but preprocess.json crops {s} x {s}")
        d_enc, d_cls = _dims(enc_out.shape)[-1], _dims(cls_in.shape)[-1]
        if d_enc is not None and d_cls is not None and d_enc != d_cls:
            raise BundleError(
                f"{b.root}: the encoder gives {d_enc}-d embeddings but the classifier expects {d_cls}-d: the two "
                "models come from different exports"
            )
        C = _dims(cls_out.shape)[-1]
        if C is not None and C != len(b.classes):
            raise BundleError(f"{b.root}: the classifier scores {C} SKUs but labels.json names {len(b.classes)}")

    # ------------------------------------------------------------------ inference
    def pixels(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[tuple[Any, bytes | None, str | None]]]:
        decoded = [as_rgb(im, self._min_side, EdgeInputError) for im in images]
        batch = np.stack([crop_normalize(img, *self._pre) for img, _, _ in decoded]) if decoded else None
        return batch, decoded

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """``(n, d)`` L2-normalised embeddings (one encoder run)."""
        batch, _ = self.pixels(images)
        if batch is None:
            return np.zeros((0, 0), np.float32)
        return self.encoder.run(None, {self.encoder.get_inputs()[0].name: batch})[0]

    def scores(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """The classifier's outputs for ``(n, d)`` embeddings: ``log_scores``, ``log_posterior``, ``energy``,
        ``distance``."""
        outs = self.classifier.run(None, {self.classifier.get_inputs()[0].name: np.ascontiguousarray(emb, np.float32)})
        return dict(zip(("log_scores", "log_posterior", "energy", "distance"), outs))

    def _answers(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return decide(
            outputs,
            self.classes,
            self.superclass_of_class,
            self.recognition,
            self.top_k,
            self.threshold,
            self.score_is_log,
            self.names,
        )

    def _records(self, answers: list[dict], decoded: list, review_queue: Any | None) -> list[dict[str, Any]]:
        out = []
        for ans, (img, data, name) in zip(answers, decoded):
            rec = {
                **{k: v for k, v in ans.items() if k != "unknown_score"},
                "model_id": self.model_id,
                "threshold": self.threshold,
                "image": name,
                "image_id": sha256_bytes(data) if data is not None else None,
            }
            if review_queue is not None:
                rec["queued_for_review"] = bool(rec["unknown"])
                if rec["unknown"]:
                    review_queue.add(rec, data if data is not None else encode_png(img))
            out.append(rec)
        return out

    def predict(self, image: ImageInput, review_queue: Any | None = None) -> dict[str, Any]:
        """One image -> the dict ``skurec predict`` prints (``Recognition.to_dict()``'s keys)."""
        return self.predict_many([image], review_queue=review_queue)[0]

    def predict_many(
        self, images: Sequence[ImageInput], batch_size: int = 32, review_queue: Any | None = None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for a in range(0, len(images), batch_size):
            batch, decoded = self.pixels(images[a : a + batch_size])
            emb = self.encoder.run(None, {self.encoder.get_inputs()[0].name: batch})[0]
            out.extend(self._records(self._answers(self.scores(emb)), decoded, review_queue))
        return out

    def predict_track(self, frames: Sequence[ImageInput]) -> dict[str, Any]:
        """Several frames of one product -> one answer from the fused evidence (:func:`skurec.edge.decide.fuse_track`)."""
        if not frames:
            raise EdgeInputError("a track needs at least one frame")
        batch, decoded = self.pixels(frames)
        emb = self.encoder.run(None, {self.encoder.get_inputs()[0].name: batch})[0]
        ans = self._answers(fuse_track(self.scores(emb), self.recognition))[0]
        rec = {k: v for k, v in ans.items() if k != "unknown_score"}
        return {**rec, "model_id": self.model_id, "threshold": self.threshold, "n_frames": len(frames)}


__all__ = ["EdgeInputError", "EdgeRunner"]
