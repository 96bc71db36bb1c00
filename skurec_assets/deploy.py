"""Deployment: candidate models (full rebuild or new-SKU fast path), blocking gate checks, the deployed model.

* ``candidate_model`` publishes at most one new model bundle per run, with its model card and training table:
  the freshly trained model of a full rebuild, otherwise the deployed model extended with the images it has not
  seen (new SKUs attached to their nearest superclass by ``add_classes``, no retraining). When nothing changed it
  materialises nothing, so nothing downstream runs.
* ``candidate_gate`` (three blocking checks): inputs valid, validation accuracy not below the deployed model's by
  more than the tolerance, no more than the allowed share of classes with zero validation accuracy. A failure stops
  ``deployed_model`` in the same run; the check metadata says why.
* ``deployed_model`` moves the deployment pointer (``models/deployed.json``) only when the gate passes again at
  that moment; otherwise the previous model stays deployed and the materialisation says why.
"""

import warnings

import dagster as dg

from skurec.deployment.candidates import build_candidate, record_candidate
from skurec.deployment.card import model_card_markdown
from skurec.deployment.gate import decide_deployment, judge
from skurec.store.model_store import ModelStore, ModelStoreError
from skurec_resources import LabellingLoopResource, StorageResource
from skurec_resources.io_managers import STEP_IO_KEY, workdir_json_io_manager

DEPLOY = "deploy"


def _lineage_metadata(card: dict) -> dict:
    enc = card.get("encoder") or {}
    ts = card.get("training_set") or {}
    return {
        "model_id": card.get("model_id", ""),
        "source": card.get("source", ""),
        "catalogue_snapshot": card.get("catalogue_snapshot", ""),
        "encoder_id": enc.get("encoder_id") or "",
        "encoder_weights_sha256": enc.get("weights_sha256") or "",
        "superclass_version": str((card.get("superclasses") or {}).get("version")),
        "training_set_fingerprint": ts.get("table_fingerprint") or ts.get("sha256", ""),
        "training_set_file_sha256": ts.get("file_sha256") or "",
        "n_train_images": int(ts.get("n_train", 0)),
        "n_classes": int((card.get("classes") or {}).get("n", 0)),
        "batches": dg.MetadataValue.json([b.get("batch_id") for b in card.get("batches", [])]),
        "git_commit": str((card.get("code") or {}).get("git_commit")),
        "model_card": dg.MetadataValue.md(model_card_markdown(card)),
    }


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)  # resource_defs on an asset (its value's IO manager)

    @dg.asset(
        group_name=DEPLOY,
        # evaluation_report: the card of a full-rebuild candidate carries the evaluation of exactly that model, so the
        # evaluation must run first (the graph says what the code reads).
        deps=["fine_model", "image_embeddings", "evaluation_report"],
        code_version="candidate-v2",
        output_required=False,
        io_manager_key=STEP_IO_KEY,
        resource_defs={STEP_IO_KEY: workdir_json_io_manager},
        required_resource_keys={"storage", "loop"},  # resource_defs above: resources come through the context
        automation_condition=dg.AutomationCondition.eager(),
        kinds={"pytorch", "safetensors"},
        description=(
            "The next model to deploy, published as an immutable bundle with its model card: the newly trained model of a "
            "full rebuild, otherwise the deployed model extended with the images it has not seen (new SKUs attached to "
            "their nearest superclass, no retraining: the fast path). Not materialised when nothing changed."
        ),
    )
    def candidate_model(context: dg.AssetExecutionContext):
        storage: StorageResource = context.resources.storage
        loop: LabellingLoopResource = context.resources.loop
        ws = storage.workspace()
        result = build_candidate(ws, attach=loop.attach_rule, gate=loop.gate_config())
        inactive = result.details.get("inactive_new_skus") or []
        if inactive:
            context.log.warning(
                f"{len(inactive)} new SKU(s) stay inactive (fewer labelled images than min_shots, the tail tier's bar): "
                + ", ".join(f"{s['sku_id']} ({s.get('n_labelled', s['n_images'])})" for s in inactive[:20])
            )
        if result.model_id is None:
            context.log.info(f"no new candidate: {result.reason}")
            return
        record = record_candidate(ws, result)
        gate = result.gate
        context.log.info(
            f"candidate {result.model_id} ({result.source}): {result.reason}; gate passed={gate.passed if gate else None}"
        )
        fast = (result.card or {}).get("fast_path") or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.BetaWarning)  # data_version on an Output
            output = dg.Output(
                record,
                metadata={
                    **_lineage_metadata(result.card or {}),
                    "reason": result.reason,
                    "new_skus": dg.MetadataValue.json(fast.get("new_skus", [])),
                    "superclass_of_new": dg.MetadataValue.json(fast.get("superclass_of_new", {})),
                    "n_images_added": int(fast.get("n_images_added", 0)),
                    "inactive_new_skus": dg.MetadataValue.json(inactive),
                    "gate_passed_at_publication": bool(gate.passed) if gate else False,
                    "val_top1": float(gate.candidate_top1)
                    if gate and gate.candidate_top1 is not None
                    else dg.MetadataValue.null(),
                    "deployed_val_top1": float(gate.deployed_top1)
                    if gate and gate.deployed_top1 is not None
                    else dg.MetadataValue.null(),
                },
                data_version=dg.DataVersion(result.model_id),
            )
        yield output


