"""The deployment gate: judge a candidate against the deployed model on the current validation split, and move the
deployment pointer only when every criterion passes. :class:`GateConfig` holds the only defaults of the gate.

Per tier (:mod:`skurec.catalogue.audit`): the accuracy comparison and the dead-class share are computed on the
**head** tier's validation images only, as before tiers existed, so tail volume can never hide a broken head; the
**tail** tier is judged on its own floor (at most ``tail_max_zero_accuracy_share`` of its validated SKUs at zero
validation accuracy), so a weak tail never blocks a good head. A catalogue with no head validation image at all
(every SKU in the tail) is judged on all its validation images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from skurec.deployment.bundle import PublishedModel, load_published
from skurec.deployment.training_table import training_table_sha256
from skurec.layout import audit_summary
from skurec.store.model_store import ModelStore, now_iso
from skurec.store.workspace import Workspace


@dataclass(frozen=True)
class GateConfig:
    """Deployment gate. ``tolerance``: largest allowed drop of validation top-1 accuracy below the deployed model's
    (absolute, 0.01 = one point); ``max_zero_accuracy_share``: largest share of validated classes allowed to have
    zero validation accuracy; ``min_accuracy``: floor for the very first deployment (nothing to compare with);
    ``tail_max_zero_accuracy_share``: the tail tier's floor, the largest share of its validated SKUs allowed at zero
    validation accuracy. A tail SKU has about one validation image (its hash split), so its accuracy is 0 or 1 and
    the share at zero is about one minus the tail's top-1: 0.5 refuses a tail that is mostly dead and passes one
    recognised at the measured few-shot rates (``benchmarks/long_tail.py``: 5-shot SKUs next to a full head 0.49
    test top-1, all-5-shot 0.67; on validation images, which come from the training photo sessions, higher: 0.80
    for the 46 tail SKUs of the long-tailed Grocery pipeline run, 16 % of them at zero)."""

    tolerance: float = 0.01
    max_zero_accuracy_share: float = 0.05
    min_accuracy: float = 0.0
    tail_max_zero_accuracy_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.tolerance <= 1.0:
            raise ValueError(f"gate tolerance must be in [0, 1], got {self.tolerance}")
        if not 0.0 <= self.max_zero_accuracy_share <= 1.0:
            raise ValueError(f"max_zero_accuracy_share must be in [0, 1], got {self.max_zero_accuracy_share}")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must be in [0, 1], got {self.min_accuracy}")
        if not 0.0 <= self.tail_max_zero_accuracy_share <= 1.0:
            raise ValueError(f"tail_max_zero_accuracy_share must be in [0, 1], got {self.tail_max_zero_accuracy_share}")


@dataclass
class GateReport:
    candidate_id: str
    deployed_id: str | None
    config: dict
    n_val: int = 0
    candidate_top1: float | None = None
    deployed_top1: float | None = None
    deployed_top1_basis: str = ""
    accuracy_ok: bool = False
    accuracy_reason: str = ""
    zero_accuracy_classes: list[str] = field(default_factory=list)
    n_validated_classes: int = 0
    zero_accuracy_share: float = 0.0
    zero_ok: bool = False
    zero_reason: str = ""
    input_problems: list[str] = field(default_factory=list)
    input_warnings: list[str] = field(default_factory=list)
    inputs_ok: bool = False
    # Per tier: ``candidate_top1`` / ``deployed_top1`` / the dead-class share above are the head tier's (``basis``
    # says "head", or "all" when the catalogue has no head validation image); the tail is judged on its own floor.
    basis: str = "head"
    n_val_head: int = 0
    n_val_tail: int = 0
    candidate_top1_all: float | None = None
    tail_top1: float | None = None
    tail_zero_accuracy_classes: list[str] = field(default_factory=list)
    n_validated_tail_classes: int = 0
    tail_zero_accuracy_share: float = 0.0
    tail_ok: bool = True
    tail_reason: str = ""

    @property
    def passed(self) -> bool:
        return self.accuracy_ok and self.zero_ok and self.tail_ok and self.inputs_ok

    @property
    def reasons(self) -> list[str]:
        out = []
        if not self.inputs_ok:
            out.append("inputs: " + "; ".join(self.input_problems))
        if not self.accuracy_ok:
            out.append("accuracy: " + self.accuracy_reason)
        if not self.zero_ok:
            out.append("dead classes: " + self.zero_reason)
        if not self.tail_ok:
            out.append("tail tier: " + self.tail_reason)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "reasons": self.reasons}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GateReport:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def gate_key(ws: Workspace, candidate_id: str, config: GateConfig) -> dict[str, Any]:
    """What a gate verdict depends on: the candidate, the model deployed now, the catalogue snapshot (tables,
    encoder, embedding cache) and the gate's thresholds. A verdict recorded under an equal key is still valid."""
    from skurec.embeddings.training_data import snapshot_key

    return {
        "candidate_id": candidate_id,
        "deployed_id": ModelStore(ws).deployed_id(),
        "snapshot": snapshot_key(ws),
        "config": asdict(config),
    }


