"""URI credentials never shown: :func:`redact_uri` for one location, :func:`redact_text` for every location inside a
message or a log line (what the CLI prints)."""

from __future__ import annotations

import pytest

from skurec.store.workspace import redact_text, redact_uri

SIGNED = (
    "https://bucket.s3.amazonaws.com/cat/manifest.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLEKEY%2F20250101%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=TOKENSECRET&X-Amz-Signature=SIGSECRET"
)
SECRETS = ("AKIAEXAMPLEKEY", "TOKENSECRET", "SIGSECRET", "pw-secret", "ACCESSKEY", "OLDSIG")


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


def test_redact_uri_drops_the_password_and_secret_parameters_and_keeps_the_rest():
    shown = redact_uri(SIGNED)
    _no_secret(shown)
    assert shown.startswith("https://bucket.s3.amazonaws.com/cat/manifest.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    assert "X-Amz-Signature=REDACTED" in shown and "X-Amz-Expires=3600" in shown
    assert redact_uri("s3://ACCESSKEY:pw-secret@bucket/drop") == "s3://bucket/drop"
    assert redact_uri("/local/path?token=x") == "/local/path?token=x"  # a plain path is not a URI


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"catalogue {SIGNED!r} is unreadable",
            f"catalogue {redact_uri(SIGNED)!r} is unreadable",
        ),
        (  # two locations, a password, and the sentence's punctuation after the URI
            "no batch folder 'b1' in s3://ACCESSKEY:pw-secret@bucket/drop; see http://h/p?AWSAccessKeyId=ACCESSKEY"
            "&Expires=1&Signature=OLDSIG.",
            "no batch folder 'b1' in s3://bucket/drop; see http://h/p?AWSAccessKeyId=REDACTED&Expires=1"
            "&Signature=REDACTED.",
        ),
        (  # Path() collapses "https://" into "https:/": still a URI with a password
            "https:/user:pw-secret@host/b?X-Amz-Signature=SIGSECRET is not an edge bundle",
            "https:/host/b?X-Amz-Signature=REDACTED is not an edge bundle",
        ),
        (  # nothing secret: left exactly as it is (no re-encoding of a harmless URL)
            "see https://example.com/docs?page=2&q=a/b, /local/path and s3://bucket/key (fine)",
            "see https://example.com/docs?page=2&q=a/b, /local/path and s3://bucket/key (fine)",
        ),
        ("(memory://u:pw-secret@h/w?token=TOKENSECRET)", "(memory://h/w?token=REDACTED)"),
    ],
)
def test_redact_text_redacts_every_uri_in_a_message(text, expected):
    assert redact_text(text) == expected
    _no_secret(redact_text(text))


def test_batch_errors_are_redacted_at_the_source():
    from skurec.catalogue.batches import BatchError

    err = BatchError("no batch folder 'b1' in the drop location 's3://AKIAKEY:topsecret@bucket/drop'")
    assert "topsecret" not in str(err) and "bucket/drop" in str(err)
