"""Support of the ``skurec`` command line: one-line user errors, checks made before a run starts, the settings
file's stored form, and a compact console logger for Dagster runs.

* :func:`user_error` turns every error a user can fix into one line (``error: ...``, exit 2), ENOSPC named as "no
  space left" (also when it surfaces as SQLite's "disk I/O error").
* :func:`check_catalogue` / :func:`check_encoder` fail in seconds, before a run starts, on what no retry can fix.
* :func:`stored_settings` / :func:`resolved_settings`: ``skurec.json`` keeps paths inside the work directory relative
  to it (a copied work directory never writes into the original) and locations with credentials redacted.
* :data:`compact_console_logger`: our progress (each step's INFO messages, one short line each) and warnings and
  errors (first line only); Dagster's DEBUG events (step starts, handled outputs, ...) only with ``--verbose``.
* :func:`print_error` is the one way the CLI prints an error, and :func:`shown` what it prints of any text naming a
  location: both pass it through :func:`skurec.store.workspace.redact_text`, so no URI credential
  (``user:password@``, a pre-signed URL's signature, a token) reaches the terminal; the log handlers do the same.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from pathlib import Path

import dagster as dg

# settings whose value is a path inside the work directory: stored relative to it
_WORKDIR_PATH_KEYS = ("dagster_home", "drop_location", "catalogue")
CONSOLE_LOGGER = "console"
LINE_WIDTH = 160  # console lines are cut here unless --verbose


class CliError(Exception):
    """A mistake the user can fix: printed as one line ``error: <message>`` (exit status 2), never a traceback."""


def shown(text: object) -> str:
    """``text`` as the CLI may print it: every URI in it without its credentials."""
    from skurec.store.workspace import redact_text

    return redact_text(str(text))


def print_error(message: object) -> None:
    """Print ``error: <message>`` on stderr, credentials in URIs redacted (every error path of the CLI)."""
    print(f"error: {shown(message)}", file=sys.stderr, flush=True)


class RedactingFormatter(logging.Formatter):
    """A log formatter that redacts the credentials of every URI in the formatted line (and its traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return shown(super().format(record))


def stored_settings(workdir: Path, settings: dict) -> dict:
    """What ``skurec.json`` keeps: paths inside the work directory relative to it, credentials redacted."""
    from skurec.store.workspace import redact_uri

    out = {k: v for k, v in settings.items() if k != "workdir"}
    for key in _WORKDIR_PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and "://" not in value and Path(value).is_absolute():
            try:
                out[key] = Path(value).resolve().relative_to(workdir).as_posix()
            except ValueError:
                pass  # outside the work directory (a user's catalogue): kept absolute
    for key in ("catalogue", "drop_location", "encoder_checkpoint"):
        if isinstance(out.get(key), str):
            out[key] = redact_uri(out[key])
    return out


def resolved_settings(workdir: Path, stored: dict) -> dict:
    """Settings with every relative path resolved against ``workdir`` (where the work directory is now).

    Work directories written before paths were stored relative kept absolute paths under their old location
    (``workdir``): those are rebased, so a copy reads and writes only itself."""
    settings = dict(stored)
    old_root = stored.get("workdir")
    for key in _WORKDIR_PATH_KEYS:
        value = settings.get(key)
        if not isinstance(value, str) or "://" in value:
            continue
        p = Path(value)
        if not p.is_absolute():
            settings[key] = str(workdir / p)
        elif old_root and Path(old_root) != workdir:
            try:
                settings[key] = str(workdir / p.relative_to(old_root))
            except ValueError:
                pass
    settings["workdir"] = str(workdir)
    return settings


def logger_config(verbose: bool) -> dict:
    """Dagster's console logger: our progress (INFO) by default, every debug event with ``--verbose``."""
    return {"loggers": {CONSOLE_LOGGER: {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}}


def check_catalogue(location: str | None) -> None:
    """Fail before any run starts when a local catalogue location does not exist."""
    if location and "=REDACTED" in location:
        raise CliError(
            f"the catalogue location {location} carried credentials and was stored redacted; pass it again with "
            "`skurec demo --catalogue URL` (a signed URL expires anyway)"
        )
    if not location or "://" in location:
        return
    if not Path(location).exists():
        raise CliError(
            f"catalogue {location} does not exist; pass --catalogue with a folder ROOT/<sku_id>/<images> or a "
            "manifest (.csv / .parquet with columns image_uri, sku_id)"
        )


def check_encoder(name: str, checkpoint: str | None, layers: int | None) -> None:
    """Load the encoder and embed one blank image before the run: a wrong name, missing weights or an impossible
    ``--layers`` fail in seconds with the remedy, not after the audit as an AssertionError."""
    from PIL import Image

    from skurec.encoders import ENCODERS, load_encoder

    try:
        enc = load_encoder(name, checkpoint=checkpoint, device="cpu", **({"layers": layers} if layers else {}))
        import torch

        with torch.no_grad():
            enc.forward_batch(enc.preprocess(Image.new("RGB", (64, 64))).unsqueeze(0))
    except (AssertionError, ValueError, RuntimeError, IndexError, KeyError, OSError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        hint = (
            f"pass --layers 0 (or a smaller N): {name} cannot pool {layers} intermediate stages"
            if layers
            else f"choose one of {', '.join(sorted(ENCODERS))}"
        )
        raise CliError(f"encoder {name!r} cannot be used ({detail}); {hint}") from None


def no_space_message(path: Path | str) -> str:
    path = _existing_parent(Path(path))
    try:
        free = shutil.disk_usage(path).free / 1e6
        room = f"{free:.1f} MB free"
    except OSError:
        room = "free space unknown"
    return (
        f"no space left on the device holding {path} ({room}); free space and re-run: the deployed model and the "
        "last complete audit are unchanged"
    )


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


#: how a full disk reads when it surfaces through SQLite (Dagster's storage) or DuckDB instead of as ENOSPC
_DISK_FULL_TEXTS = ("no space left", "disk i/o error", "database or disk is full", "disk is full")


def _disk_full(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain that says the disk is full (ENOSPC, or SQLite's "disk I/O error" /
    "database or disk is full", wrapped by SQLAlchemy or not); ``None`` otherwise."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if any(t in str(exc).lower() for t in _DISK_FULL_TEXTS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def user_error(exc: BaseException, workdir: str | None = None) -> str | None:
    """The one-line message of an error the user can act on; ``None`` for a bug (shown with its traceback).
    ``workdir``: where a full disk is looked for when the error does not name a file."""
    from skurec.catalogue.batches import BatchError
    from skurec.catalogue.importer import CatalogueError
    from skurec.deployment.training_table import LineageError
    from skurec.embeddings.training_data import TrainingDataError
    from skurec.encoders.base import EncoderCheckpointError, EncoderUnavailableError
    from skurec.models.serialization import ModelFormatError
    from skurec.serving.recognizer import RecognizerError
    from skurec.store.lock import WorkdirBusyError
    from skurec.store.model_store import ModelStoreError

    full = _disk_full(exc)
    if isinstance(full, OSError):
        return no_space_message(getattr(full, "filename", None) or workdir or os.getcwd())
    if full is not None:  # SQLite (Dagster's run and event storage) reports a full disk as "disk I/O error"
        home = os.environ.get("DAGSTER_HOME") or workdir or os.getcwd()
        return f"Dagster's storage could not write (SQLite: {str(full).splitlines()[0][:120]}): " + no_space_message(
            home
        )
    known = (
        CliError,
        WorkdirBusyError,
        ModelStoreError,
        RecognizerError,
        LineageError,
        CatalogueError,
        BatchError,
        TrainingDataError,
        EncoderCheckpointError,
        EncoderUnavailableError,
        ModelFormatError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
    )
    if isinstance(exc, known):
        return " ".join(str(exc).split())
    return None


def _or_nan(x) -> float:
    """A score or NaN (a variant with no images, e.g. a catalogue without tail SKUs, has no score)."""
    return float("nan") if x is None else float(x)


def evaluation_table(ev: dict) -> list[str]:
    """The evaluation's top-1 per model and test variant, one row per model; ``coarse_only`` is labelled as what
    it is, superclass accuracy (as the report says), not a SKU accuracy."""
    from skurec.evaluation import COARSE_KEY

    variants = ev.get("variants", {})
    if not variants:
        return []
    head = "  ".join(f"{v} ({b.get('n_classes')} SKUs, {b.get('n_images')} imgs)" for v, b in variants.items())
    lines = [f"{'top-1':<34}{head}"]
    models = list(next(iter(variants.values())).get("models", {}))
    for m in sorted(models, key=lambda m: m == COARSE_KEY):
        label = "superclass accuracy (coarse_only)" if m == COARSE_KEY else m
        cells = "  ".join(
            f"{_or_nan((b.get('models', {}).get(m) or {}).get('top1')):<{len(h)}.3f}"
            for (v, b), h in zip(variants.items(), head.split("  "))
        )
        lines.append(f"{label:<34}{cells}".rstrip())
    return lines


def warn_small_validation(ws) -> None:
    """Warn when the deployed model was judged on fewer validation images than a number can be trusted on."""
    from skurec.deployment.card import MIN_VALIDATION_IMAGES
    from skurec.store.model_store import ModelStore, ModelStoreError

    store = ModelStore(ws)
    try:
        model_id = store.deployed_id()
        n_val = int(((store.card(model_id) if model_id else {}).get("training_set") or {}).get("n_val", 0))
    except (ModelStoreError, ValueError):
        return
    if model_id and n_val < MIN_VALIDATION_IMAGES:
        print(
            f"warning: model {model_id} was validated on only {n_val} image(s) (fewer than {MIN_VALIDATION_IMAGES}): "
            "its validation accuracy and the gate say little; add labelled images",
            file=sys.stderr,
        )


class _CompactFormatter(logging.Formatter):
    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        if self.verbose or not meta:
            return shown(super().format(record) if not meta else record.getMessage())
        text = str(meta.get("orig_message") or record.getMessage()).strip()
        event = meta.get("dagster_event")
        first = text.splitlines()[0] if text else ""
        if event is not None:
            first = f"{event.event_type_value}: {first}"
        where = meta.get("step_key") or meta.get("job_name") or "run"
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        line = shown(f"  [{where}] {level}{first}")
        return line if len(line) <= LINE_WIDTH else line[: LINE_WIDTH - 1] + "…"


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="skurec's console logger: one short line per progress message; debug events with --verbose",
)
def compact_console_logger(init_context) -> logging.Logger:
    level = str(init_context.logger_config["log_level"]).upper()
    logger = logging.Logger("skurec.run", level=level)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_CompactFormatter(verbose=level == "DEBUG"))
    logger.addHandler(handler)
    return logger


def with_compact_console(job):
    """``job`` logging through :data:`compact_console_logger` (configured by :func:`logger_config`)."""
    return job.with_logger_defs({CONSOLE_LOGGER: compact_console_logger})
