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
catalogue and encoder; its Dagster instance (SQLite run/event storage) lives in ``<workdir>/dagster_home``. Paths
inside the work directory are stored relative to it (a copied work directory never writes into the original), and
a location carrying credentials (a pre-signed URL) is stored redacted.

Commands that write (``demo``, ``run``, ``demo --add-batch``) hold the work directory's writer lock
(:mod:`skurec.store.lock`) and first repair what a killed run left (:mod:`skurec_assets.recovery`); ``predict`` and
``lineage`` only read and never wait. Every error the user can fix is printed as one line ``error: ...`` naming the
remedy, with exit status 2 (``--verbose`` shows tracebacks and Dagster's debug events).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import traceback
from pathlib import Path

from skurec import layout
from skurec.layout import SETTINGS_FILE
from skurec_assets.cli_readers import cmd_export, cmd_lineage, cmd_predict, known_skus, print_deployed, print_summary
from skurec_assets.cli_support import (
    CliError,
    RedactingFormatter,
    check_catalogue,
    check_encoder,
    logger_config,
    no_space_message,
    print_error,
    resolved_settings,
    shown,
    stored_settings,
    user_error,
    with_compact_console,
)

DEMO_ENCODER = "efficientnet_lite2"
DEMO_LAYERS = (
    2  # Grocery Store, EfficientNet-Lite2, flat logistic regression: val 0.750 -> 0.780 (benchmarks/README.md)
)
REPO_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("skurec")


def _settings_env(settings: dict) -> dict[str, str]:
    from skurec.catalogue.audit import AuditConfig

    env = {
        "SKUREC_WORKDIR": settings["workdir"],
        "SKUREC_CATALOGUE": settings["catalogue"],
        "SKUREC_ENCODER": settings["encoder"],
        "SKUREC_MIN_SAMPLES": str(settings.get("min_samples", AuditConfig.min_samples)),
        "SKUREC_MIN_SHOTS": str(settings.get("min_shots", AuditConfig.min_shots)),
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
    try:
        stored = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON ({exc}); fix it, or delete it and run `skurec demo` again") from None
    settings = resolved_settings(workdir, stored)
    settings.update({k: v for k, v in settings_update.items() if v is not None})
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
    tmp.write_text(json.dumps(stored_settings(workdir, settings), indent=2, sort_keys=True))
    os.replace(tmp, path)
    os.environ.update(_settings_env(settings))
    return settings


def _load_settings(workdir: Path) -> dict:
    path = workdir.resolve() / SETTINGS_FILE
    if not path.exists():
        raise CliError(
            f"{workdir} is not a skurec work directory (no {SETTINGS_FILE}); build one first with "
            f"`skurec demo --workdir {workdir}` (add --catalogue PATH for your own catalogue)"
        )
    return _prepare_workdir(workdir, {})


def materialize_all(settings: dict, selection: str | None = None, verbose: bool = False) -> bool:
    """Run the whole asset graph (or a selection) in-process against the work directory's Dagster instance."""
    import dagster as dg

    from skurec_assets.definitions import build_definitions
    from skurec_assets.recovery import process_tags
    from skurec_resources import default_resources

    defs = build_definitions(default_resources())
    job = with_compact_console(defs.resolve_job_def("full_rebuild"))
    instance = dg.DagsterInstance.get()
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, tags=process_tags(), run_config=logger_config(verbose)
    )
    done = [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()]
    print(f"materialised {len(done)} asset(s)" + (f": {', '.join(done)}" if verbose else ""), flush=True)
    if not result.success:
        _report_failure(result, Path(settings["workdir"]))
    return result.success


def _report_failure(result, workdir: Path) -> None:
    """One line per failed step (the first line of its error), and ENOSPC named as such."""
    for event in result.all_events:
        if event.event_type_value != "STEP_FAILURE":
            continue
        err = getattr(event.event_specific_data, "error", None)
        text = (getattr(err, "message", "") or "").strip()
        first = text.splitlines()[0] if text else "failed"
        print(shown(f"step {event.step_key} failed: {first}"), file=sys.stderr, flush=True)
        if any(k in text.lower() for k in ("no space left", "disk i/o error", "database or disk is full")):
            print_error(no_space_message(workdir))


def _recover(settings: dict, verbose: bool = False) -> None:
    """Under the writer lock: repair what a killed run left (history, STARTED runs, step hand-offs, temp files)."""
    import dagster as dg

    from skurec.store.workspace import Workspace
    from skurec_assets.recovery import recover_workdir

    done = recover_workdir(Workspace(settings["workdir"]), dg.DagsterInstance.get())
    if verbose or any(done.get(k) for k in ("history_reconciled", "failed_runs", "temp_files_removed")):
        log.warning("repaired what an interrupted run left: %s", done)


def _local_workdir(workdir: Path | str) -> Path:
    """The work directory of a command that builds: a local folder. A URI is refused before ``Path()`` turns it into
    local folders named after it (its credentials included)."""
    from skurec.store.workspace import is_remote

    if is_remote(str(workdir)):
        raise CliError(
            f"the commands that build (demo, run, ui) need a local work directory; got {workdir}: pass --workdir "
            "with a local folder"
        )
    return Path(workdir).resolve()


def _locked(workdir: Path | str):
    from skurec.store.lock import writer_lock

    return writer_lock(_local_workdir(workdir), " ".join(["skurec", *sys.argv[1:]]))


def cmd_demo(args: argparse.Namespace) -> int:
    if args.add_batch:
        return cmd_add_batch(args)
    workdir = _local_workdir(args.workdir)
    catalogue = args.catalogue
    check_catalogue(catalogue)
    check_encoder(args.encoder, args.checkpoint, args.layers)
    # The lock is taken before anything is written (the catalogue, skurec.json, the Dagster instance's SQLite files).
    with _locked(workdir):
        return _demo_locked(args, workdir, catalogue)


def _demo_locked(args: argparse.Namespace, workdir: Path, catalogue: str | None) -> int:
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
            "min_shots": args.min_shots,
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
    _recover(settings, args.verbose)
    print(f"materialising the skurec graph (encoder {settings['encoder']}) in {workdir} ...", flush=True)
    ok = materialize_all(settings, verbose=args.verbose)
    print_summary(workdir)
    if ok:
        print(f"\nOpen the UI on this work directory:  skurec ui --workdir {args.workdir}")
    return 0 if ok else 1


def run_labelling_loop(settings: dict, verbose: bool = False) -> bool:
    """One synchronous pass of the labelling loop (batch sensor + automation) on the work directory's instance."""
    import dagster as dg

    from skurec_assets.definitions import build_definitions
    from skurec_assets.loop_pass import load_cursors, run_loop_in_process, save_cursors
    from skurec_resources import default_resources

    defs = build_definitions(default_resources())
    instance = dg.DagsterInstance.get()
    sensor_cursor, automation_cursor = load_cursors(settings["dagster_home"])
    result = run_loop_in_process(
        defs,
        instance,
        sensor_cursor=sensor_cursor,
        automation_cursor=automation_cursor,
        run_config=logger_config(verbose),
        wrap_job=with_compact_console,
    )
    save_cursors(settings["dagster_home"], result.sensor_cursor, result.automation_cursor)
    skip = getattr(result.sensor_result, "skip_reason", None)
    if skip is not None:
        print(shown(f"batch sensor: {getattr(skip, 'skip_message', skip)}"))
    for name, run in result.batch_runs.items():
        print(f"ingested batch {name}: run {'succeeded' if run.success else 'FAILED'}")
    for keys, run in result.automation_runs:
        print(f"automation run [{', '.join(keys)}]: {'succeeded' if run.success else 'FAILED (see the UI for why)'}")
    return result.success


def cmd_add_batch(args: argparse.Namespace) -> int:
    """Drop one labelled batch (a new SKU + fresh photos of two known SKUs) and run the loop, or leave it to the UI."""
    workdir = Path(args.workdir)
    # --no-run only drops files into the drop location (manifest last) for the sensor of a running UI, which holds
    # the writer lock; running the loop here writes the work directory, so it needs the lock.
    with contextlib.nullcontext() if args.no_run else _locked(workdir):
        settings = _load_settings(workdir)
        if not settings.get("demo"):
            raise CliError(
                f"--add-batch renders a synthetic batch for a demo work directory, but {workdir} was built from the "
                f"catalogue {settings.get('catalogue')}; drop your own labelled batch (a folder with manifest.csv and "
                f"its images) into {settings['drop_location']} and run `skurec run --workdir {workdir}` or the UI"
            )
        if not args.no_run:
            _recover(settings, args.verbose)
        return _add_batch_locked(args, workdir, settings)


def _add_batch_locked(args: argparse.Namespace, workdir: Path, settings: dict) -> int:
    from skurec.demo import make_labelled_batch

    drop = Path(settings["drop_location"])
    drop.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in drop.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    name = args.batch_name or f"batch-{len(existing) + 1:03d}"
    demo = settings.get("demo") or {}
    from skurec.catalogue.audit import AuditConfig

    min_samples = int(settings.get("min_samples", AuditConfig.min_samples))
    known = known_skus(settings)
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
    ok = run_labelling_loop(settings, verbose=args.verbose)
    print_deployed(Path(settings["workdir"]))
    return 0 if ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    with _locked(args.workdir):
        settings = _load_settings(Path(args.workdir))
        check_catalogue(settings.get("catalogue"))
        _recover(settings, args.verbose)
        ok = materialize_all(settings, verbose=args.verbose)
    print_summary(Path(settings["workdir"]))
    return 0 if ok else 1


def cmd_ui(args: argparse.Namespace) -> int:
    from skurec_assets.ui import PortBusyError, check_port_free, dagster_dev_command, run_dagster_dev

    # The UI's daemon writes the work directory (sensors, automation, launched runs): it holds the writer lock while
    # it is up, so `skurec run` / `demo` refuse instead of colliding (`demo --add-batch --no-run` feeds its sensor).
    with _locked(args.workdir):
        settings = _load_settings(Path(args.workdir))
        try:
            check_port_free(args.host, args.port)
        except PortBusyError as exc:
            raise CliError(str(exc)) from None
        _recover(settings, args.verbose)
        cmd = dagster_dev_command(args.host, args.port)
        print(f"Dagster UI on http://{args.host}:{args.port}  (DAGSTER_HOME={settings['dagster_home']})", flush=True)
        # Supervised, not exec'd: Ctrl-C / SIGTERM stop the webserver, the daemon and the code servers within seconds.
        return run_dagster_dev(cmd, env=os.environ.copy())


def _encoder_names() -> str:
    try:
        from skurec.encoders import ENCODERS

        return ", ".join(sorted(ENCODERS))
    except Exception:  # the help must print even when an optional encoder family fails to import
        return "see the README's encoder table"


WORKDIR_HELP = "work directory (default: $SKUREC_WORKDIR, else demo)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skurec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="show Dagster's debug events and full tracebacks of errors"
    )
    sub = p.add_subparsers(dest="command", required=True)
    default_workdir = os.environ.get("SKUREC_WORKDIR", "demo")
    for add_command in (_add_demo, _add_run, _add_ui, _add_predict, _add_export, _add_lineage):
        add_command(sub, common, default_workdir)
    return p