def judge(
    ws: Workspace,
    candidate_id: str,
    config: GateConfig = GateConfig(),
    recorded: dict[str, Any] | None = None,
    data: Any | None = None,
) -> tuple[GateReport, dict[str, Any]]:
    """The gate's verdict on ``candidate_id`` now, evaluated once per key (:func:`gate_key`): ``recorded`` (a
    ``{"key": ..., "report": ...}`` document written when the candidate was published) is reused when its key is
    the current one; otherwise the gate runs. Returns the report and the document to record."""
    key = gate_key(ws, candidate_id, config)
    if recorded and recorded.get("key") == key and recorded.get("report"):
        return GateReport.from_dict(recorded["report"]), recorded
    report = evaluate_gate(ws, candidate_id, config, data)
    return report, {"key": key, "report": report.to_dict()}


def _top1(model: Any, X: np.ndarray) -> np.ndarray:
    return model.predict_topk(X, k=1).labels[:, 0].astype(str)


def _dead(hits: np.ndarray, y: np.ndarray, allowed: float) -> tuple[list[str], int, float, bool]:
    """Validated classes with no correct validation prediction, how many classes were validated, their share and
    whether it is within ``allowed``."""
    dead: list[str] = []
    n = 0
    if len(y):
        per_class = pd.Series(hits).groupby(y).mean()
        dead, n = sorted(per_class[per_class == 0].index.tolist()), int(len(per_class))
    share = float(len(dead) / max(1, n))
    return dead, n, share, share <= allowed + 1e-12


def _tail_mask(ws: Workspace, y: np.ndarray) -> np.ndarray:
    """True where a validation image's SKU is in the tail tier (SKUs the classes table does not tier: head)."""
    from skurec.catalogue.audit import TAIL, tiers_of_classes

    tiers = tiers_of_classes(ws.read_table("classes")) if ws.has_table("classes") else {}
    return np.asarray([tiers.get(c) == TAIL for c in y.tolist()], dtype=bool)


def _judge_tail(report: GateReport, hits: np.ndarray, y: np.ndarray, config: GateConfig) -> None:
    report.n_val_tail = int(len(y))
    if not len(y):
        return
    report.tail_top1 = float(hits.mean())
    dead, n, share, ok = _dead(hits, y, config.tail_max_zero_accuracy_share)
    report.tail_zero_accuracy_classes, report.n_validated_tail_classes = dead, n
    report.tail_zero_accuracy_share, report.tail_ok = share, ok
    report.tail_reason = (
        ""
        if report.tail_ok
        else (
            f"{len(dead)}/{n} validated tail SKUs ({report.tail_zero_accuracy_share:.1%}) have zero validation "
            f"accuracy (allowed: {config.tail_max_zero_accuracy_share:.1%}), e.g. {dead[:10]}"
        )
    )


