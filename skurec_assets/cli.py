"""The ``skurec`` command line.

``skurec demo``     build a synthetic catalogue (or use ``--catalogue``) and materialise the whole graph via Dagster.
``skurec demo --add-batch``  drop one more labelled batch (with a new SKU) into the drop location and run the loop.
``skurec ui``       open the Dagster UI (webserver + daemon) on the same work directory and Dagster instance.
``skurec run``      materialise the whole graph for the work directory's saved settings.
``skurec predict IMAGE...``  recognise images with the deployed model (one JSON line per image).
``skurec lineage [MODEL_ID]``  print a model's card (default: the deployed model).

It lives in the Dagster layer because ``demo``/``run``/``ui`` drive Dagster; ``predict`` and ``lineage`` only call
the framework-free core (``skurec.serving``, ``skurec.deployment``) and import Dagster lazily, never at start-up.
A work directory remembers its settings in ``<workdir>/skurec.json`` so that ``ui`` and later runs use the same
catalogue and encoder; its Dagster instance (SQLite run/event storage) lives in ``<workdir>/dagster_home``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from skurec import layout
from skurec.layout import SETTINGS_FILE

DEMO_ENCODER = "efficientnet_lite2"
DEMO_LAYERS = (
    2  # Grocery Store, EfficientNet-Lite2, flat logistic regression: val 0.750 -> 0.780 (benchmarks/README.md)
)
REPO_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("skurec")


def _settings_env(settings: dict) -> dict[str, str]:
    env = {
        "SKUREC_WORKDIR": settings["workdir"],
        "SKUREC_CATALOGUE": settings["catalogue"],
        "SKUREC_ENCODER": settings["encoder"],
        "SKUREC_MIN_SAMPLES": str(settings.get("min_samples", 50)),
        "DAGSTER_HOME": settings["dagster_home"],
    }
    for key, var in (("encoder_checkpoint", "SKUREC_ENCODER_CHECKPOINT"), ("drop_location", "SKUREC_DROP_LOCATION")):
        if settings.get(key):
            env[var] = settings[key]
    env["SKUREC_ENCODER_LAYERS"] = str(int(settings.get("encoder_layers") or 0))  # 0: the final embedding only
    return env


def _prepare_workdir(workdir: Path, settings_update: dict) -> dict:
    """Create the work directory, its Dagster home and saved settings; export them to this process."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / SETTINGS_FILE
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings.update({k: v for k, v in settings_update.items() if v is not None})
    settings["workdir"] = str(workdir)
    settings.setdefault("dagster_home", str(workdir / layout.DAGSTER_HOME_DIR))
    settings.setdefault("drop_location", str(workdir / layout.DROP_DIR))
    home = Path(settings["dagster_home"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        if (REPO_ROOT / "dagster.yaml").exists():  # a source checkout: the project's instance settings
            shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
        else:  # an installed wheel: Dagster's defaults (SQLite storage under DAGSTER_HOME)
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    os.replace(tmp, path)
    os.environ.update(_settings_env(settings))
    return settings


def _load_settings(workdir: Path) -> dict:
    path = workdir.resolve() / SETTINGS_FILE
    if not path.exists():
        raise SystemExit(
            f"{workdir} is not a skurec work directory (no {SETTINGS_FILE}); run `skurec demo --workdir {workdir}` first"
        )
    return _prepare_workdir(workdir, {})


def materialize_all(settings: dict, selection: str | None = None) -> bool:
    """Run the whole asset graph (or a selection) in-process against the work directory's Dagster instance."""
    import dagster as dg

    from skurec_assets.definitions import build_definitions
    from skurec_resources import default_resources

    defs = build_definitions(default_resources())
    job = defs.resolve_job_def("full_rebuild")
    instance = dg.DagsterInstance.get()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            log.info("materialised %s", event.asset_key.to_user_string())
    return result.success


def cmd_demo(args: argparse.Namespace) -> int:
    if args.add_batch:
        return cmd_add_batch(args)
    workdir = Path(args.workdir).resolve()
    catalogue = args.catalogue
    if catalogue is None:
        from skurec.demo import make_demo_catalogue

        cat_dir = workdir / layout.DEMO_CATALOGUE_DIR
        print(f"rendering the synthetic demo catalogue into {cat_dir} ...", flush=True)
        catalogue = str(
            make_demo_catalogue(
                cat_dir,
                n_families=args.families,
                skus_per_family=args.skus_per_family,
                images_per_sku=args.images_per_sku,
                seed=args.seed,
            )
        )
    settings = _prepare_workdir(
        workdir,
        {
            "catalogue": catalogue,
            "encoder": args.encoder,
            "encoder_checkpoint": args.checkpoint,
            "encoder_layers": args.layers,
            "min_samples": args.min_samples,
            "demo": None
            if args.catalogue
            else {
                "families": args.families,
                "skus_per_family": args.skus_per_family,
                "images_per_sku": args.images_per_sku,
                "seed": args.seed,
            },
        },
    )
    print(f"materialising the skurec graph (encoder {settings['encoder']}) in {workdir} ...", flush=True)
    ok = materialize_all(settings)
    _print_summary(workdir)
    if ok:
        print(f"\nOpen the UI on this work directory:  skurec ui --workdir {args.workdir}")
    return 0 if ok else 1


def _print_summary(workdir: Path) -> None:
    from skurec.store.workspace import Workspace

    ws = Workspace(str(workdir))
    s = layout.audit_summary(ws)
    if s:
        print(
            f"catalogue: {s['n_input_rows']} rows -> {s['n_accepted']} accepted, {s['n_quarantined']} quarantined; "
            f"{s['n_active_classes']} active classes ({s['n_filtered_classes']} below min_samples)"
        )
    ev = layout.evaluation(ws)
    if ev:
        for variant, v in ev.get("variants", {}).items():
            models = ", ".join(f"{m} {r['top1']:.3f}" for m, r in v.get("models", {}).items())
            print(f"top-1 [{variant}: {v.get('n_classes')} classes, {v.get('n_images')} images]: {models}")
    print(f"DuckDB file: {ws.duckdb_path}")


def run_labelling_loop(settings: dict) -> bool:
    """One synchronous pass of the labelling loop (batch sensor + automation) on the work directory's instance."""
    import dagster as dg

    from skurec_assets.definitions import build_definitions
    from skurec_assets.inprocess import load_cursors, run_loop_in_process, save_cursors
    from skurec_resources import default_resources

    defs = build_definitions(default_resources())
    instance = dg.DagsterInstance.get()
    sensor_cursor, automation_cursor = load_cursors(settings["dagster_home"])
    result = run_loop_in_process(defs, instance, sensor_cursor=sensor_cursor, automation_cursor=automation_cursor)
    save_cursors(settings["dagster_home"], result.sensor_cursor, result.automation_cursor)
    skip = getattr(result.sensor_result, "skip_reason", None)
    if skip is not None:
        print(f"batch sensor: {getattr(skip, 'skip_message', skip)}")
    for name, run in result.batch_runs.items():
        print(f"ingested batch {name}: run {'succeeded' if run.success else 'FAILED'}")
    for keys, run in result.automation_runs:
        print(f"automation run [{', '.join(keys)}]: {'succeeded' if run.success else 'FAILED (see the UI for why)'}")
    return result.success


def cmd_add_batch(args: argparse.Namespace) -> int:
    """Drop one labelled batch (a new SKU + fresh photos of two known SKUs) and run the loop, or leave it to the UI."""
    from skurec.demo import make_labelled_batch

    workdir = Path(args.workdir)
    settings = _load_settings(workdir)
    drop = Path(settings["drop_location"])
    drop.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in drop.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    name = args.batch_name or f"batch-{len(existing) + 1:03d}"
    demo = settings.get("demo") or {}
    min_samples = int(settings.get("min_samples", 50))
    known = _known_skus(settings)
    # The new SKU needs >= min_samples accepted images to become active (trained on); leave room for the val split.
    images_per_new = max(args.images_per_sku, min_samples + max(6, min_samples // 5))
    manifest = make_labelled_batch(
        drop,
        name,
        new_skus=1,
        images_per_new_sku=images_per_new,
        extra_images_for=known[:2],
        images_per_existing=10,
        seed=int(demo.get("seed", 0)) + len(existing) + 1,
        n_families=int(demo.get("families", 8)),
        skus_per_family=int(demo.get("skus_per_family", 4)),
    )
    print(
        f"dropped labelled batch {name} ({images_per_new} images of a new SKU + 10 each of {known[:2]}) at {manifest}"
    )
    if args.no_run:
        print(
            "the labelled_batch_sensor picks it up within 30 s: watch it in the UI (skurec ui --workdir "
            f"{args.workdir}) under Assets > labelled_batch and the candidate_model / deployed_model assets"
        )
        return 0
    ok = run_labelling_loop(settings)
    _print_deployed(Path(settings["workdir"]))
    return 0 if ok else 1


def _known_skus(settings: dict) -> list[str]:
    from skurec.store.workspace import Workspace

    ws = Workspace(settings["workdir"])
    if not ws.has_table("classes"):
        return []
    classes = ws.read_table("classes", columns=["sku_id", "status"])
    return sorted(classes.loc[classes["status"] == "active", "sku_id"].tolist())


def _print_deployed(workdir: Path) -> None:
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


def _print_queue_status(queue, n_queued: int) -> None:
    if queue is not None:
        print(
            f"review queue: {n_queued} image(s) queued by this run, {len(queue)} item(s) waiting in "
            f"{queue.ws.root_uri}/{layout.REVIEW_QUEUE_DIR}",
            file=sys.stderr,
        )


def cmd_predict_bundle(args: argparse.Namespace) -> int:
    """``skurec predict --bundle DIR``: the edge runner (onnxruntime), the same JSON lines as the Recognizer."""
    from skurec.edge import BundleError, EdgeRunner
    from skurec.edge.runner import EdgeInputError

    if args.explain:
        print("error: --explain needs the model's exemplars: use it without --bundle", file=sys.stderr)
        return 2
    try:
        runner = EdgeRunner(args.bundle, threads=args.threads, top_k=args.top_k, threshold=args.threshold)
    except (BundleError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    queue = None
    if args.review_queue:
        from skurec.serving.review_queue import ReviewQueue
        from skurec.store.workspace import Workspace

        queue = ReviewQueue(Workspace(str(Path(args.workdir).resolve())))
    failed = queued = 0
    for image in args.images:
        try:
            out = runner.predict(image, review_queue=queue)
            queued += bool(out.get("queued_for_review"))
        except EdgeInputError as exc:
            failed += 1
            out = {"image": image, "error": str(exc)}
        print(json.dumps(out, sort_keys=True), flush=True)
    _print_queue_status(queue, queued)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    """``skurec export --out DIR``: the edge bundle of a model, refused unless it passes the parity check."""
    from skurec.deployment.edge_export import EdgeExportConfig, ParityError, export_from_workdir
    from skurec.serving.recognizer import RecognizerError

    config = EdgeExportConfig(max_images=args.max_images)
    checkpoint = args.checkpoint or os.environ.get("SKUREC_ENCODER_CHECKPOINT") or None
    try:
        manifest = export_from_workdir(
            Path(args.workdir).resolve(), args.out, args.model, checkpoint=checkpoint, config=config, quantize=args.int8
        )
    except (ParityError, RecognizerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps({"bundle": str(args.out), **{k: manifest[k] for k in ("model_id", "precision", "parity")}}, indent=2)
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from skurec.serving.recognizer import Recognizer, RecognizerError
    from skurec.serving.review_queue import ReviewQueue
    from skurec.store.workspace import Workspace

    if args.bundle:
        return cmd_predict_bundle(args)
    ws = Workspace(str(Path(args.workdir).resolve()))
    try:
        checkpoint = args.checkpoint or os.environ.get("SKUREC_ENCODER_CHECKPOINT") or None
        rec = Recognizer.from_workdir(
            ws, args.model, device=args.device, checkpoint=checkpoint, top_k=args.top_k, threshold=args.threshold
        )
    except (RecognizerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    queue = ReviewQueue(ws) if args.review_queue else None
    failed = queued = 0
    for image in args.images:
        try:
            out = rec.predict(image, review_queue=queue, explain=args.exemplars if args.explain else False).to_dict()
            queued += bool(out.get("queued_for_review"))
        except RecognizerError as exc:
            failed += 1
            out = {"image": image, "error": str(exc)}
        print(json.dumps(out, sort_keys=True), flush=True)
    _print_queue_status(queue, queued)
    return 1 if failed else 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from skurec.deployment.card import model_card_markdown
    from skurec.deployment.training_table import table_from_parquet
    from skurec.store.model_store import ModelStore, ModelStoreError
    from skurec.store.workspace import Workspace

    ws = Workspace(str(Path(args.workdir).resolve()))
    store = ModelStore(ws)
    model_id = args.model_id or store.deployed_id()
    if model_id is None:
        print(
            f"error: no model is deployed in {ws.root_uri}; pass a model id (models: "
            f"{[r.model_id for r in store.list()][-5:]})",
            file=sys.stderr,
        )
        return 2
    try:
        card = store.card(model_id)
        files = store.load_files(model_id) if args.training_set else None
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.training_set:
        table = table_from_parquet(files[layout.BUNDLE_TRAINING_TABLE])
        table.to_csv(args.training_set, index=False)
        print(f"wrote {len(table)} (image_id, sku_id, split, added_by) rows to {args.training_set}", file=sys.stderr)
    deployed = store.deployed_id()
    if args.json:
        print(json.dumps({**card, "deployed": model_id == deployed}, indent=2, sort_keys=True, default=str))
    else:
        print(
            model_card_markdown(card)
            + f"\n_deployed: {'yes' if model_id == deployed else 'no (deployed: ' + str(deployed) + ')'}_"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load_settings(Path(args.workdir))
    return 0 if materialize_all(settings) else 1


def cmd_ui(args: argparse.Namespace) -> int:
    from skurec_assets.ui import dagster_dev_command, run_dagster_dev

    settings = _load_settings(Path(args.workdir))
    cmd = dagster_dev_command(args.host, args.port)
    print(f"Dagster UI on http://{args.host}:{args.port}  (DAGSTER_HOME={settings['dagster_home']})", flush=True)
    # Supervised, not exec'd: Ctrl-C / SIGTERM stop the webserver, the daemon and the code servers within seconds.
    return run_dagster_dev(cmd, env=os.environ.copy())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skurec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build a demo catalogue and materialise the whole pipeline offline")
    d.add_argument("--workdir", default="demo", help="work directory (created if missing)")
    d.add_argument(
        "--catalogue", help="use this folder or manifest (local path or s3:// URI) instead of the synthetic one"
    )
    d.add_argument(
        "--encoder",
        default=DEMO_ENCODER,
        help="encoder name (default: %(default)s, real ImageNet weights shipped offline)",
    )
    d.add_argument("--checkpoint", help="local weights file for the encoder (e.g. DINOv2 for dinov2_vits14)")
    d.add_argument(
        "--layers",
        type=int,
        default=DEMO_LAYERS,
        help="also GeM-pool the encoder's last N intermediate stages (default %(default)s: chosen on the "
        "Grocery Store validation list, about 1.03x the embedding cost; 0 = final embedding only)",
    )
    d.add_argument("--min-samples", type=int, default=50, help="classes with fewer accepted images are not trained on")
    d.add_argument("--families", type=int, default=8)
    d.add_argument("--skus-per-family", type=int, default=4)
    d.add_argument("--images-per-sku", type=int, default=60)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--add-batch",
        action="store_true",
        help="drop one more labelled batch (a new SKU) into an existing demo's drop location and run the loop",
    )
    d.add_argument("--batch-name", help="with --add-batch: the batch folder name (default batch-NNN)")
    d.add_argument(
        "--no-run",
        action="store_true",
        help="with --add-batch: only drop the batch; the sensor of a running `skurec ui` ingests it",
    )
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="materialise the whole graph for an existing work directory")
    r.add_argument("--workdir", default=".")
    r.set_defaults(func=cmd_run)

    u = sub.add_parser("ui", help="open the Dagster UI (webserver + daemon) on a work directory")
    u.add_argument("--workdir", default="demo")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=cmd_ui)

    default_workdir = os.environ.get("SKUREC_WORKDIR", "demo")
    pr = sub.add_parser("predict", help="recognise images with the deployed model (one JSON line per image)")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--workdir", default=default_workdir, help="work directory (default: $SKUREC_WORKDIR or demo)")
    pr.add_argument("--model", help="model id (default: the deployed model)")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="value of the model's unknown score (card recognition.unknown_score: the calibrated top-1 probability, or "
        "the LDA energy) below which the answer is 'unknown' (default: the model's calibrated threshold, else 0.5)",
    )
    pr.add_argument("--review-queue", action="store_true", help="queue unknown predictions for labelling")
    pr.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    pr.add_argument("--checkpoint", help="encoder weights file, for checkpoint-based encoders")
    pr.add_argument("--bundle", help="answer with this edge bundle (onnxruntime; see `skurec export`) instead of torch")
    pr.add_argument("--threads", type=int, default=1, help="with --bundle: onnxruntime threads (default 1)")
    pr.add_argument(
        "--explain",
        action="store_true",
        help="also print, for each top-k SKU, its nearest training images (ids, URIs, similarity)",
    )
    pr.add_argument("--exemplars", type=int, default=3, help="with --explain: training images per SKU (default 3)")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write the edge bundle of a model (ONNX, parity-checked on validation images)")
    ex.add_argument("--workdir", default=default_workdir, help="work directory (default: $SKUREC_WORKDIR or demo)")
    ex.add_argument("--model", help="model id (default: the deployed model)")
    ex.add_argument("--out", required=True, help="bundle directory to write (replaced)")
    ex.add_argument(
        "--int8",
        nargs="?",
        const="static",
        choices=["static", "dynamic"],
        help="int8 encoder: static (default; activations calibrated on training images) or dynamic quantisation; "
        "refused above 0.5 point of validation top-1 loss",
    )
    ex.add_argument("--max-images", type=int, default=None, help="check parity on at most N validation images")
    ex.add_argument("--checkpoint", help="encoder weights file, for checkpoint-based encoders")
    ex.set_defaults(func=cmd_export)

    li = sub.add_parser("lineage", help="print a model card: data, batches, encoder, code, config, evaluation")
    li.add_argument("model_id", nargs="?", help="model id (default: the deployed model)")
    li.add_argument("--workdir", default=default_workdir, help="work directory (default: $SKUREC_WORKDIR or demo)")
    li.add_argument("--json", action="store_true", help="print the JSON card instead of Markdown")
    li.add_argument("--training-set", metavar="CSV", help="also write the (image_id, sku_id, split) table to CSV")
    li.set_defaults(func=cmd_lineage)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("SKUREC_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("dagster.automation_condition_tester", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