GATE_CHECKS = {
    "gate_inputs_valid": "schema of the images table, encoder id and input width, training table hash, class coverage",
    "gate_accuracy_not_worse": "validation top-1 not below the deployed model's by more than gate_tolerance",
    "gate_no_dead_classes": "share of classes with zero validation accuracy <= gate_max_zero_accuracy_share",
    "gate_tail_floor": "share of validated tail-tier SKUs with zero validation accuracy <= "
    "gate_tail_max_zero_accuracy_share (the head is judged by the checks above, on head images only)",
}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            name,
            asset="candidate_model",
            blocking=True,
            description=desc,
            automation_condition=dg.AutomationCondition.eager(),
        )
        for name, desc in GATE_CHECKS.items()
    ],
    description="The deployment gate: a candidate that fails any of these is never deployed.",
    ins={"candidate": dg.AssetIn("candidate_model")},
)
def candidate_gate(candidate: dict, storage: StorageResource, loop: LabellingLoopResource):
    ws = storage.workspace()
    config = loop.gate_config()
    report, _ = judge(ws, candidate["model_id"], config, recorded=(candidate.get("details") or {}).get("gate_verdict"))
    common = {"candidate_model_id": report.candidate_id, "deployed_model_id": str(report.deployed_id)}
    yield dg.AssetCheckResult(
        check_name="gate_inputs_valid",
        passed=report.inputs_ok,
        metadata={
            **common,
            "problems": dg.MetadataValue.json(report.input_problems),
            "warnings": dg.MetadataValue.json(report.input_warnings),
        },
    )
    yield dg.AssetCheckResult(
        check_name="gate_accuracy_not_worse",
        passed=report.accuracy_ok,
        metadata={
            **common,
            "candidate_val_top1": report.candidate_top1
            if report.candidate_top1 is not None
            else dg.MetadataValue.null(),
            "deployed_val_top1": report.deployed_top1 if report.deployed_top1 is not None else dg.MetadataValue.null(),
            "deployed_basis": report.deployed_top1_basis,
            "tolerance": config.tolerance,
            "n_val": report.n_val,
            "reason": report.accuracy_reason or "ok",
        },
    )
    yield dg.AssetCheckResult(
        check_name="gate_no_dead_classes",
        passed=report.zero_ok,
        metadata={
            **common,
            "zero_accuracy_share": report.zero_accuracy_share,
            "allowed_share": config.max_zero_accuracy_share,
            "n_validated_classes": report.n_validated_classes,
            "zero_accuracy_classes": dg.MetadataValue.json(report.zero_accuracy_classes[:200]),
            "reason": report.zero_reason or "ok",
            "basis": report.basis,
        },
    )
    yield dg.AssetCheckResult(
        check_name="gate_tail_floor",
        passed=report.tail_ok,
        metadata={
            **common,
            "tail_zero_accuracy_share": report.tail_zero_accuracy_share,
            "allowed_share": config.tail_max_zero_accuracy_share,
            "n_validated_tail_classes": report.n_validated_tail_classes,
            "n_val_tail": report.n_val_tail,
            "tail_val_top1": report.tail_top1 if report.tail_top1 is not None else dg.MetadataValue.null(),
            "tail_zero_accuracy_classes": dg.MetadataValue.json(report.tail_zero_accuracy_classes[:200]),
            "reason": report.tail_reason or "ok",
        },
    )


@dg.asset(
    group_name=DEPLOY,
    code_version="deploy-v1",
    output_required=False,
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "The model that serves predictions (models/deployed.json -> an immutable, SHA-256 verified bundle). The latest "
        "candidate is promoted only when the deployment gate passes; a refused candidate leaves the previous model "
        "deployed and the metadata says why. `skurec predict` and `Recognizer.from_workdir` load this model."
    ),
)
def deployed_model(
    context: dg.AssetExecutionContext, candidate_model: dict, storage: StorageResource, loop: LabellingLoopResource
):
    ws = storage.workspace()
    store = ModelStore(ws)
    current = store.deployed_id()
    if candidate_model["model_id"] == current:
        context.log.info(f"{current} is already deployed")
        return
    recorded = (candidate_model.get("details") or {}).get("gate_verdict")
    decision = decide_deployment(ws, candidate_model["model_id"], loop.gate_config(), recorded=recorded)
    card = store.card(decision.model_id) if decision.model_id else {}
    if decision.deployed:
        context.log.info(f"deployed {decision.model_id} (previous: {current})")
    else:
        context.log.warning(
            f"candidate {decision.candidate_id} refused, {current} stays deployed: {decision.report.reasons}"
        )
    yield dg.MaterializeResult(
        metadata={
            **(_lineage_metadata(card) if card else {}),
            "decision": "deployed" if decision.deployed else "refused",
            "candidate_model_id": decision.candidate_id,
            "previous_model_id": str(current),
            "refusal_reasons": dg.MetadataValue.json(decision.report.reasons),
            "gate": dg.MetadataValue.json(decision.report.to_dict()),
        },
        data_version=dg.DataVersion(str(decision.model_id)),
    )


@dg.asset_check(
    asset=deployed_model, description="the deployed bundle's files still match the SHA-256 in its model card"
)
def deployed_bundle_intact(storage: StorageResource) -> dg.AssetCheckResult:
    store = ModelStore(storage.workspace())
    model_id = store.deployed_id()
    if model_id is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "nothing deployed"})
    try:
        files = store.load_files(model_id)
    except ModelStoreError as exc:
        return dg.AssetCheckResult(passed=False, metadata={"model_id": model_id, "reason": str(exc)})
    return dg.AssetCheckResult(passed=True, metadata={"model_id": model_id, "n_files": len(files)})