def _check_inputs(ws: Workspace, cand: PublishedModel, data: Any, report: GateReport) -> None:
    from skurec.catalogue.schemas import ImagesSchema

    problems, warnings = report.input_problems, report.input_warnings
    try:
        ImagesSchema.validate(ws.read_table("images"), lazy=True)
    except Exception as exc:  # pandera SchemaErrors: name it, don't crash the gate
        problems.append(f"images table violates its schema: {str(exc)[:500]}")
    enc = cand.card.get("encoder", {}).get("encoder_id")
    if enc != data.encoder_id:
        problems.append(f"candidate was built on encoder {enc} but the current embeddings come from {data.encoder_id}")
    dim = getattr(cand.model, "dim", None)
    if dim is not None and data.val.X.size and data.val.X.shape[1] != dim:
        problems.append(f"embedding width {data.val.X.shape[1]} differs from the model's input width {dim}")
    needed = {"image_id", "sku_id", "split"}
    if not needed <= set(cand.table.columns):
        problems.append(f"training table lacks columns {sorted(needed - set(cand.table.columns))}")
    elif training_table_sha256(cand.table) != _table_fingerprint(cand.card):
        problems.append("training table does not match the SHA-256 recorded in the model card")
    uncovered = sorted(set(data.classes) - set(cand.model.classes))
    if uncovered:
        problems.append(
            f"{len(uncovered)} active class(es) unknown to the candidate, e.g. {uncovered[:5]} "
            "(the catalogue changed after training; run full_rebuild or let the fast path add them)"
        )
    unvalidated = list(audit_summary(ws).get("active_classes_without_val") or [])
    if unvalidated:
        warnings.append(
            f"{len(unvalidated)} active class(es) have no validation image, so the gate cannot judge them, "
            f"e.g. {unvalidated[:5]} (add labelled images of them)"
        )
    stale = sorted(set(cand.model.classes) - set(data.classes))
    if stale:
        warnings.append(f"{len(stale)} class(es) of the model are no longer active, e.g. {stale[:5]}")
    report.inputs_ok = not problems


def evaluate_gate(
    ws: Workspace, candidate: str | PublishedModel, config: GateConfig = GateConfig(), data: Any | None = None
) -> GateReport:
    """Judge ``candidate_id`` against the deployed model on the current validation split.

    * inputs: the images table satisfies its schema, the candidate's encoder and input width match the current
      embeddings, its training table matches its card, and it knows every active class;
    * accuracy: candidate top-1 >= deployed top-1 - ``tolerance`` (both scored on the same current validation
      images; if the deployed model used another encoder, its recorded gate accuracy is the reference);
    * dead classes: at most ``max_zero_accuracy_share`` of the validated classes have zero validation accuracy;
    * per tier (module docstring): the two criteria above on the head tier's validation images, the tail tier on
      its own floor (at most ``tail_max_zero_accuracy_share`` of its validated SKUs at zero accuracy).
    """
    from skurec.embeddings.training_data import load_training_data

    store = ModelStore(ws)
    deployed_id = store.deployed_id()
    cand = load_published(ws, candidate) if isinstance(candidate, str) else candidate
    candidate_id = cand.model_id
    report = GateReport(candidate_id=candidate_id, deployed_id=deployed_id, config=asdict(config))
    data = data if data is not None else load_training_data(ws)
    _check_inputs(ws, cand, data, report)
    val = data.val
    report.n_val = len(val)
    if len(val) == 0:
        report.accuracy_reason = (
            "no validation images: the candidate cannot be judged (a train/test manifest gets its "
            "validation split carved from the train rows; every class here has too few images)"
        )
        report.zero_reason = "no validation images"
        return report
    if report.inputs_ok or (cand.card.get("encoder", {}).get("encoder_id") == data.encoder_id):
        pred = _top1(cand.model, val.X)
    else:
        report.accuracy_reason = "candidate cannot be scored on the current embeddings"
        report.zero_reason = report.accuracy_reason
        return report
    y_all = val.y.astype(str)
    hits_all = pred == y_all
    report.candidate_top1_all = float(hits_all.mean())
    is_tail = _tail_mask(ws, y_all)
    _judge_tail(report, hits_all[is_tail], y_all[is_tail], config)
    # The head tier is judged as before tiers existed, on its own validation images (all of them when it has none).
    has_head = bool((~is_tail).any())
    scope = ~is_tail if has_head else np.ones(len(y_all), dtype=bool)
    report.basis = "head" if has_head else "all (no head validation image)"
    report.n_val_head = int((~is_tail).sum())
    y, hits = y_all[scope], hits_all[scope]
    report.candidate_top1 = float(hits.mean())
    _judge_dead_classes(report, hits, y, config, has_head)
    _judge_accuracy(ws, report, data.encoder_id, val.X[scope], y, config)
    return report


