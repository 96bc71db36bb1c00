"""The "unknown" threshold of a model, calibrated on its validation split (recorded in its card, used by the
Recognizer)."""

from __future__ import annotations

from typing import Any

import numpy as np

from skurec.store.workspace import Workspace


def calibrate_threshold(
    ws: Workspace, model: Any, data: Any | None = None, keep: float = 0.95, bounds: tuple[float, float] = (0.05, 0.9)
) -> dict[str, Any]:
    """The "unknown" threshold recommended for this model: the top-1 score that ``keep`` of the correct validation
    predictions reach (so 95 % of in-catalogue photos the model gets right are answered), clipped to ``bounds``.

    Scores of the hierarchical model are ``p(superclass) * p(SKU | superclass)``; their scale depends on the number
    of SKUs per superclass and the fine head's temperature, so a fixed threshold does not fit every model.
    """
    from skurec.embeddings.training_data import load_training_data

    data = data if data is not None else load_training_data(ws)
    if len(data.val) == 0:
        return {"threshold": None, "method": "no validation images"}
    pred = model.predict_topk(data.val.X, k=1)
    correct = pred.labels[:, 0].astype(str) == data.val.y.astype(str)
    if not correct.any():
        return {"threshold": None, "method": "no correct validation prediction"}
    q = float(np.quantile(pred.scores[correct, 0], 1.0 - keep))
    t = float(min(max(q, bounds[0]), bounds[1]))
    wrong = pred.scores[~correct, 0]
    return {
        "threshold": round(t, 4),
        "method": f"{keep:.0%} of correct validation predictions score >= threshold",
        "n_val": int(len(correct)),
        "wrong_rejected_share": float(np.mean(wrong < t)) if len(wrong) else None,
    }
