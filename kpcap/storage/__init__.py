"""The one storage interface of kpcap: upload a node's PCAP, read it back, small objects.

``open_store(destination)`` returns an ObjectStore for the destination's bucket: S3 (and
S3-compatible endpoints) through boto3, GCS through google-cloud-storage. The operator and the
capture agent both use it; there is no other upload code. Credentials come only from the SDKs'
standard chains, never from the capture object. Every failure is a StorageError that says which
object and why, and whether retrying could help; transient failures are retried with a bounded,
jittered exponential backoff before that (see RetryPolicy, StoreOptions).

The SDKs are imported when a store of their kind is opened, so a process that only writes to S3
never imports google-cloud-storage and the other way round.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from kpcap.destinations import Destination, DestinationScheme
from kpcap.storage.base import (
    DEFAULT_CONTENT_TYPE,
    GCS_CHUNK_QUANTUM,
    PCAP_CONTENT_TYPE,
    ChunkReader,
    FailureReason,
    ObjectReader,
    ObjectStore,
    Retrier,
    RetryPolicy,
    StorageError,
    StoreOptions,
    UploadResult,
)

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "GCS_CHUNK_QUANTUM",
    "PCAP_CONTENT_TYPE",
    "ChunkReader",
    "FailureReason",
    "ObjectReader",
    "ObjectStore",
    "Retrier",
    "RetryPolicy",
    "StorageError",
    "StoreOptions",
    "UploadResult",
    "open_store",
]


def open_store(
    destination: Destination,
    *,
    options: StoreOptions | None = None,
    retry: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
    gcs_emulator_endpoint: str | None = None,
    gcs_project: str | None = None,
) -> ObjectStore:
    """An ObjectStore for ``destination``'s bucket (its prefix is not applied: keys are full keys,
    as ``kpcap.destinations.object_key`` makes them).

    S3 takes the destination's ``region`` and ``endpoint``. GCS takes Application Default
    Credentials, or an emulator: ``gcs_emulator_endpoint`` (tests) or ``STORAGE_EMULATOR_HOST``,
    with anonymous credentials. ``sleep``, ``clock`` and ``jitter`` drive the backoff between
    retries. Raises StorageError if the client cannot be set up (e.g. no GCS credentials at all).
    """
    retrier = Retrier(policy=retry or RetryPolicy(), sleep=sleep, clock=clock, jitter=jitter)
    if destination.scheme == DestinationScheme.S3:
        from kpcap.storage.s3 import S3Store

        return S3Store(
            bucket=destination.bucket,
            region=destination.region,
            endpoint=destination.endpoint,
            options=options,
            retrier=retrier,
        )
    if destination.scheme == DestinationScheme.GCS:
        if destination.endpoint is not None or destination.region is not None:
            raise ValueError("a gs:// destination takes neither an endpoint nor a region")
        from kpcap.storage.gcs import GcsStore

        return GcsStore(
            bucket=destination.bucket,
            options=options,
            retrier=retrier,
            emulator_endpoint=gcs_emulator_endpoint,
            project=gcs_project,
        )
    raise ValueError(f"unknown storage scheme {destination.scheme!r}")
