"""The ``skurec`` command line.

``skurec demo``     build a synthetic catalogue (or use ``--catalogue``) and materialise the whole graph via Dagster.
``skurec ui``       open the Dagster UI (webserver + daemon) on the same work directory and Dagster instance.
``skurec run``      materialise the whole graph for the work directory's saved settings.

The Dagster-facing commands import dagster lazily: the core (``skurec predict``/``lineage``) runs without it.
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

SETTINGS_FILE = "skurec.json"
DEMO_ENCODER = "efficientnet_lite2"
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
    return env


def _prepare_workdir(workdir: Path, settings_update: dict) -> dict:
    """Create the work directory, its Dagster home and saved settings; export them to this process."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / SETTINGS_FILE
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings.update({k: v for k, v in settings_update.items() if v is not None})
    settings["workdir"] = str(workdir)
    settings.setdefault("dagster_home", str(workdir / "dagster_home"))
    settings.setdefault("drop_location", str(workdir / "drop"))
    home = Path(settings["dagster_home"])
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml") if (REPO_ROOT / "dagster.yaml").exists() else (
            home / "dagster.yaml"
        ).write_text("telemetry:\n  enabled: false\n")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    os.replace(tmp, path)
    os.environ.update(_settings_env(settings))
    return settings


def _load_settings(workdir: Path) -> dict:
    path = workdir.resolve() / SETTINGS_FILE
    if not path.exists():
        raise SystemExit(f"{workdir} is not a skurec work directory (no {SETTINGS_FILE}); run `skurec demo --workdir {workdir}` first")
    return _prepare_workdir(workdir, {})


def materialize_all(settings: dict, selection: str | None = None) -> bool:
    """Run the whole asset graph (or a selection) in-process against the work directory's Dagster instance."""
    import dagster as dg

    from skurec_assets.definitions import build_definitions
    from skurec_resources import default_resources

    defs = build_definitions(default_resources())
    job = defs.resolve_job_def("skurec_pipeline")
    instance = dg.DagsterInstance.get()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            log.info("materialised %s", event.asset_key.to_user_string())
    return result.success


def cmd_demo(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    catalogue = args.catalogue
    if catalogue is None:
        from skurec.synthetic import make_demo_catalogue

        cat_dir = workdir / "catalogue"
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
            "min_samples": args.min_samples,
        },
    )
    print(f"materialising the skurec graph (encoder {settings['encoder']}) in {workdir} ...", flush=True)
    ok = materialize_all(settings)
    _print_summary(workdir)
    if ok:
        print(f"\nOpen the UI on this work directory:  skurec ui --workdir {args.workdir}")
    return 0 if ok else 1


def _print_summary(workdir: Path) -> None:
    from skurec.storage import Workspace

    ws = Workspace(str(workdir))
    if ws.exists("reports/audit_summary.json"):
        s = ws.read_json("reports/audit_summary.json")
        print(
            f"catalogue: {s['n_input_rows']} rows -> {s['n_accepted']} accepted, {s['n_quarantined']} quarantined; "
            f"{s['n_active_classes']} active classes ({s['n_filtered_classes']} below min_samples)"
        )
    if ws.exists("reports/evaluation.json"):
        ev = ws.read_json("reports/evaluation.json")
        for variant, v in ev.get("variants", {}).items():
            models = ", ".join(f"{m} {r['top1']:.3f}" for m, r in v.get("models", {}).items())
            print(f"top-1 [{variant}: {v.get('n_classes')} classes, {v.get('n_images')} images]: {models}")
    print(f"DuckDB file: {ws.duckdb_path}")


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load_settings(Path(args.workdir))
    return 0 if materialize_all(settings) else 1


def cmd_ui(args: argparse.Namespace) -> int:
    settings = _load_settings(Path(args.workdir))
    cmd = [
        sys.executable, "-m", "dagster", "dev",
        "-m", "skurec_assets.definitions",
        "-h", args.host, "-p", str(args.port),
    ]
    print(f"Dagster UI on http://{args.host}:{args.port}  (DAGSTER_HOME={settings['dagster_home']})", flush=True)
    os.execvpe(cmd[0], cmd, os.environ.copy())
    return 0  # unreachable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skurec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build a demo catalogue and materialise the whole pipeline offline")
    d.add_argument("--workdir", default="demo", help="work directory (created if missing)")
    d.add_argument("--catalogue", help="use this folder or manifest (local path or s3:// URI) instead of the synthetic one")
    d.add_argument("--encoder", default=DEMO_ENCODER, help="encoder name (default: %(default)s, real ImageNet weights shipped offline)")
    d.add_argument("--checkpoint", help="local weights file for the encoder (e.g. DINOv2 for dinov2_vits14)")
    d.add_argument("--min-samples", type=int, default=50, help="classes with fewer accepted images are not trained on")
    d.add_argument("--families", type=int, default=8)
    d.add_argument("--skus-per-family", type=int, default=4)
    d.add_argument("--images-per-sku", type=int, default=60)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="materialise the whole graph for an existing work directory")
    r.add_argument("--workdir", default=".")
    r.set_defaults(func=cmd_run)

    u = sub.add_parser("ui", help="open the Dagster UI (webserver + daemon) on a work directory")
    u.add_argument("--workdir", default="demo")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SKUREC_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
