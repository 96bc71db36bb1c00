"""The cart's runner: an exported edge bundle (ONNX encoder + ONNX classifier + labels + thresholds + a SHA-256
manifest) answered with onnxruntime, numpy and Pillow only (no torch, timm or Dagster).

    from skurec.edge import EdgeRunner
    runner = EdgeRunner("bundle/")          # verifies every file against the manifest, refuses a bad bundle
    runner.predict("photo.jpg")             # the same dict as skurec.serving.recognizer.Recognition.to_dict()

Bundles are written by :func:`skurec.serving.edge_export.export_edge_bundle` (``skurec export``), which refuses
to write one whose answers differ from the Recognizer's on the validation images.
"""

from skurec.edge.bundle import BundleError, EdgeBundle, load_bundle
from skurec.edge.runner import EdgeRunner

__all__ = ["BundleError", "EdgeBundle", "EdgeRunner", "load_bundle"]
