"""Export a published model as an edge bundle (:mod:`skurec.edge`), and refuse it unless it answers like the
Recognizer on the validation images (a stable sample of them, :attr:`EdgeExportConfig.parity_images`).

* ``encoder.onnx``: ``torch.onnx.export`` (dynamo) of the loaded :class:`~skurec.encoders.base.FrozenEncoder`'s own
  forward (``_forward_backbone`` of every backbone: view recipe, GeM layers, per-part and final L2 norms).
* ``classifier.onnx``: ``torch.onnx.export`` of :class:`skurec.deployment.scoring.ScoreGraph`, which calls the model's
  own torch parts (global scorer, router, specialists, routing width).
* the preprocessing, labels, the card's calibration and a manifest with every file's SHA-256, written last.

Parity (blocking, :func:`check_parity`): on the validation images the runner's top-1 equals the Recognizer's on every
image and the largest top-k score difference is <= ``max_score_diff`` (fp32); the score graph itself is first
checked against the model's ``predict_topk``. The fp32 check runs on at most ``parity_images`` (256) validation images
chosen by a stable hash of their ids (the same images whatever else arrives; the manifest's ``parity`` says how many
of how many): it proves the exported graphs compute what the torch ones do, which a few hundred images show as well
as thousands, and it is the same cost for a catalogue of any size.

The fp32 encoder export depends on the encoder alone (its id, the opset, the exporter), not on the model: with a work
directory (:func:`export_from_workdir`, ``reuse_encoder=True``, what the ``edge_bundle`` asset does) it is kept in
``edge/_encoders/<key>/`` with its SHA-256 and copied into the next bundle instead of being exported again; the parity
check then judges the bundle exactly as before. An int8 bundle (the encoder quantised: ``static`` QDQ calibrated on
training images, or ``dynamic``) is judged on validation top-1 instead: refused when it loses more than ``max_int8_top1_drop``. A refused export leaves
nothing at the destination.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skurec.edge.bundle import (
    CLASSIFIER_ONNX,
    ENCODER_ONNX,
    FORMAT,
    FORMAT_VERSION,
    LABELS,
    MANIFEST,
    PREPROCESS,
    THRESHOLDS,
    sha256_file,
)
from skurec.edge.decide import topk_rows


@dataclass(frozen=True)
class EdgeExportConfig:
    """``opset``: ONNX opset of both graphs; ``max_score_diff``: fp32 parity tolerance on scores;
    ``max_int8_top1_drop``: validation top-1 an int8 bundle may lose (0.005 = half a point); ``max_images``: cap
    on the validation images read (id order; None: every one); ``parity_images``: the fp32 parity check's stable-hash
    sample of them (None: every one; an int8 bundle, judged on validation top-1, always uses every one);
    ``int8_calibration_images``: training images that calibrate static int8 activation ranges."""

    opset: int = 18
    max_score_diff: float = 1e-4
    max_int8_top1_drop: float = 0.005
    max_images: int | None = None
    parity_images: int | None = 256
    batch_size: int = 16
    int8_calibration_images: int = 64


class ParityError(RuntimeError):
    """The exported bundle does not answer like the Recognizer: it is refused (nothing is written)."""


class _EncoderGraph(torch.nn.Module):
    """The encoder's own forward (``FrozenEncoder._forward_backbone`` per backbone, parts concatenated, L2 norm)."""

    def __init__(self, encoder: Any):
        super().__init__()
        self.encoder = encoder
        self.backbones = torch.nn.ModuleList([b.module for b in encoder.backbones])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        parts = [e._forward_backbone(b, r, x) for b, r in zip(e.backbones, e._renorm)]
        if len(parts) == 1:
            return parts[0]
        return torch.nn.functional.normalize(torch.cat(parts, dim=1).float(), p=2.0, dim=1, eps=1e-12)


def export_encoder_onnx(encoder: Any, path: str, opset: int = 18) -> None:
    if encoder.device.type != "cpu":
        raise ValueError("export the encoder from a CPU-loaded copy (load_encoder(..., device='cpu'))")
    for b in encoder.backbones:  # channels_last is a CPU-kernel choice of torch; ONNX wants plain NCHW weights
        b.module.to(memory_format=torch.contiguous_format)
    graph = _EncoderGraph(encoder).eval()
    x = torch.zeros((2, 3, encoder.input_size, encoder.input_size))
    n = torch.export.Dim("n", min=1, max=4096)
    try:
        _export_dynamo(graph, x, n, path, opset)
    finally:
        for b in encoder.backbones:
            b.module.to(memory_format=torch.channels_last)