def _add_demo(sub, common: argparse.ArgumentParser, default_workdir: str) -> None:
    """``skurec demo``: what to build on (catalogue, encoder, training bars), the synthetic catalogue, --add-batch."""
    from skurec.catalogue.audit import AuditConfig

    d = sub.add_parser(
        "demo", parents=[common], help="build a demo catalogue and materialise the whole pipeline offline"
    )
    d.add_argument("--workdir", default=default_workdir, help=WORKDIR_HELP + "; created if missing")
    d.add_argument(
        "--catalogue",
        help="use this catalogue instead of the synthetic one: a folder ROOT/<sku_id>/<images> or a manifest "
        "(.csv / .parquet with columns image_uri, sku_id), local path or s3:// URI",
    )
    d.add_argument(
        "--encoder",
        default=DEMO_ENCODER,
        metavar="NAME",
        help=f"frozen encoder (default: %(default)s, real ImageNet weights shipped offline); one of: {_encoder_names()}",
    )
    d.add_argument("--checkpoint", help="local weights file for the encoder (e.g. DINOv2 for dinov2_vits14)")
    d.add_argument(
        "--layers",
        type=int,
        default=DEMO_LAYERS,
        help="also GeM-pool the encoder's last N intermediate stages (default %(default)s: chosen on the "
        "Grocery Store validation list, about 1.03x the embedding cost; 0 = final embedding only; tiny_random_vit "
        "needs 0)",
    )
    d.add_argument(
        "--min-samples",
        type=int,
        default=_default_min_samples(),
        help="labelled images a class needs for the head tier (default %(default)s)",
    )
    d.add_argument(
        "--min-shots",
        type=int,
        default=AuditConfig.min_shots,
        help="labelled images a class needs for the tail tier (few-shot SKUs, same model); fewer: not trained on",
    )
    _add_synthetic_catalogue_options(d)
    _add_batch_options(d)
    d.set_defaults(func=cmd_demo)


