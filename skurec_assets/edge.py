"""The cart's bundle: ``edge_bundle`` exports the deployed model as ONNX + manifest (``<workdir>/edge/<model_id>/``)
each time the deployment changes, and publishes it only when its parity check passes on the validation images (a
stable-hash sample of at most ``EdgeExportConfig.parity_images``; :mod:`skurec.serving.edge_export`). The fp32 encoder
export is kept per encoder identity and reused by the next bundle. A refused export keeps the previous bundle and the
metadata says why."""

import tempfile
from pathlib import Path

import dagster as dg

from skurec import layout
from skurec.store.model_store import ModelStore
from skurec_assets.deploy import DEPLOY, deployed_model
from skurec_resources import StorageResource


@dg.asset(
    group_name=DEPLOY,
    deps=[deployed_model],
    code_version="edge-v2",
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "The deployed model as an edge bundle for the cart: ONNX encoder (with its view recipe and layers) and ONNX "
        "classifier, labels, thresholds and a manifest with every file's SHA-256, run by `skurec.edge` (onnxruntime, "
        "numpy, Pillow). Published only when the runner answers like the Recognizer on the validation images (a "
        "stable-hash sample of at most 256); the encoder's ONNX export is reused while the encoder is unchanged."
    ),
)
def edge_bundle(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    from skurec.edge.bundle import MANIFEST
    from skurec.serving.edge_export import ParityError, export_from_workdir

    ws = storage.workspace()
    model_id = ModelStore(ws).deployed_id()
    if model_id is None:
        return dg.MaterializeResult(metadata={"status": "nothing deployed"})
    target = layout.edge_bundle_dir(model_id)
    if ws.exists(f"{target}/{MANIFEST}"):
        manifest = ws.read_json(target, MANIFEST)
        return dg.MaterializeResult(metadata=_metadata(ws.uri(target), manifest, "already exported"))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "bundle"
        try:
            manifest = export_from_workdir(ws, local, model_id, reuse_encoder=True)
        except ParityError as exc:
            context.log.warning(f"edge bundle of {model_id} refused: {exc}")
            return dg.MaterializeResult(metadata={"status": "refused", "model_id": model_id, "reason": str(exc)})
        except Exception as exc:  # a model kind without a score graph, an encoder that cannot be exported
            context.log.warning(f"edge bundle of {model_id} not exported: {exc}")
            return dg.MaterializeResult(metadata={"status": "not exported", "model_id": model_id, "reason": str(exc)})
        for p in sorted(local.iterdir(), key=lambda p: p.name == MANIFEST):  # the manifest last
            ws.write_bytes(f"{target}/{p.name}", p.read_bytes())
    return dg.MaterializeResult(metadata=_metadata(ws.uri(target), manifest, "exported"))


def _metadata(uri: str, manifest: dict, status: str) -> dict:
    parity = manifest.get("parity") or {}
    return {
        "status": status,
        "bundle": uri,
        "model_id": manifest.get("model_id"),
        "precision": manifest.get("precision"),
        "parity_images": parity.get("n_images"),
        "parity_images_available": parity.get("n_validation_images", parity.get("n_images")),
        "encoder_export_reused": bool((manifest.get("encoder_export") or {}).get("reused", False)),
        "parity_top1_agreement": parity.get("top1_agreement"),
        "parity_max_score_diff": parity.get("max_score_diff"),
        "files": dg.MetadataValue.json(manifest.get("files", {})),
    }