def _export_dynamo(graph: torch.nn.Module, x: torch.Tensor, n: Any, path: str, opset: int) -> None:
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (x,),
            path,
            input_names=["pixels"],
            output_names=["embedding"],
            dynamic_shapes=({0: n},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def export_classifier_onnx(graph: torch.nn.Module, dim: int, path: str, opset: int = 18) -> None:
    """TorchScript-trace export: the graph's shape-only branches (padding of superclass slots) are constants."""
    x = torch.nn.functional.normalize(torch.ones((2, dim)), dim=1)
    names = ["log_scores", "log_posterior", "energy", "distance"]
    axes = {"embedding": {0: "n"}, **{name: {0: "n"} for name in names}}
    with torch.no_grad(), warnings.catch_warnings():
        # the shape-only branches become constants by design; the parity check proves the graph on real inputs
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph.eval(),
            (x,),
            path,
            input_names=["embedding"],
            output_names=names,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


INT8_MODES = ("static", "dynamic")


def quantize_int8(path: str, mode: str = "static", pixels: Sequence[np.ndarray] | None = None) -> None:
    """int8 quantisation of the encoder ONNX ``path`` in place (``onnxruntime.quantization``).

    ``dynamic``: int8 weights, activations quantised at run time (``quantize_dynamic``; on convolutional encoders
    onnxruntime runs it as ConvInteger, which is slower than fp32 on CPU). ``static``: QDQ int8 weights (per channel)
    and activations whose ranges are calibrated on ``pixels`` (preprocessed training images, never the validation
    images that judge the bundle): QLinearConv kernels.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode not in INT8_MODES:
        raise ValueError(f"int8 mode must be one of {INT8_MODES}, got {mode!r}")
    tmp = path + ".int8"
    if mode == "dynamic":
        quantize_dynamic(path, tmp, weight_type=QuantType.QInt8)
    else:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if not pixels:
            raise ValueError("static int8 quantisation needs calibration images (training images)")

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter(pixels)

            def get_next(self) -> dict | None:
                x = next(self.it, None)
                return None if x is None else {"pixels": np.ascontiguousarray(x[None], dtype=np.float32)}

        pre = path + ".pre"
        quant_pre_process(path, pre, skip_symbolic_shape=True)
        quantize_static(
            pre,
            tmp,
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        os.remove(pre)
    os.replace(tmp, path)


def training_images(ws: Any, n: int) -> list[bytes]:
    """Bytes of ``n`` active training images (id order, evenly spread): the static int8 calibration set."""
    from skurec.store.workspace import read_uri_bytes

    images = ws.read_table("images")
    train = images[(images["split"] == "train") & images["active"]].sort_values("image_id")
    step = max(1, len(train) // max(1, n))
    opts = getattr(ws, "storage_options", None)
    return [read_uri_bytes(u, storage_options=opts) for u in train["image_uri"].iloc[::step].head(n)]


def validation_rows(ws: Any, max_images: int | None = None) -> list[tuple[str, str, str]]:
    """``(image_id, image_uri, sku_id)`` of the active validation images of the audited catalogue (id order)."""
    images = ws.read_table("images", columns=["image_id", "image_uri", "sku_id", "split", "active"])
    val = images[(images["split"] == "val") & images["active"]].sort_values("image_id")
    if max_images is not None:
        val = val.head(int(max_images))
    return [(r.image_id, r.image_uri, str(r.sku_id)) for r in val.itertuples()]


def read_images(ws: Any, rows: Sequence[tuple[str, str, str]]) -> list[tuple[str, bytes, str]]:
    """``(image_id, bytes, sku_id)`` of :func:`validation_rows`."""
    from skurec.store.workspace import read_uri_bytes

    opts = getattr(ws, "storage_options", None)
    return [(i, read_uri_bytes(u, storage_options=opts), sku) for i, u, sku in rows]


def validation_images(ws: Any, max_images: int | None = None) -> list[tuple[str, bytes, str]]:
    """``(image_id, bytes, sku_id)`` of the active validation images of the audited catalogue (id order)."""
    return read_images(ws, validation_rows(ws, max_images))


PARITY_SALT = "skurec-parity-v1"
EXPORT_RECORD = "export.json"  # beside a cached encoder export: its key and SHA-256


def parity_sample(images: Sequence[tuple], n: int | None) -> list[tuple]:
    """At most ``n`` of ``images`` (tuples whose first item is the image id, e.g. ``(image_id, bytes, sku_id)``):
    those with the lowest hash of their image id, in their given order. An image in the sample stays in it until
    images with a lower hash arrive; None: every image."""
    images = list(images)
    if n is None or len(images) <= n:
        return images

    def h(image_id: str) -> str:
        return hashlib.sha256(f"{PARITY_SALT}:{image_id}".encode()).hexdigest()

    keep = set(sorted(range(len(images)), key=lambda i: h(images[i][0]))[: max(0, int(n))])
    return [im for i, im in enumerate(images) if i in keep]


def encoder_export_key(encoder: Any, opset: int) -> str:
    """What the fp32 encoder ONNX depends on: the encoder's identity (weights and every option), the opset and the
    exporter (torch version)."""
    doc = {"encoder_id": encoder.encoder_id, "opset": int(opset), "torch": torch.__version__, "format": "encoder-v1"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def cached_encoder_onnx(ws: Any, encoder: Any, opset: int) -> tuple[bytes, dict[str, Any]]:
    """The fp32 encoder ONNX of ``encoder`` from the work directory's export of the same identity
    (:func:`encoder_export_key`) when its bytes match the SHA-256 recorded with it; otherwise exported now and kept
    there for the next bundle. Returns the bytes and ``{"key", "sha256", "reused"}``."""
    from skurec import layout

    key = encoder_export_key(encoder, opset)
    folder = layout.edge_encoder_export_dir(key)
    if ws.exists(f"{folder}/{EXPORT_RECORD}") and ws.exists(f"{folder}/{ENCODER_ONNX}"):
        record = ws.read_json(folder, EXPORT_RECORD)
        data = ws.read_bytes(folder, ENCODER_ONNX)
        if record.get("key") == key and hashlib.sha256(data).hexdigest() == record.get("sha256"):
            return data, {"key": key, "sha256": record["sha256"], "reused": True}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ENCODER_ONNX
        export_encoder_onnx(encoder, str(path), opset)
        data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    ws.write_bytes(f"{folder}/{ENCODER_ONNX}", data)
    ws.write_json(  # the record last: a half-written export is never trusted
        f"{folder}/{EXPORT_RECORD}",
        {
            "key": key,
            "sha256": digest,
            "encoder_id": encoder.encoder_id,
            "opset": int(opset),
            "torch": torch.__version__,
        },
    )
    return data, {"key": key, "sha256": digest, "reused": False}


def check_parity(
    runner: Any,
    recognizer: Any,
    images: Sequence[tuple[str, bytes, str]],
    config: EdgeExportConfig | None = None,
    quantized: bool = False,
) -> dict[str, Any]:
    """Compare the runner with the Recognizer on ``images``; returns the report or raises :class:`ParityError`."""
    config = config or EdgeExportConfig()
    if not images:
        raise ParityError("no validation images to check the bundle on; the parity check cannot pass without them")
    datas = [d for _, d, _ in images]
    truth = np.asarray([y for _, _, y in images])
    ref_emb = np.concatenate(
        [recognizer.embed(datas[a : a + config.batch_size]) for a in range(0, len(datas), config.batch_size)]
    )
    # 1. the score graph against the model's own predict_topk (catches a scoring change the graph does not follow)
    k = min(recognizer.top_k, len(recognizer.model.classes))
    pred = recognizer.model.predict_topk(ref_emb, k=k, **({} if recognizer.m is None else {"m": recognizer.m}))
    out = recognizer.scores(ref_emb)
    idx, vals = topk_rows(out["log_scores"], k)
    g_scores = np.exp(vals) if recognizer.graph.info.score_is_log else vals
    g_labels = np.asarray(recognizer.model.classes + [""])[np.where(idx < 0, len(recognizer.model.classes), idx)]
    graph_top1 = float(np.mean(g_labels[:, 0] == pred.labels[:, 0]))
    graph_diff = float(np.max(np.abs(np.where(idx >= 0, g_scores, 0.0) - pred.scores[:, :k])))
    # 2. the runner against the Recognizer, image by image
    theirs = runner.predict_many(datas, batch_size=config.batch_size)
    ours = [r.to_dict() for r in recognizer.answer_embeddings(ref_emb)]  # the embeddings of step 1, not again
    same_top1 = np.asarray([a["sku_id"] == b["sku_id"] for a, b in zip(theirs, ours)])
    same_unknown = np.asarray([a["unknown"] == b["unknown"] for a, b in zip(theirs, ours)])
    diffs = []
    for a, b in zip(theirs, ours):
        sa = {t["sku_id"]: t["score"] for t in a["top_k"]}
        diffs += [abs(sa[t["sku_id"]] - t["score"]) if t["sku_id"] in sa else 1.0 for t in b["top_k"]]
    acc_ref = float(np.mean([b["sku_id"] == y for b, y in zip(ours, truth)]))
    acc_run = float(np.mean([a["sku_id"] == y for a, y in zip(theirs, truth)]))
    report = {
        "n_images": len(images),
        "precision": "int8" if quantized else "fp32",
        "graph_vs_predict_topk_top1_agreement": graph_top1,
        "graph_vs_predict_topk_max_score_diff": graph_diff,
        "top1_agreement": float(same_top1.mean()),
        "unknown_agreement": float(same_unknown.mean()),
        "max_score_diff": float(max(diffs) if diffs else 0.0),
        "val_top1_recognizer": acc_ref,
        "val_top1_runner": acc_run,
        "val_top1_delta": acc_run - acc_ref,
        "max_score_diff_allowed": config.max_score_diff,
    }
    if graph_top1 < 1.0 or graph_diff > config.max_score_diff:
        raise ParityError(
            f"the score graph disagrees with the model's predict_topk (top-1 agreement {graph_top1:.4f}, max score "
            f"difference {graph_diff:.2e}): the model's scoring changed and skurec.deployment.scoring does not follow it"
        )
    if quantized:
        report["max_int8_top1_drop"] = config.max_int8_top1_drop
        if acc_ref - acc_run > config.max_int8_top1_drop:
            raise ParityError(
                f"the int8 bundle loses {100 * (acc_ref - acc_run):.2f} points of validation top-1 ({acc_ref:.4f} -> "
                f"{acc_run:.4f}), more than the {100 * config.max_int8_top1_drop:.1f} allowed; ship the fp32 bundle"
            )
        return report
    if not same_top1.all() or report["max_score_diff"] > config.max_score_diff:
        bad = [images[i][0][:16] for i in np.flatnonzero(~same_top1)[:5]]
        raise ParityError(
            f"the bundle does not answer like the Recognizer: top-1 agreement {report['top1_agreement']:.4f} "
            f"(differs on {int((~same_top1).sum())} of {len(images)} images, e.g. {bad}), max score difference "
            f"{report['max_score_diff']:.2e} (allowed {config.max_score_diff:.0e})"
        )
    return report


def _write_json(root: Path, name: str, doc: Any) -> None:
    (root / name).write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")


def write_manifest(root: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """(Re)write ``manifest.json`` with the SHA-256 of every other file of the bundle."""
    files = {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = {**doc, "files": files}
    _write_json(root, MANIFEST, manifest)
    return manifest


def build_bundle_files(
    recognizer: Any,
    root: Path,
    config: EdgeExportConfig,
    quantize: str | None = None,
    calibration_images: Sequence[bytes] = (),
    encoder_onnx: bytes | None = None,
) -> dict:
    """Write every bundle file except the parity report into ``root``; returns the manifest (without parity).
    ``quantize``: None (fp32), ``"static"`` (calibrated on ``calibration_images``) or ``"dynamic"`` int8.
    ``encoder_onnx``: the fp32 export of this very encoder (:func:`cached_encoder_onnx`), written instead of
    exporting the encoder again."""
    enc, model, card = recognizer.encoder, recognizer.model, recognizer.card
    if recognizer.graph is None:
        raise ParityError(f"model kind {getattr(model, 'KIND', '?')} cannot be exported (no score graph)")
    if encoder_onnx is None:
        export_encoder_onnx(enc, str(root / ENCODER_ONNX), config.opset)
    else:
        (root / ENCODER_ONNX).write_bytes(encoder_onnx)
    export_classifier_onnx(recognizer.graph, int(model.dim), str(root / CLASSIFIER_ONNX), config.opset)
    if quantize:
        from skurec.edge.inputs import as_rgb
        from skurec.images import crop_normalize

        pixels = [
            crop_normalize(
                as_rgb(b, enc.min_decode_side)[0], enc.resize_size, enc.input_size, enc.interpolation, enc.mean, enc.std
            )
            for b in calibration_images
        ]
        quantize_int8(str(root / ENCODER_ONNX), quantize, pixels)
    sc = getattr(model, "sc_of_index", None)
    _write_json(
        root,
        PREPROCESS,
        {
            "resize_size": enc.resize_size,
            "input_size": enc.input_size,
            "interpolation": enc.interpolation,
            "mean": list(enc.mean),
            "std": list(enc.std),
            "min_decode_side": enc.min_decode_side,
            "views": enc.views,
            "layers": enc.layers,
        },
    )
    _write_json(
        root,
        LABELS,
        {
            "classes": list(model.classes),
            "names": recognizer.names,
            "superclass_of_class": None if sc is None else [int(s) for s in sc],
            "score_is_log": recognizer.graph.info.score_is_log,
            "tiers": dict((recognizer.card.get("classes") or {}).get("tiers") or {}),  # sku -> head / tail
        },
    )
    _write_json(root, THRESHOLDS, {"threshold": recognizer.threshold, "recognition": recognizer.recognition})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": recognizer.model_id,
        "model_kind": getattr(model, "KIND", type(model).__name__),
        "n_classes": len(model.classes),
        "routing_width": recognizer.graph.info.m,
        "opset": {ENCODER_ONNX: config.opset, CLASSIFIER_ONNX: config.opset},
        "precision": f"int8-{quantize}" if quantize else "fp32",
        "encoder": {k: (card.get("encoder") or {}).get(k) for k in ("name", "encoder_id", "options", "dim")},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "export_config": asdict(config),
    }


def export_edge_bundle(
    recognizer: Any,
    out_dir: str | os.PathLike,
    images: Sequence[tuple[str, bytes, str]],
    config: EdgeExportConfig | None = None,
    quantize: str | None = None,
    calibration_images: Sequence[bytes] = (),
    encoder_onnx: bytes | None = None,
    encoder_export: dict[str, Any] | None = None,
    n_validation_images: int | None = None,
) -> dict[str, Any]:
    """Write the bundle of the Recognizer's model into ``out_dir`` (replaced) after its parity check passed on
    ``images`` (``(image_id, bytes, sku_id)``, normally :func:`validation_images`; fp32: their
    :func:`parity_sample` of ``config.parity_images``). ``encoder_onnx`` / ``encoder_export``: a cached fp32 encoder
    export and its record (:func:`cached_encoder_onnx`); ``n_validation_images``: how many validation images
    ``images`` were sampled from, when the caller sampled them (default: ``len(images)``). Returns the manifest."""
    from skurec.edge.runner import EdgeRunner

    config = config or EdgeExportConfig()
    images = list(images)
    if config.max_images is not None:
        images = images[: config.max_images]
    n_available = max(len(images), int(n_validation_images or 0))
    if not quantize:  # int8 is judged on validation top-1: every image counts
        images = parity_sample(images, config.parity_images)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".edge-", dir=out.parent))
    try:
        doc = build_bundle_files(recognizer, tmp, config, quantize, calibration_images, encoder_onnx)
        doc["encoder_export"] = encoder_export or {"reused": False}
        write_manifest(tmp, {**doc, "parity": None})
        runner = EdgeRunner(tmp, threads=1, top_k=recognizer.top_k)
        parity = check_parity(runner, recognizer, images, config, quantized=bool(quantize))
        parity["n_validation_images"] = n_available
        parity["sample"] = "every validation image" if len(images) == n_available else f"stable hash ({PARITY_SALT})"
        manifest = write_manifest(tmp, {**doc, "parity": parity})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_from_workdir(
    workdir: Any,
    out_dir: str | os.PathLike,
    model_id: str | None = None,
    *,
    checkpoint: str | None = None,
    config: EdgeExportConfig | None = None,
    quantize: str | None = None,
    reuse_encoder: bool = False,
) -> dict[str, Any]:
    """:func:`export_edge_bundle` of a work directory's model (default: the deployed one) on its validation images.
    ``reuse_encoder``: take the fp32 encoder export from the work directory (:func:`cached_encoder_onnx`; it writes
    one there when it has none), instead of exporting the encoder for every bundle."""
    from skurec.serving.recognizer import Recognizer
    from skurec.store.workspace import Workspace

    config = config or EdgeExportConfig()
    ws = workdir if isinstance(workdir, Workspace) else Workspace(os.fspath(workdir))
    rec = Recognizer.from_workdir(ws, model_id, device="cpu", checkpoint=checkpoint)
    calib = training_images(ws, config.int8_calibration_images) if quantize == "static" else []
    encoder_onnx, record = None, None
    if reuse_encoder and rec.graph is not None:
        encoder_onnx, record = cached_encoder_onnx(ws, rec.encoder, config.opset)
    rows = validation_rows(ws, config.max_images)
    images = read_images(ws, rows if quantize else parity_sample(rows, config.parity_images))  # read what is checked
    return export_edge_bundle(rec, out_dir, images, config, quantize, calib, encoder_onnx, record, len(rows))


__all__ = [
    "EdgeExportConfig",
    "ParityError",
    "build_bundle_files",
    "cached_encoder_onnx",
    "encoder_export_key",
    "check_parity",
    "export_classifier_onnx",
    "export_edge_bundle",
    "export_encoder_onnx",
    "export_from_workdir",
    "INT8_MODES",
    "parity_sample",
    "quantize_int8",
    "read_images",
    "training_images",
    "validation_images",
    "validation_rows",
    "write_manifest",
]