def _add_synthetic_catalogue_options(d: argparse.ArgumentParser) -> None:
    d.add_argument("--families", type=int, default=8, help="synthetic catalogue: product families (default 8)")
    d.add_argument("--skus-per-family", type=int, default=4, help="synthetic catalogue: look-alike SKUs per family")
    d.add_argument("--images-per-sku", type=int, default=60, help="synthetic catalogue: images per SKU (default 60)")
    d.add_argument("--seed", type=int, default=0, help="synthetic catalogue: random seed (default 0)")


def _add_batch_options(d: argparse.ArgumentParser) -> None:
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


def _add_run(sub, common: argparse.ArgumentParser, default_workdir: str) -> None:
    r = sub.add_parser("run", parents=[common], help="materialise the whole graph for an existing work directory")
    r.add_argument("--workdir", default=default_workdir, help=WORKDIR_HELP + "; must exist (skurec demo builds one)")
    r.set_defaults(func=cmd_run)


def _add_ui(sub, common: argparse.ArgumentParser, default_workdir: str) -> None:
    u = sub.add_parser("ui", parents=[common], help="open the Dagster UI (webserver + daemon) on a work directory")
    u.add_argument("--workdir", default=default_workdir, help=WORKDIR_HELP)
    u.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    u.add_argument("--port", type=int, default=3000, help="port of the web UI (default %(default)s)")
    u.set_defaults(func=cmd_ui)


