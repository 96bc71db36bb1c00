"""The CLI never prints a URI's credentials (issue 22, item 6): every error path goes through one redaction
(``skurec.store.workspace.redact_text``), so a signed URL, an ``s3://KEY:SECRET@`` location or a token in a query string
shows as ``REDACTED``; the rest of the location stays readable. A URI given as the work directory of a command that
builds is refused before anything is created from it."""

from __future__ import annotations

import json
import logging

import pytest

from skurec.catalogue.batches import BatchError, find_batch
from skurec_assets.cli import main
from skurec_assets.cli_readers import _print_answer
from skurec_assets.cli_support import RedactingFormatter, _CompactFormatter, print_error, user_error

SIGNED = "https://user:pw-secret@store.example/work?X-Amz-Credential=AKIAEXAMPLEKEY&X-Amz-Signature=SIGSECRET"
SECRETS = ("pw-secret", "AKIAEXAMPLEKEY", "SIGSECRET", "TOKENSECRET")


def _one_clean_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for secret in SECRETS:
        assert secret not in err, (secret, err)
    return lines[0]


def test_a_bundle_given_as_a_signed_url_is_refused_without_its_credentials(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--bundle", SIGNED, "image.jpg"]) == 2
    line = _one_clean_error_line(capsys.readouterr().err)
    assert "store.example/work?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED" in line
    assert "is not an edge bundle" in line


@pytest.mark.parametrize("command", ["run", "demo", "ui"])
def test_a_uri_work_directory_of_a_building_command_is_refused_and_nothing_is_created(
    command, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main([command, "--workdir", SIGNED]) == 2
    line = _one_clean_error_line(capsys.readouterr().err)
    assert "need a local work directory" in line and "https://store.example/work?" in line
    assert list(tmp_path.iterdir()) == []  # before: folders named after the URL, credentials included, and a lock


def test_a_batch_error_naming_a_signed_drop_location_is_printed_redacted(capsys):
    drop = "memory://drop-bucket/incoming?X-Amz-Security-Token=TOKENSECRET&X-Amz-Signature=SIGSECRET"
    with pytest.raises(BatchError) as err:
        find_batch(drop, "batch-001")
    assert "SIGSECRET" not in str(err.value)  # redacted at the source (the UI and the sensor show it too) ...
    print_error(user_error(err.value))  # ... and the CLI's error path (main) prints it redacted
    line = _one_clean_error_line(capsys.readouterr().err)
    assert line == (
        "error: no batch folder 'batch-001' in the drop location "
        "'memory://drop-bucket/incoming?X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED'"
    )


def test_per_image_answers_and_log_lines_are_redacted(capsys):
    _print_answer({"image": SIGNED, "error": f"cannot read image {SIGNED}: 403"})
    out = json.loads(capsys.readouterr().out)
    assert out["image"].startswith("https://store.example/work?") and "403" in out["error"]
    assert not any(s in json.dumps(out) for s in SECRETS)

    record = logging.makeLogRecord(
        {"msg": "read of %s failed (%s), retry 1/4", "args": (SIGNED, "timeout"), "levelname": "WARNING", "levelno": 30}
    )
    logged = RedactingFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "retry 1/4" in logged and not any(s in logged for s in SECRETS)

    failure = f"batch failed: {SIGNED}"
    step = logging.makeLogRecord(
        {
            "msg": f"full_rebuild - labelled_batch - {failure}",
            "levelno": logging.ERROR,
            "levelname": "ERROR",
            "dagster_meta": {"orig_message": failure, "step_key": "labelled_batch"},
        }
    )
    for verbose in (False, True):  # Dagster's console lines, with and without --verbose
        line = _CompactFormatter(verbose=verbose).format(step)
        assert "store.example" in line and not any(s in line for s in SECRETS)


def test_verbose_tracebacks_are_redacted_too(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--verbose", "--workdir", SIGNED]) == 1  # what an uncaught exception exits with
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "need a local work directory" in err
    assert "store.example/work?" in err and not any(s in err for s in SECRETS)
