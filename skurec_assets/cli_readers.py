"""The reading commands of ``skurec``: ``predict`` (Recognizer or edge bundle), ``export`` (the edge bundle) and
``lineage``, and the summaries the writing commands print from what a run left in the work directory
(:func:`print_summary`, :func:`print_deployed`). They never take the writer lock and never create a work directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from skurec import layout
from skurec_assets.cli_support import CliError, evaluation_table, print_error, shown, warn_small_validation


def existing_workspace(workdir: str):
    """The Workspace of an existing local work directory (readers never create one)."""
    from skurec.store.workspace import Workspace, is_remote

    if not is_remote(workdir) and not Path(workdir).is_dir():
        raise CliError(
            f"work directory {workdir} does not exist; pass --workdir (or set SKUREC_WORKDIR) to the one `skurec demo` "
            "built"
        )
    return Workspace(workdir if is_remote(workdir) else str(Path(workdir).resolve()))


def _print_queue_status(queue, n_queued: int) -> None:
    if queue is not None:
        print(
            shown(
                f"review queue: {n_queued} image(s) queued by this run, {len(queue)} item(s) waiting in "
                f"{queue.ws.root_uri}/{layout.REVIEW_QUEUE_DIR}"
            ),
            file=sys.stderr,
        )


def cmd_predict_bundle(args: argparse.Namespace) -> int:
    """``skurec predict --bundle DIR``: the edge runner (onnxruntime), the same JSON lines as the Recognizer."""
    from skurec.edge import BundleError, EdgeRunner
    from skurec.edge.runner import EdgeInputError

    if args.explain:
        print_error("--explain needs the model's exemplars: use it without --bundle")
        return 2
    try:
        runner = EdgeRunner(args.bundle, threads=args.threads, top_k=args.top_k, threshold=args.threshold)
    except (BundleError, ValueError) as exc:
        print_error(exc)
        return 2
    queue = None
    if args.review_queue:
        from skurec.serving.review_queue import ReviewQueue
        from skurec.store.workspace import Workspace

        queue = ReviewQueue(Workspace(str(Path(args.workdir).resolve())))
    return _answer_images(
        args.images, lambda image: runner.predict(image, review_queue=queue), EdgeInputError, runner.tiers, queue
    )


def _print_answer(out: dict) -> None:
    """One image's JSON line; the image's location and any error are shown without URI credentials."""
    for key in ("image", "error"):
        if isinstance(out.get(key), str):
            out[key] = shown(out[key])
    print(json.dumps(out, sort_keys=True), flush=True)


def _add_tier(out: dict, tiers: dict) -> None:
    """Which tier of the catalogue the answer came from (head / tail), on both predict paths."""
    if out.get("sku_id") in tiers:
        out["tier"] = tiers[out["sku_id"]]


def cmd_export(args: argparse.Namespace) -> int:
    """``skurec export --out DIR``: the edge bundle of a model, refused unless it passes the parity check."""
    from skurec.serving.edge_export import EdgeExportConfig, ParityError, export_from_workdir
    from skurec.serving.recognizer import RecognizerError

    existing_workspace(args.workdir)  # a reader: never creates the work directory
    config = EdgeExportConfig(max_images=args.max_images)
    checkpoint = args.checkpoint or os.environ.get("SKUREC_ENCODER_CHECKPOINT") or None
    try:
        manifest = export_from_workdir(
            Path(args.workdir).resolve(), args.out, args.model, checkpoint=checkpoint, config=config, quantize=args.int8
        )
    except (ParityError, RecognizerError, ValueError) as exc:
        print_error(exc)
        return 2
    print(
        json.dumps({"bundle": str(args.out), **{k: manifest[k] for k in ("model_id", "precision", "parity")}}, indent=2)
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from skurec.serving.recognizer import Recognizer, RecognizerError
    from skurec.serving.review_queue import ReviewQueue

    if args.bundle:
        return cmd_predict_bundle(args)
    ws = existing_workspace(args.workdir)
    checkpoint = args.checkpoint or os.environ.get("SKUREC_ENCODER_CHECKPOINT") or None
    rec = Recognizer.from_workdir(
        ws, args.model, device=args.device, checkpoint=checkpoint, top_k=args.top_k, threshold=args.threshold
    )
    queue = ReviewQueue(ws) if args.review_queue else None
    explain = args.exemplars if args.explain else False
    tiers = (rec.card.get("classes") or {}).get("tiers") or {}
    return _answer_images(
        args.images,
        lambda image: rec.predict(image, review_queue=queue, explain=explain).to_dict(),
        RecognizerError,
        tiers,
        queue,
    )


def _answer_images(images, answer, image_error: type[Exception], tiers: dict, queue) -> int:
    """One JSON line per image (``answer(image) -> dict``; an ``image_error`` becomes that image's error line), the
    review-queue status; exit status 1 when any image failed (the Recognizer and the edge runner answer alike)."""
    failed = queued = 0
    for image in images:
        try:
            out = answer(image)
            queued += bool(out.get("queued_for_review"))
            _add_tier(out, tiers)
        except image_error as exc:
            failed += 1
            out = {"image": image, "error": str(exc)}
        _print_answer(out)
    _print_queue_status(queue, queued)
    return 1 if failed else 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from skurec.deployment.card import model_card_markdown
    from skurec.deployment.training_table import table_from_parquet, write_csv
    from skurec.store.model_store import ModelStore

    ws = existing_workspace(args.workdir)
    store = ModelStore(ws)
    model_id = args.model_id or store.deployed_id()
    if model_id is None:
        raise CliError(
            f"no model is deployed in {ws.root_uri}; pass a model id (models: "
            f"{[r.model_id for r in store.list()][-5:]}) or build one with `skurec run --workdir {args.workdir}`"
        )
    card = store.card(model_id)
    if args.training_set:
        files = store.load_files(model_id)
        if layout.BUNDLE_TRAINING_TABLE not in files:
            raise CliError(f"model {model_id} has no training table in its bundle (published by an older skurec)")
        table = table_from_parquet(files[layout.BUNDLE_TRAINING_TABLE])
        write_csv(table, args.training_set)
        print(
            shown(f"wrote {len(table)} (image_id, sku_id, split, added_by) rows to {args.training_set}"),
            file=sys.stderr,
        )
        if not args.json:  # the CSV was asked for, not the card: print the card only with --json
            return 0
    deployed = store.deployed_id()
    if args.json:
        print(json.dumps({**card, "deployed": model_id == deployed}, indent=2, sort_keys=True, default=str))
    else:
        print(
            model_card_markdown(card)
            + f"\n_deployed: {'yes' if model_id == deployed else 'no (deployed: ' + str(deployed) + ')'}_"
        )
    return 0


def print_summary(workdir: Path) -> None:
    from skurec.store.workspace import Workspace

    ws = Workspace(str(workdir))
    s = layout.audit_summary(ws)
    if s:
        print(
            f"catalogue: {s['n_input_rows']} rows -> {s['n_accepted']} accepted, {s['n_quarantined']} quarantined; "
            f"{s['n_active_classes']} active classes ({s['n_filtered_classes']} below the training bar)"
        )
        tiers = s.get("tiers") or {}
        if tiers:
            print(
                f"tiers: head {tiers['head']['n_classes']} SKUs (>= {s.get('min_samples')} images), tail "
                f"{tiers['tail']['n_classes']} SKUs (>= {s.get('min_shots')}), untrained {tiers['untrained']['n_classes']}"
            )
    ev = layout.evaluation(ws)
    if ev:
        print("\n".join(evaluation_table(ev)))
        cov = ev.get("coverage") or {}
        for model, c in (cov.get("models") or {}).items():
            if model == "hierarchical_soft":
                print(
                    f"catalogue coverage: {model} answers {c['n_answerable']} of {cov['n_skus']} catalogue SKUs "
                    f"({c['share']:.1%}; {c['share_of_trainable']:.1%} of the {cov['n_trainable']} with >= min_shots)"
                )
    warn_small_validation(ws)
    if os.path.exists(ws.duckdb_path):
        print(f"DuckDB file: {ws.duckdb_path}")


def known_skus(settings: dict) -> list[str]:
    from skurec.store.workspace import Workspace

    ws = Workspace(settings["workdir"])
    if not ws.has_table("classes"):
        return []
    classes = ws.read_table("classes", columns=["sku_id", "status"])
    return sorted(classes.loc[classes["status"] == "active", "sku_id"].tolist())


def print_deployed(workdir: Path) -> None:
    from skurec.store.model_store import ModelStore
    from skurec.store.workspace import Workspace

    store = ModelStore(Workspace(str(workdir)))
    model_id = store.deployed_id()
    if model_id is None:
        print("no model deployed yet")
        return
    card = store.card(model_id)
    fast = card.get("fast_path") or {}
    print(
        f"deployed model: {model_id} ({card.get('source')}, {card.get('classes', {}).get('n')} classes"
        + (f", new SKUs {fast.get('new_skus')}" if fast.get("new_skus") else "")
        + ")"
    )
    print(f"try it:  skurec predict --workdir {workdir} IMAGE.jpg     lineage:  skurec lineage --workdir {workdir}")