def _add_predict(sub, common: argparse.ArgumentParser, default_workdir: str) -> None:
    pr = sub.add_parser(
        "predict", parents=[common], help="recognise images with the deployed model (one JSON line per image)"
    )
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    pr.add_argument("--workdir", default=default_workdir, help=WORKDIR_HELP)
    pr.add_argument("--model", help="model id (default: the deployed model)")
    pr.add_argument("--top-k", type=int, default=3, help="how many SKUs to list per image (default %(default)s)")
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


def _add_export(sub, common: argparse.ArgumentParser, default_workdir: str) -> None:
    ex = sub.add_parser(
        "export",
        parents=[common],
        help="write the edge bundle of a model (ONNX, parity-checked on validation images)",
    )
    ex.add_argument("--workdir", default=default_workdir, help=WORKDIR_HELP)
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


def _add_lineage(sub, common: argparse.ArgumentParser, default_workdir: str) -> None:
    li = sub.add_parser(
        "lineage", parents=[common], help="print a model card: data, batches, encoder, code, config, evaluation"
    )
    li.add_argument("model_id", nargs="?", help="model id (default: the deployed model)")
    li.add_argument("--workdir", default=default_workdir, help=WORKDIR_HELP)
    li.add_argument("--json", action="store_true", help="print the JSON card instead of Markdown")
    li.add_argument(
        "--training-set",
        metavar="CSV",
        help="write the (image_id, sku_id, split, added_by) table to CSV instead of printing the card "
        "(cells starting with = + - @ are prefixed with ' so spreadsheets do not run them; docs/security.md)",
    )
    li.set_defaults(func=cmd_lineage)


def _default_min_samples() -> int:
    from skurec.catalogue.audit import AuditConfig

    return AuditConfig.min_samples


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    level = "DEBUG" if verbose else os.environ.get("SKUREC_LOG_LEVEL", "WARNING")
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in ("dagster.automation_condition_tester", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except Exception as exc:
        message = user_error(exc, getattr(args, "workdir", None))
        if verbose or message is None and os.environ.get("SKUREC_TRACEBACK"):  # the traceback, as Python prints it
            print(shown(traceback.format_exc()), end="", file=sys.stderr, flush=True)
            return 1
        if message is None:  # a bug: still one line, with how to see more
            message = f"{type(exc).__name__}: {' '.join(str(exc).split())} (run again with --verbose for the traceback)"
            print_error(message)
            return 1
        print_error(message)
        return 2


if __name__ == "__main__":
    sys.exit(main())
