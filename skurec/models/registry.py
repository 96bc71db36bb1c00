"""Load any skurec model from its files: the one place that knows every model kind (``kind`` -> class).

It sits on top of the import graph of :mod:`skurec.models` (it imports the models; no model imports it), so
adding a model kind means adding it here and nowhere else. A bundle of a kind skurec no longer builds
(:data:`REMOVED_KINDS`) fails with a :class:`ModelFormatError` that says to rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .coarse import CoarseHead
from .fine import FineHead
from .flat import FlatKNN, FlatPrototype
from .hierarchical import HierarchicalClassifier
from .lda_router import LDARouter
from .serialization import ModelFormatError, read_config
from .softmax import FlatSoftmax
from .specialists import SpecialistHead

MODEL_CLASSES: tuple[type, ...] = (
    HierarchicalClassifier,
    CoarseHead,
    LDARouter,
    FineHead,
    SpecialistHead,
    FlatSoftmax,
    FlatPrototype,
    FlatKNN,
)


#: kinds earlier versions wrote that no longer load, and what replaced them
REMOVED_KINDS: dict[str, str] = {
    "flat_linear": "the flat logistic regression (FlatLinear) was replaced by the strong flat softmax (flat_softmax)",
}


def model_kinds() -> dict[str, type]:
    """``kind`` (as written in ``config.json``) -> model class, for every loadable model."""
    return {cls.KIND: cls for cls in MODEL_CLASSES}


def load_classifier(files: Mapping[str, bytes], device: str | torch.device | None = None) -> Any:
    """Load any skurec model from its files, dispatching on ``config.json``'s ``kind``."""
    registry = model_kinds()
    kind = read_config(files)["kind"]
    if kind in REMOVED_KINDS:
        raise ModelFormatError(
            f"model kind {kind!r} is no longer supported: {REMOVED_KINDS[kind]}; rebuild the model "
            "(run the full_rebuild job, or `skurec demo` again)"
        )
    if kind not in registry:
        raise ModelFormatError(f"unknown model kind {kind!r}; known kinds: {sorted(registry)}")
    return registry[kind].from_files(files, device=device)


__all__ = ["MODEL_CLASSES", "REMOVED_KINDS", "load_classifier", "model_kinds"]
