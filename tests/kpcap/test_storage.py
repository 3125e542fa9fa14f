"""kpcap.storage against real protocol servers: moto's S3 server and gcp-storage-emulator, started as
subprocesses on 127.0.0.1, spoken to by the real boto3 and google-cloud-storage clients.

Faults the servers cannot produce on demand (a 503 storm, a GCS 403) come from FaultProxy, a small
HTTP proxy in front of a real server that answers the first requests with an error and forwards the
rest. The retry loop itself is tested as plain logic with an injected sleep and clock.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import pickle
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import google_crc32c
import pytest
import requests
from boto3.exceptions import S3UploadFailedError
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage as gcs

from kpcap.destinations import Destination, DestinationScheme, object_key
from kpcap.storage import (
    FailureReason,
    ObjectReader,
    ObjectStore,
    Retrier,
    RetryPolicy,
    StorageError,
    StoreOptions,
    open_store,
)
from kpcap.storage.gcs import classify_gcs_error
from kpcap.storage.s3 import classify_s3_error
from kpcap_localcluster.storage import StorageServer, start_gcs, start_s3

RUN_ID = "storage-tests"
HOST = "127.0.0.1"
CAPTURE_ID = "4f3b1c2d00004aaa8bbb123456789abc"
MiB = 1024 * 1024
BIG_FILE_SIZE = 200 * MiB
DUMMY_KEY = "testing"
# Fast, deterministic retries for tests that go through them: the SDKs' own retries are off (their
# sleeps are real), ours sleep through an injected recorder.
NO_SDK_RETRIES = StoreOptions(sdk_max_attempts=1, gcs_sdk_retry_timeout=0)


# --------------------------------------------------------------------------------------- helpers


def write_random(path: Path, size: int, *, block: int = 8 * MiB) -> Path:
    """A file of ``size`` random bytes, written in blocks (memory stays flat)."""
    with path.open("wb") as out:
        left = size
        while left:
            step = min(block, left)
            out.write(os.urandom(step))
            left -= step
    return path


def file_digests(path: Path) -> tuple[str, str, str]:
    """(sha256 hex, md5 base64, crc32c base64) of a file, read in blocks."""
    sha, md5, crc = hashlib.sha256(), hashlib.md5(usedforsecurity=False), google_crc32c.Checksum()
    with path.open("rb") as source:
        while block := source.read(8 * MiB):
            sha.update(block)
            md5.update(block)
            crc.update(block)
    return sha.hexdigest(), base64.b64encode(md5.digest()).decode(), base64.b64encode(crc.digest()).decode()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class SleepRecorder:
    """An injected sleep: records the delays instead of waiting."""

    delays: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class FaultProxy:
    """An HTTP proxy in front of a real server: answers the next ``fail_next`` requests (or every
    request while ``fail_always``) whose "METHOD path" contains ``match`` with ``status`` and
    ``body``, forwards the rest unchanged (Host included, so URLs the server hands out point back at
    the proxy), and records each request line."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname
        assert parts.port
        self.upstream = (parts.hostname, parts.port)
        self.fail_next = 0
        self.fail_always = False
        self.status = 503
        self.body = b""
        self.content_type = "application/xml"
        self.match = ""
        self.requests: list[tuple[str, str]] = []
        self.failed = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def fail(
        self, *, status: int, body: bytes, content_type: str, times: int | None, match: str = ""
    ) -> None:
        with self._lock:
            self.status, self.body, self.content_type, self.match = status, body, content_type, match
            self.fail_always = times is None
            self.fail_next = times or 0

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests.append((method, path))
            if self.match not in f"{method} {path}":
                return False
            if self.fail_always or self.fail_next > 0:
                self.fail_next = max(0, self.fail_next - 1)
                self.failed += 1
                return True
            return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                assert "chunked" not in self.headers.get("Transfer-Encoding", ""), (
                    "chunked bodies not proxied"
                )
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._should_fail(self.command, self.path):
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", proxy.content_type)
                    self.send_header("Content-Length", str(len(proxy.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(proxy.body)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in {"connection", "expect"}
                    }
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(name, value)
                # A HEAD response carries the length of the body a GET would have had.
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 - http.server's names

        return Handler


S3_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def gcs_error_body(code: int, message: str, reason: str) -> bytes:
    return json.dumps(
        {"error": {"code": code, "message": message, "errors": [{"message": message, "reason": reason}]}}
    ).encode()


# -------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def storage_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage-logs")


@pytest.fixture(scope="session")
def s3_server(storage_logs: Path) -> Iterator[StorageServer]:
    server = start_s3(host=HOST, log_dir=storage_logs / "s3", run_id=RUN_ID)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(storage_logs: Path) -> Iterator[StorageServer]:
    server = start_gcs(host=HOST, log_dir=storage_logs / "gcs", run_id=RUN_ID)
    yield server
    server.stop()


@dataclass(frozen=True)
class IamS3:
    """A moto S3 server that enforces IAM, with an uploader user whose policy denies PutObject on
    the ``refused`` bucket and allows everything else."""

    server: StorageServer
    access_key: str
    secret_key: str
    allowed_bucket: str
    refused_bucket: str
    bucket_policy_bucket: str


@pytest.fixture(scope="session")
def s3_iam(storage_logs: Path) -> Iterator[IamS3]:
    # moto enforces IAM once INITIAL_NO_AUTH_ACTION_COUNT requests have been served: the first
    # three (create user, create access key, attach policy) are how the uploader comes to exist.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        server = start_s3(host=HOST, log_dir=storage_logs / "s3-iam", run_id=RUN_ID)
    try:
        setup = {"endpoint_url": server.endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_KEY, **setup)
        iam.create_user(UserName="uploader")
        key = iam.create_access_key(UserName="uploader")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::kpcap-refused/*"},
            ],
        }
        iam.put_user_policy(UserName="uploader", PolicyName="uploader", PolicyDocument=json.dumps(policy))
        s3 = boto3.client(
            "s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], **setup
        )
        for bucket in ("kpcap-allowed", "kpcap-refused", "kpcap-bucket-policy"):
            s3.create_bucket(Bucket=bucket)
        deny_puts = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:PutObject",
                    "Resource": "arn:aws:s3:::kpcap-bucket-policy/*",
                }
            ],
        }
        s3.put_bucket_policy(Bucket="kpcap-bucket-policy", Policy=json.dumps(deny_puts))
        yield IamS3(
            server=server,
            access_key=key["AccessKeyId"],
            secret_key=key["SecretAccessKey"],
            allowed_bucket="kpcap-allowed",
            refused_bucket="kpcap-refused",
            bucket_policy_bucket="kpcap-bucket-policy",
        )
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def standard_chain_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS keys in the environment (the standard chain's first link), and nothing else from
    this machine: no shared config, no profile, no instance metadata, no emulator variable."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_STS",
        "STORAGE_EMULATOR_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-adc.json"))


@dataclass(frozen=True)
class Backend:
    """One storage service under test: makes buckets with an admin client, opens stores on them."""

    scheme: DestinationScheme
    server: StorageServer

    def make_bucket(self) -> str:
        name = f"kpcap-{secrets.token_hex(6)}"
        if self.scheme is DestinationScheme.S3:
            boto3.client(
                "s3",
                endpoint_url=self.server.endpoint,
                region_name="us-east-1",
                aws_access_key_id=DUMMY_KEY,
                aws_secret_access_key=DUMMY_KEY,
            ).create_bucket(Bucket=name)
        else:
            self.gcs_admin().create_bucket(name)
        return name

    def gcs_admin(self) -> gcs.Client:
        return gcs.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.server.endpoint},
        )

    def destination(self, bucket: str, *, prefix: str = "captures/team-a") -> Destination:
        if self.scheme is DestinationScheme.S3:
            return Destination(
                scheme=self.scheme,
                bucket=bucket,
                prefix=prefix,
                region="us-east-1",
                endpoint=self.server.endpoint,
            )
        return Destination(scheme=self.scheme, bucket=bucket, prefix=prefix)

    def open(self, bucket: str, *, endpoint: str | None = None, **kwargs: Any) -> ObjectStore:
        """A store on ``bucket``, reached at the server (or at ``endpoint``, e.g. a proxy)."""
        destination = self.destination(bucket)
        url = endpoint or self.server.endpoint
        if self.scheme is DestinationScheme.S3:
            destination = Destination(
                scheme=destination.scheme,
                bucket=bucket,
                prefix=destination.prefix,
                region="us-east-1",
                endpoint=url,
            )
            return open_store(destination, **kwargs)
        return open_store(destination, gcs_emulator_endpoint=url, **kwargs)


@pytest.fixture(params=[DestinationScheme.S3, DestinationScheme.GCS], ids=["s3", "gcs"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param is DestinationScheme.S3:
        return Backend(scheme=DestinationScheme.S3, server=request.getfixturevalue("s3_server"))
    return Backend(scheme=DestinationScheme.GCS, server=request.getfixturevalue("gcs_server"))


@pytest.fixture
def proxy(backend: Backend) -> Iterator[FaultProxy]:
    front = FaultProxy(backend.server.endpoint)
    yield front
    front.stop()


def node_key(backend: Backend, bucket: str, node: str = "node-1") -> str:
    return object_key(backend.destination(bucket), capture_id=CAPTURE_ID, node_name=node)


def read_all(reader: ObjectReader) -> tuple[bytes, list[int]]:
    with reader:
        chunks = list(reader)
    return b"".join(chunks), [len(chunk) for chunk in chunks]


# ----------------------------------------------------------------- round trips on both backends


def test_upload_then_read_back_byte_for_byte(backend: Backend, tmp_path: Path) -> None:
    bucket = backend.make_bucket()
    local = write_random(tmp_path / "node-1.pcap", 3 * MiB + 12345)
    key = node_key(backend, bucket)
    store = backend.open(bucket)
    try:
        result = store.upload_file(local_path=local, key=key)

        assert (
            result.uri == f"{backend.scheme.value}://{bucket}/captures/team-a/pcap_{CAPTURE_ID}/node-1.pcap"
        )
        assert (result.bucket, result.key, result.size) == (bucket, key, local.stat().st_size)
        assert result.etag
        if backend.scheme is DestinationScheme.GCS:
            _, md5, crc32c = file_digests(local)
            assert (result.md5, result.crc32c) == (md5, crc32c)
            assert result.generation
        assert local.exists(), "the store must never delete the local file"
        assert store.exists(key)
        assert store.get_bytes(key=key, max_bytes=4 * MiB) == local.read_bytes()
        copy = tmp_path / "copy.pcap"
        assert store.download_to(key=key, path=copy) == local.stat().st_size
        assert copy.read_bytes() == local.read_bytes()
        assert not list(tmp_path.glob("*.part"))
        store.delete(key)
        assert not store.exists(key)
        store.delete(key)  # already gone: not an error
    finally:
        store.close()


def test_streaming_read_yields_bounded_chunks(backend: Backend, tmp_path: Path) -> None:
    bucket = backend.make_bucket()
    local = write_random(tmp_path / "node-2.pcap", 5 * MiB + 7)
    key = node_key(backend, bucket, "node-2")
    store = backend.open(bucket)
    store.upload_file(local_path=local, key=key)

    reader = store.open_read(key, chunk_size=256 * 1024)
    assert isinstance(reader, ObjectReader)
    assert reader.size == local.stat().st_size
    data, sizes = read_all(reader)

    assert data == local.read_bytes()
    assert len(sizes) >= 20, "the object must come in many chunks, not at once"
    assert max(sizes) <= 256 * 1024
    # Stopping early releases the connection and ends the iteration.
    partial = store.open_read(key, chunk_size=64 * 1024)
    first = next(iter(partial))
    partial.close()
    assert first == local.read_bytes()[: len(first)]
    assert list(partial) == []
    # An empty object streams as no chunks.
    store.put_bytes(key="empty", data=b"")
    assert read_all(store.open_read("empty")) == (b"", [])


def test_small_objects_and_max_bytes(backend: Backend) -> None:
    bucket = backend.make_bucket()
    store = backend.open(bucket)
    challenge = secrets.token_bytes(64)
    result = store.put_bytes(key=".kpcap-ownership/challenge", data=challenge, content_type="text/plain")
    assert result.size == 64
    assert store.get_bytes(key=".kpcap-ownership/challenge", max_bytes=64) == challenge

    with pytest.raises(StorageError) as caught:
        store.get_bytes(key=".kpcap-ownership/challenge", max_bytes=63)
    assert caught.value.reason == FailureReason.TOO_LARGE
    assert caught.value.permanent


def test_missing_object(backend: Backend) -> None:
    bucket = backend.make_bucket()
    sleeps = SleepRecorder()
    store = backend.open(bucket, sleep=sleeps)
    assert not store.exists("nope")
    for read in (lambda: store.get_bytes(key="nope", max_bytes=10), lambda: store.open_read("nope")):
        with pytest.raises(StorageError) as caught:
            read()
        assert caught.value.reason == FailureReason.OBJECT_MISSING
        assert caught.value.permanent
    assert sleeps.delays == []


def test_missing_bucket_is_permanent_and_names_the_bucket(backend: Backend, tmp_path: Path) -> None:
    local = write_random(tmp_path / "node-1.pcap", 100_000)
    bucket = f"kpcap-missing-{secrets.token_hex(4)}"
    key = node_key(backend, bucket)
    sleeps = SleepRecorder()
    store = backend.open(bucket, sleep=sleeps)

    with pytest.raises(StorageError) as caught:
        store.upload_file(local_path=local, key=key)

    error = caught.value
    assert error.permanent
    assert error.reason == FailureReason.BUCKET_MISSING
    assert (error.bucket, error.key) == (bucket, key)
    assert error.uri == f"{backend.scheme.value}://{bucket}/{key}"
    assert str(error).startswith(f"{backend.scheme.value}://{bucket}/{key}: the bucket does not exist (")
    if backend.scheme is DestinationScheme.S3:
        assert str(error) == f"s3://{bucket}/{key}: the bucket does not exist (NoSuchBucket)"
    assert error.attempts == 1
    assert sleeps.delays == [], "a permanent error must not be retried"
    assert local.exists()
    assert local.stat().st_size == 100_000
    # Reading from a missing bucket says so too (GCS: its 404 is told apart with a bucket lookup).
    with pytest.raises(StorageError) as caught:
        store.get_bytes(key=key, max_bytes=10)
    assert caught.value.reason == FailureReason.BUCKET_MISSING


# ------------------------------------------------------------------ transient failures, for real


def test_unreachable_store_exhausts_retries(backend: Backend, tmp_path: Path) -> None:
    local = write_random(tmp_path / "node-1.pcap", 1000)
    sleeps = SleepRecorder()
    store = backend.open(
        "kpcap-any",
        endpoint=f"http://{HOST}:{closed_port()}",
        options=NO_SDK_RETRIES,
        retry=RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=5),
        sleep=sleeps,
        jitter=lambda: 1.0,
    )
    with pytest.raises(StorageError) as caught:
        store.upload_file(local_path=local, key="pcap_x/node-1.pcap")

    error = caught.value
    assert not error.permanent
    assert error.reason == FailureReason.UNREACHABLE
    assert error.attempts == 3
    assert "after 3 attempts" in str(error)
    assert sleeps.delays == [0.5, 1.0]
    assert local.exists()


def test_server_errors_are_retried_until_the_store_recovers(
    backend: Backend, proxy: FaultProxy, tmp_path: Path
) -> None:
    bucket = backend.make_bucket()
    if backend.scheme is DestinationScheme.S3:
        proxy.fail(status=503, body=S3_SLOW_DOWN, content_type="application/xml", times=2, match="PUT ")
    else:
        body = gcs_error_body(503, "Backend Error", "backendError")
        proxy.fail(status=503, body=body, content_type="application/json", times=2, match="/upload/")
    sleeps = SleepRecorder()
    store = backend.open(
        bucket,
        endpoint=proxy.endpoint,
        options=NO_SDK_RETRIES,
        retry=RetryPolicy(max_attempts=4),
        sleep=sleeps,
    )
    local = write_random(tmp_path / "node-1.pcap", 200_000)

    result = store.upload_file(local_path=local, key="pcap_x/node-1.pcap")

    assert result.size == 200_000
    assert proxy.failed == 2
    assert len(sleeps.delays) == 2
    assert store.get_bytes(key="pcap_x/node-1.pcap", max_bytes=MiB) == local.read_bytes()


def test_throttling_that_never_ends_is_reported_as_transient(backend: Backend, proxy: FaultProxy) -> None:
    bucket = backend.make_bucket()
    if backend.scheme is DestinationScheme.S3:
        proxy.fail(status=503, body=S3_SLOW_DOWN, content_type="application/xml", times=None, match="PUT ")
    else:
        body = gcs_error_body(429, "The rate of change requests is too high", "rateLimitExceeded")
        proxy.fail(status=429, body=body, content_type="application/json", times=None, match="/upload/")
    sleeps = SleepRecorder()
    store = backend.open(
        bucket,
        endpoint=proxy.endpoint,
        options=NO_SDK_RETRIES,
        retry=RetryPolicy(max_attempts=3),
        sleep=sleeps,
    )
    with pytest.raises(StorageError) as caught:
        store.put_bytes(key="k", data=b"x")
    assert caught.value.reason == FailureReason.THROTTLED
    assert not caught.value.permanent
    assert caught.value.attempts == 3
    assert len(sleeps.delays) == 2


# ------------------------------------------------------------------------------- refused requests


def iam_store(iam: IamS3, bucket: str, sleep: Callable[[float], None]) -> ObjectStore:
    destination = Destination(
        scheme=DestinationScheme.S3, bucket=bucket, region="us-east-1", endpoint=iam.server.endpoint
    )
    return open_store(destination, sleep=sleep)


@pytest.mark.parametrize("where", ["identity-policy", "bucket-policy"])
def test_s3_access_denied_by_policy_is_permanent(
    s3_iam: IamS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_iam.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_iam.secret_key)
    bucket = s3_iam.refused_bucket if where == "identity-policy" else s3_iam.bucket_policy_bucket
    local = write_random(tmp_path / "node-1.pcap", 10_000)
    sleeps = SleepRecorder()
    store = iam_store(s3_iam, bucket, sleeps)

    with pytest.raises(StorageError) as caught:
        store.upload_file(local_path=local, key="pcap_x/node-1.pcap")

    error = caught.value
    assert (error.reason, error.permanent, error.bucket) == (FailureReason.ACCESS_DENIED, True, bucket)
    assert str(error).startswith(f"s3://{bucket}/pcap_x/node-1.pcap: access denied (")
    assert sleeps.delays == []
    assert local.exists()
    # The same credentials may write where the policies allow it: the chain's keys were used.
    allowed = iam_store(s3_iam, s3_iam.allowed_bucket, sleeps)
    assert allowed.upload_file(local_path=local, key="pcap_x/node-1.pcap").size == 10_000


@pytest.mark.parametrize(
    ("key_id", "secret", "code"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "whatever", "InvalidAccessKeyId"),
        (None, "wrong-secret", "SignatureDoesNotMatch"),
    ],
)
def test_s3_rejected_credentials_are_permanent(
    s3_iam: IamS3, monkeypatch: pytest.MonkeyPatch, key_id: str | None, secret: str, code: str
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id or s3_iam.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    sleeps = SleepRecorder()
    with pytest.raises(StorageError) as caught:
        iam_store(s3_iam, s3_iam.allowed_bucket, sleeps).put_bytes(key="challenge", data=b"x")
    assert caught.value.reason == FailureReason.INVALID_CREDENTIALS
    assert caught.value.permanent
    assert caught.value.detail == code
    assert sleeps.delays == []


def test_gcs_forbidden_is_permanent(gcs_server: StorageServer, tmp_path: Path) -> None:
    # gcp-storage-emulator has no IAM; a 403 as GCS sends it comes from the proxy in front of it.
    backend = Backend(scheme=DestinationScheme.GCS, server=gcs_server)
    bucket = backend.make_bucket()
    front = FaultProxy(gcs_server.endpoint)
    try:
        message = "kpcap@p.iam.gserviceaccount.com does not have storage.objects.create access"
        front.fail(
            status=403,
            body=gcs_error_body(403, message, "forbidden"),
            content_type="application/json",
            times=None,
            match="/upload/",
        )
        sleeps = SleepRecorder()
        store = backend.open(bucket, endpoint=front.endpoint, sleep=sleeps)
        local = write_random(tmp_path / "node-1.pcap", 20 * MiB)  # a resumable upload
        with pytest.raises(StorageError) as caught:
            store.upload_file(local_path=local, key="pcap_x/node-1.pcap")
    finally:
        front.stop()
    assert (caught.value.reason, caught.value.permanent) == (FailureReason.ACCESS_DENIED, True)
    assert str(caught.value).startswith(f"gs://{bucket}/pcap_x/node-1.pcap: access denied (")
    assert sleeps.delays == []
    assert front.failed == 1
    assert local.exists()


# ------------------------------------------------------------------------------ credential chains


def test_s3_without_credentials_is_permanent(
    s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    destination = Destination(scheme=DestinationScheme.S3, bucket="kpcap-any", endpoint=s3_server.endpoint)
    with pytest.raises(StorageError) as caught:
        open_store(destination).put_bytes(key="k", data=b"x")
    assert (caught.value.reason, caught.value.permanent) == (FailureReason.NO_CREDENTIALS, True)


def test_s3_web_identity_chain(
    s3_server: StorageServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """IRSA's link of the chain: a projected token plus a role, exchanged through STS (moto's)."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/kpcap-agent")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    backend = Backend(scheme=DestinationScheme.S3, server=s3_server)
    bucket = backend.make_bucket()
    store = backend.open(bucket)
    assert store.put_bytes(key="irsa", data=b"hello").size == 5
    assert store.get_bytes(key="irsa", max_bytes=5) == b"hello"


def test_gcs_emulator_from_environment(gcs_server: StorageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = Backend(scheme=DestinationScheme.GCS, server=gcs_server).make_bucket()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint.removeprefix("http://"))
    store = open_store(Destination(scheme=DestinationScheme.GCS, bucket=bucket))
    store.put_bytes(key="via-env", data=b"abc")
    assert store.get_bytes(key="via-env", max_bytes=3) == b"abc"


def test_gcs_without_credentials_is_permanent() -> None:
    # GOOGLE_APPLICATION_CREDENTIALS names a file that does not exist (standard_chain_env).
    with pytest.raises(StorageError) as caught:
        open_store(Destination(scheme=DestinationScheme.GCS, bucket="kpcap-any"))
    assert (caught.value.reason, caught.value.permanent) == (FailureReason.NO_CREDENTIALS, True)
    assert caught.value.uri == "gs://kpcap-any/"


# ---------------------------------------------------------------------------------- large files


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, tuple[str, str, str]]]:
    path = write_random(tmp_path_factory.mktemp("big") / "node-big.pcap", BIG_FILE_SIZE)
    yield path, file_digests(path)
    path.unlink()


@pytest.mark.slow
def test_s3_large_file_goes_multipart(
    s3_server: StorageServer, big_file: tuple[Path, tuple[str, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, (sha256, _, _) = big_file
    backend = Backend(scheme=DestinationScheme.S3, server=s3_server)
    bucket = backend.make_bucket()
    store = backend.open(
        bucket, options=StoreOptions(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB)
    )
    key = node_key(backend, bucket)

    started = time.monotonic()
    result = store.upload_file(local_path=path, key=key)
    upload_seconds = time.monotonic() - started

    assert result.size == BIG_FILE_SIZE
    assert result.etag is not None
    assert result.etag.endswith(f"-{BIG_FILE_SIZE // (8 * MiB)}"), result.etag  # 25 parts
    started = time.monotonic()
    digest = hashlib.sha256()
    with store.open_read(key, chunk_size=MiB) as reader:
        for chunk in reader:
            assert len(chunk) <= MiB
            digest.update(chunk)
    read_seconds = time.monotonic() - started
    assert digest.hexdigest() == sha256
    assert path.exists()
    with capsys.disabled():
        print(f"\n[s3] 200 MiB multipart upload {upload_seconds:.1f}s, streamed read {read_seconds:.1f}s")


@pytest.mark.slow
def test_gcs_large_file_goes_resumable(
    gcs_server: StorageServer, big_file: tuple[Path, tuple[str, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    path, (sha256, md5, crc32c) = big_file
    backend = Backend(scheme=DestinationScheme.GCS, server=gcs_server)
    bucket = backend.make_bucket()
    front = FaultProxy(gcs_server.endpoint)  # passes everything through; records the requests
    try:
        store = backend.open(bucket, endpoint=front.endpoint, options=StoreOptions(gcs_chunk_size=8 * MiB))
        key = node_key(backend, bucket)
        started = time.monotonic()
        result = store.upload_file(local_path=path, key=key)
        upload_seconds = time.monotonic() - started
    finally:
        front.stop()

    assert result.size == BIG_FILE_SIZE
    assert (result.md5, result.crc32c) == (md5, crc32c)
    stored = backend.gcs_admin().bucket(bucket).get_blob(key)
    assert (stored.size, stored.md5_hash, stored.crc32c) == (BIG_FILE_SIZE, md5, crc32c)
    starts = [p for m, p in front.requests if m == "POST" and "uploadType=resumable" in p]
    chunks = [p for m, p in front.requests if m == "PUT"]
    assert len(starts) == 1, front.requests[:5]
    assert len(chunks) == BIG_FILE_SIZE // (8 * MiB)
    assert not [p for m, p in front.requests if "uploadType=multipart" in p]

    started = time.monotonic()
    digest = hashlib.sha256()
    with backend.open(bucket).open_read(key, chunk_size=4 * MiB) as reader:
        for chunk in reader:
            digest.update(chunk)
    read_seconds = time.monotonic() - started
    assert digest.hexdigest() == sha256
    with capsys.disabled():
        print(f"\n[gcs] 200 MiB resumable upload {upload_seconds:.1f}s, streamed read {read_seconds:.1f}s")


# -------------------------------------------------------------------------- retry loop, as logic


def transient(n: int = 0) -> StorageError:
    return StorageError(
        bucket="b",
        key="k",
        uri="s3://b/k",
        reason=FailureReason.SERVER_ERROR,
        permanent=False,
        detail=f"#{n}",
    )


class FlakyOperation:
    """Fails with the given exceptions, one per call, then returns "done"."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def no_classification(exc: BaseException) -> StorageError | None:
    return None


def test_retrier_retries_transient_failures_with_exponential_backoff() -> None:
    sleeps = SleepRecorder()
    retrier = Retrier(
        policy=RetryPolicy(max_attempts=5, base_delay=1, max_delay=3), sleep=sleeps, jitter=lambda: 1.0
    )
    operation = FlakyOperation(transient(1), transient(2), transient(3), transient(4))
    assert retrier.call(operation, classify=no_classification) == "done"
    assert operation.calls == 5
    assert sleeps.delays == [1, 2, 3, 3]  # doubling, capped at max_delay


def test_retrier_jitter_spreads_the_delays() -> None:
    sleeps = SleepRecorder()
    draws = iter([0.0, 0.5, 0.25])
    retrier = Retrier(
        policy=RetryPolicy(max_attempts=4, base_delay=2), sleep=sleeps, jitter=lambda: next(draws)
    )
    retrier.call(FlakyOperation(transient(), transient(), transient()), classify=no_classification)
    assert sleeps.delays == [0.0, 2.0, 2.0]  # uniform in [0, cap]: 0*2, 0.5*4, 0.25*8


def test_retrier_gives_up_after_max_attempts() -> None:
    sleeps = SleepRecorder()
    retrier = Retrier(policy=RetryPolicy(max_attempts=3), sleep=sleeps)
    operation = FlakyOperation(*(transient(i) for i in range(10)))
    with pytest.raises(StorageError) as caught:
        retrier.call(operation, classify=no_classification)
    assert operation.calls == 3
    assert len(sleeps.delays) == 2
    assert caught.value.attempts == 3
    assert caught.value.detail == "#2", "the last failure is the one reported"


def test_retrier_does_not_retry_permanent_failures() -> None:
    sleeps = SleepRecorder()
    denied = StorageError(bucket="b", key="k", uri="s3://b/k", reason="access denied", permanent=True)
    operation = FlakyOperation(denied)
    with pytest.raises(StorageError) as caught:
        Retrier(sleep=sleeps).call(operation, classify=no_classification)
    assert caught.value.reason == "access denied"
    assert caught.value.__cause__ is denied
    assert (operation.calls, sleeps.delays) == (1, [])


def test_retrier_classifies_sdk_exceptions_and_lets_others_through() -> None:
    sleeps = SleepRecorder()

    def classify(exc: BaseException) -> StorageError | None:
        return transient() if isinstance(exc, ConnectionResetError) else None

    retrier = Retrier(sleep=sleeps)
    assert retrier.call(FlakyOperation(ConnectionResetError()), classify=classify) == "done"
    assert len(sleeps.delays) == 1
    bug = KeyError("not a storage failure")
    with pytest.raises(KeyError):
        retrier.call(FlakyOperation(bug), classify=classify)
    assert len(sleeps.delays) == 1


def test_retrier_respects_the_deadline() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    retrier = Retrier(
        policy=RetryPolicy(max_attempts=100, base_delay=10, max_delay=10, deadline=35),
        sleep=sleep,
        clock=lambda: now[0],
        jitter=lambda: 1.0,
    )
    operation = FlakyOperation(*(transient() for _ in range(100)))
    with pytest.raises(StorageError) as caught:
        retrier.call(operation, classify=no_classification)
    assert now[0] == 30  # a fourth sleep would end past the deadline
    assert caught.value.attempts == operation.calls == 4


def test_policy_and_options_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="256 KiB"):
        StoreOptions(gcs_chunk_size=1_000_000)
    with pytest.raises(ValueError, match="5 MiB"):
        StoreOptions(multipart_chunksize=MiB)
    assert RetryPolicy(base_delay=1, max_delay=30).backoff_cap(10) == 30


# ------------------------------------------------------------ error classification, as logic


def client_error(code: str, status: int, operation: str = "PutObject") -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(response, operation)


@pytest.mark.parametrize(
    ("exc", "reason", "permanent"),
    [
        (client_error("NoSuchBucket", 404), FailureReason.BUCKET_MISSING, True),
        (client_error("NoSuchKey", 404, "GetObject"), FailureReason.OBJECT_MISSING, True),
        (client_error("AccessDenied", 403), FailureReason.ACCESS_DENIED, True),
        (client_error("InvalidAccessKeyId", 403), FailureReason.INVALID_CREDENTIALS, True),
        (client_error("SignatureDoesNotMatch", 403), FailureReason.INVALID_CREDENTIALS, True),
        (client_error("PermanentRedirect", 301), FailureReason.WRONG_REGION, True),
        (client_error("InvalidArgument", 400), FailureReason.BAD_REQUEST, True),
        (client_error("SlowDown", 503), FailureReason.THROTTLED, False),
        (client_error("InternalError", 500), FailureReason.SERVER_ERROR, False),
        (client_error("RequestTimeout", 400), FailureReason.SERVER_ERROR, False),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
            FailureReason.UNREACHABLE,
            False,
        ),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), FailureReason.TIMEOUT, False),
        (botocore.exceptions.NoCredentialsError(), FailureReason.NO_CREDENTIALS, True),
    ],
)
def test_s3_classification(exc: BaseException, reason: FailureReason, permanent: bool) -> None:
    error = classify_s3_error(exc, bucket="b", key="k")
    assert error is not None
    assert (error.reason, error.permanent, error.uri) == (reason, permanent, "s3://b/k")


def test_s3_classification_sees_through_boto3_wrappers() -> None:
    # boto3's upload_file turns a ClientError into S3UploadFailedError, keeping it only as context.
    try:
        try:
            raise client_error("NoSuchBucket", 404)
        except botocore.exceptions.ClientError as inner:
            raise S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904 - as boto3 does
    except S3UploadFailedError as outer:
        error = classify_s3_error(outer, bucket="b", key="k")
    assert error is not None
    assert error.reason == FailureReason.BUCKET_MISSING
    assert classify_s3_error(ValueError("x"), bucket="b", key="k") is None


@pytest.mark.parametrize(
    ("exc", "reason", "permanent"),
    [
        (api_exceptions.NotFound("The specified bucket does not exist."), FailureReason.BUCKET_MISSING, True),
        (api_exceptions.NotFound("No such object: b/k"), FailureReason.OBJECT_MISSING, True),
        (api_exceptions.Forbidden("no storage.objects.create"), FailureReason.ACCESS_DENIED, True),
        (api_exceptions.Unauthorized("invalid token"), FailureReason.INVALID_CREDENTIALS, True),
        (api_exceptions.BadRequest("bad"), FailureReason.BAD_REQUEST, True),
        (api_exceptions.TooManyRequests("slow down"), FailureReason.THROTTLED, False),
        (api_exceptions.ServiceUnavailable("backend"), FailureReason.SERVER_ERROR, False),
        (api_exceptions.InternalServerError("oops"), FailureReason.SERVER_ERROR, False),
        (requests.exceptions.ConnectionError("refused"), FailureReason.UNREACHABLE, False),
        (requests.exceptions.ReadTimeout("slow"), FailureReason.TIMEOUT, False),
    ],
)
def test_gcs_classification(exc: BaseException, reason: FailureReason, permanent: bool) -> None:
    error = classify_gcs_error(exc, bucket="b", key="k", not_found=FailureReason.OBJECT_MISSING)
    assert error is not None
    assert (error.reason, error.permanent, error.uri) == (reason, permanent, "gs://b/k")
    assert classify_gcs_error(ValueError("x"), bucket="b", key="k") is None


def test_storage_error_is_read_only_and_pickles() -> None:
    error = StorageError(
        bucket="my-bucket",
        key="pcap_x/node-1.pcap",
        uri="s3://my-bucket/pcap_x/node-1.pcap",
        reason=FailureReason.BUCKET_MISSING,
        permanent=True,
        detail="NoSuchBucket",
    )
    assert str(error) == "s3://my-bucket/pcap_x/node-1.pcap: the bucket does not exist (NoSuchBucket)"
    with pytest.raises(AttributeError):
        error.bucket = "other"  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.bucket, copy.key, copy.reason, copy.permanent, str(copy)) == (
        error.bucket,
        error.key,
        error.reason,
        error.permanent,
        str(error),
    )