def _judge_dead_classes(report: GateReport, hits: np.ndarray, y: np.ndarray, config: GateConfig, head: bool) -> None:
    """Dead classes: validated classes (of the judged tier) with no correct validation prediction."""
    dead, n_validated, share, ok = _dead(hits, y, config.max_zero_accuracy_share)
    report.zero_accuracy_classes, report.n_validated_classes = dead, n_validated
    report.zero_accuracy_share, report.zero_ok = share, ok
    report.zero_reason = (
        (
            f"{len(dead)}/{n_validated} validated {'head ' if head else ''}classes "
            f"({report.zero_accuracy_share:.1%}) have zero validation accuracy (allowed: "
            f"{config.max_zero_accuracy_share:.1%}), e.g. {dead[:10]}"
        )
        if dead
        else ""
    )


def _judge_accuracy(
    ws: Workspace, report: GateReport, encoder_id: str, X: np.ndarray, y: np.ndarray, config: GateConfig
) -> None:
    """Accuracy against the deployed model on the same validation rows (its recorded number when it used another
    encoder); the minimum accuracy when nothing else is deployed."""
    deployed_id = report.deployed_id
    if deployed_id is None or deployed_id == report.candidate_id:
        report.deployed_top1_basis = "none deployed" if deployed_id is None else "candidate is the deployed model"
        report.accuracy_ok = report.candidate_top1 >= config.min_accuracy
        report.accuracy_reason = (
            ""
            if report.accuracy_ok
            else f"validation top-1 {report.candidate_top1:.4f} is below the minimum {config.min_accuracy:.4f}"
        )
        return
    dep = load_published(ws, deployed_id)
    if dep.card.get("encoder", {}).get("encoder_id") == encoder_id:
        report.deployed_top1 = float((_top1(dep.model, X) == y).mean())
        report.deployed_top1_basis = "scored on the current validation split"
    else:
        recorded = (dep.card.get("evaluation") or {}).get("gate/candidate_top1")
        report.deployed_top1 = float(recorded) if recorded is not None else None
        report.deployed_top1_basis = "recorded in its card (it used another encoder)"
    if report.deployed_top1 is None:
        report.accuracy_ok = report.candidate_top1 >= config.min_accuracy
        report.accuracy_reason = "" if report.accuracy_ok else "below the minimum accuracy"
        return
    floor = report.deployed_top1 - config.tolerance
    report.accuracy_ok = report.candidate_top1 + 1e-12 >= floor and report.candidate_top1 >= config.min_accuracy
    report.accuracy_reason = (
        ""
        if report.accuracy_ok
        else (
            f"validation top-1 {report.candidate_top1:.4f} is more than {config.tolerance:.4f} below the deployed model "
            f"{deployed_id} ({report.deployed_top1:.4f}, {report.deployed_top1_basis})"
        )
    )


@dataclass
class DeploymentDecision:
    deployed: bool
    model_id: str | None  # the model deployed after the decision
    candidate_id: str
    report: GateReport
    event: dict


def decide_deployment(
    ws: Workspace,
    candidate_id: str,
    config: GateConfig = GateConfig(),
    data: Any | None = None,
    recorded: dict[str, Any] | None = None,
) -> DeploymentDecision:
    """Promote ``candidate_id`` iff the gate passes; a refusal is recorded and leaves the pointer untouched.
    ``recorded``: the candidate's recorded verdict (see :func:`judge`), reused when nothing it depends on changed."""
    store = ModelStore(ws)
    before = store.deployed_id()
    report, _ = judge(ws, candidate_id, config, recorded, data)
    if report.passed:
        event = store.deploy(candidate_id, reason="gate passed", extra={"gate": report.to_dict()})
        return DeploymentDecision(True, candidate_id, candidate_id, report, event)
    event = {
        "model_id": candidate_id,
        "deployed_model_id": before,
        "refused_at": now_iso(),
        "reasons": report.reasons,
        "gate": report.to_dict(),
    }
    store.record_event("refused", event)
    return DeploymentDecision(False, before, candidate_id, report, event)


def _table_fingerprint(card: dict) -> str | None:
    """The card's fingerprint of its training rows (``sha256`` in cards written before it was renamed)."""
    ts = card.get("training_set") or {}
    return ts.get("table_fingerprint") or ts.get("sha256")
