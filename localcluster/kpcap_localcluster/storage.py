"""Real S3 and GCS protocol servers for tests: moto's S3 server and gcp-storage-emulator.

Both listen on the cluster bridge's address, so capture pods in the node namespaces reach them the
way they would reach a bucket endpoint, and the real boto3 and google-cloud-storage clients talk to
them over HTTP.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kpcap_localcluster.ports import free_port
from kpcap_localcluster.processes import ManagedProcess, spawn

# The local servers accept any credentials; these are what the tests, the demo and the agents use.
TEST_REGION = "us-east-1"
TEST_ACCESS_KEY = "test"
TEST_SECRET_KEY = "test"  # noqa: S105 - a test server's dummy
TEST_PROJECT = "kpcap-test"


@dataclass(frozen=True, slots=True)
class StorageServer:
    kind: str  # "s3" or "gcs"
    host: str
    port: int
    process: ManagedProcess

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.process.stop(grace=5)

    def s3_client(self) -> Any:
        """A boto3 S3 client for this (moto) server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=TEST_REGION,
            aws_access_key_id=TEST_ACCESS_KEY,
            aws_secret_access_key=TEST_SECRET_KEY,
        )

    def gcs_client(self) -> Any:
        """A google-cloud-storage client for this (emulator) server."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=TEST_PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.endpoint},
        )


def _wait_listening(host: str, port: int, proc: ManagedProcess, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} did not listen on {host}:{port} within {timeout:.0f}s")


def start_s3(
    *, host: str, log_dir: Path, run_id: str, port: int | None = None, buckets: Sequence[str] = ()
) -> StorageServer:
    """moto's S3 server; ``port``: a given one (a restart on the same endpoint), else a free one.
    It keeps its buckets in memory: a restarted server starts empty but for ``buckets``, made before
    it listens (``kpcap_localcluster.s3_server``)."""
    port = port or free_port(host)
    server = (
        ["kpcap_localcluster.s3_server", *(f"--bucket={b}" for b in buckets)] if buckets else ["moto.server"]
    )
    proc = spawn(
        name="moto-s3",
        argv=[sys.executable, "-m", *server, "-H", host, "-p", str(port)],
        log_path=log_dir / "moto-s3.log",
        run_id=run_id,
    )
    _wait_listening(host, port, proc)
    return StorageServer(kind="s3", host=host, port=port, process=proc)


def start_gcs(*, host: str, log_dir: Path, run_id: str) -> StorageServer:
    port = free_port(host)
    proc = spawn(
        name="gcp-storage-emulator",
        argv=[
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            f"--host={host}",
            f"--port={port}",
            "--in-memory",
        ],
        log_path=log_dir / "gcs-emulator.log",
        run_id=run_id,
    )
    _wait_listening(host, port, proc)
    return StorageServer(kind="gcs", host=host, port=port, process=proc)
