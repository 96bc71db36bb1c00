"""A real S3 API on loopback for the tests: moto's server mode (``ThreadedMotoServer``) behind an optional
fault injector, with fake credentials in the environment.

The fixture :func:`s3` yields an :class:`S3Server`; set ``server.faults.fail_every = n`` to make every n-th read
request (GET/HEAD: object reads, heads and listings) fail with ``503 SlowDown``, as a throttled or flaky object store
does. The pattern is deterministic (a fixed share, never a run of consecutive failures) so the tests cannot flake.
Test modules use it with ``from support.s3server import s3  # noqa: F401``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import DomainDispatcherApplication, ThreadedMotoServer, create_backend_app
from werkzeug.serving import make_server

FAKE_ACCESS_KEY = "AKIAFAKEFAKEFAKE0000"
FAKE_SECRET = "fake-secret-for-moto-only"
REGION = "us-east-1"

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>skurec-test</RequestId></Error>"
)


class FaultInjector:
    """WSGI middleware: answers every ``fail_every``-th request whose method is in ``methods`` with 503 SlowDown
    (0 = no faults)."""

    def __init__(self, app, fail_every: int = 0, methods: tuple[str, ...] = ("GET", "HEAD")):
        self.app = app
        self.fail_every = fail_every
        self.methods = methods
        self.counts: Counter[str] = Counter()
        self._eligible = 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        method = environ.get("REQUEST_METHOD", "")
        with self._lock:
            self.counts[f"{method} requests"] += 1
            fail = False
            if method in self.methods and self.fail_every > 0:
                self._eligible += 1
                fail = self._eligible % self.fail_every == 0
            if fail:
                self.counts["injected"] += 1
        if not fail:
            return self.app(environ, start_response)
        body = b"" if method == "HEAD" else _SLOW_DOWN
        start_response("503 Slow Down", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def reads(self) -> int:
        return sum(self.counts[f"{m} requests"] for m in self.methods)


class _FaultyMotoServer(ThreadedMotoServer):
    """moto's threaded server with the fault injector wrapped around its WSGI application."""

    def __init__(self, faults: FaultInjector, **kwargs):
        super().__init__(**kwargs)
        self.faults = faults

    def _server_entry(self) -> None:  # same as moto's, plus the middleware
        self.faults.app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self._ip_address, self._port, self.faults, True)
        self._server_ready_event.set()
        self._server.serve_forever()


class S3Server:
    """A started S3 server on 127.0.0.1 (ephemeral port) with helpers to fill buckets."""

    def __init__(self) -> None:
        self.faults = FaultInjector(None)
        self._server = _FaultyMotoServer(self.faults, ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self.host, self.port = host, port

    def stop(self) -> None:
        self._server.stop()

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this endpoint (credentials come from the environment)."""
        return {"client_kwargs": {"endpoint_url": self.endpoint_url}}

    def client(self):
        """A plain boto3 client for setting up and inspecting buckets (subject to injected faults too: set
        ``faults.fail_every`` only after the setup)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION)

    def new_bucket(self, prefix: str = "skurec") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload_tree(self, local: Path, bucket: str, prefix: str) -> int:
        """Upload every file under ``local`` to ``s3://bucket/prefix/<relative path>``; returns the count."""
        c = self.client()
        n = 0
        for p in sorted(local.rglob("*")):
            if p.is_file():
                c.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(local).as_posix()}", Body=p.read_bytes())
                n += 1
        return n

    def snapshot(self, bucket: str, prefix: str = "") -> dict[str, tuple[str, str]]:
        """{key: (ETag, LastModified)} of every object under a prefix: to prove inputs were not modified."""
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = (obj["ETag"], obj["LastModified"].isoformat())
        return out

    def read_all(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        c = self.client()
        return {k: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in self.snapshot(bucket, prefix)}


def clear_s3fs_caches() -> None:
    """Forget cached s3fs filesystem instances (and with them their listing caches)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A fresh loopback S3 server with fake credentials in the environment (never real ones)."""
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    clear_s3fs_caches()
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()
        clear_s3fs_caches()
