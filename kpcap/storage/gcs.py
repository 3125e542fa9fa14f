"""Google Cloud Storage through google-cloud-storage.

Credentials come from Application Default Credentials (GKE Workload Identity, the metadata server,
``GOOGLE_APPLICATION_CREDENTIALS``). An emulator is reached through the client's standard
``STORAGE_EMULATOR_HOST`` variable or an explicit ``emulator_endpoint`` (tests), with anonymous
credentials: a ``gs://`` destination never names an endpoint, so the node's OAuth token only ever
goes to Google. Files over 8 MiB go up as resumable uploads in ``gcs_chunk_size`` chunks.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import google.auth.exceptions
import requests.exceptions
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from kpcap.storage.base import (
    ChunkReader,
    FailureReason,
    ObjectReader,
    Retrier,
    StorageError,
    StoreOptions,
    UploadResult,
    check_max_bytes,
    check_stored_size,
    describe_exception,
    download_whole,
    exception_chain,
    guess_content_type,
    object_error,
)

T = TypeVar("T")

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "kpcap-emulator"

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def emulator_endpoint_from_env() -> str | None:
    """``STORAGE_EMULATOR_HOST`` as a URL (the variable may hold a bare ``host:port``)."""
    value = os.environ.get(EMULATOR_ENV, "").strip()
    if not value:
        return None
    return value if "://" in value else f"http://{value}"


class GcsStore:
    """One GCS bucket."""

    scheme = "gs"

    def __init__(
        self,
        *,
        bucket: str,
        options: StoreOptions | None = None,
        retrier: Retrier | None = None,
        emulator_endpoint: str | None = None,
        project: str | None = None,
    ) -> None:
        self._bucket_name = bucket
        self._options = options or StoreOptions()
        self._retrier = retrier or Retrier()
        opts = self._options
        self._timeout = (opts.connect_timeout, opts.read_timeout)
        self._sdk_retry = (
            DEFAULT_RETRY.with_timeout(opts.gcs_sdk_retry_timeout) if opts.gcs_sdk_retry_timeout else None
        )
        endpoint = emulator_endpoint or emulator_endpoint_from_env()
        try:
            if endpoint:
                self._client = storage.Client(
                    project=project or EMULATOR_PROJECT,
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options={"api_endpoint": endpoint},
                )
            elif project:
                self._client = storage.Client(project=project)
            else:
                self._client = storage.Client()  # Application Default Credentials, project inferred
        except Exception as exc:
            error = self.classify(exc, key="")
            if error is None:
                raise
            raise error from exc
        self._bucket = self._client.bucket(bucket)

    @property
    def bucket(self) -> str:
        return self._bucket_name

    def uri(self, key: str) -> str:
        return f"gs://{self._bucket_name}/{key}"

    def classify(
        self, exc: BaseException, *, key: str, not_found: FailureReason = FailureReason.BUCKET_MISSING
    ) -> StorageError | None:
        return classify_gcs_error(exc, bucket=self._bucket_name, key=key, not_found=not_found)

    def _run(
        self,
        operation: Callable[[], T],
        *,
        key: str,
        what: str,
        not_found: FailureReason = FailureReason.BUCKET_MISSING,
    ) -> T:
        return self._retrier.call(
            operation,
            classify=lambda exc: self.classify(exc, key=key, not_found=not_found),
            what=f"{what} {self.uri(key)}",
        )

    def _result(self, blob: Any, key: str, size: int) -> UploadResult:
        stored = int(blob.size) if blob.size is not None else size
        check_stored_size(self, key, stored=stored, size=size)
        return UploadResult(
            uri=self.uri(key),
            bucket=self._bucket_name,
            key=key,
            size=stored,
            etag=blob.etag,
            generation=int(blob.generation) if blob.generation is not None else None,
            md5=blob.md5_hash,
            crc32c=blob.crc32c,
        )

    def upload_file(self, *, local_path: Path, key: str, content_type: str | None = None) -> UploadResult:
        size = local_path.stat().st_size  # FileNotFoundError for a missing file: not a storage error

        def upload() -> UploadResult:
            # A chunk size makes uploads over 8 MiB resumable, sent chunk by chunk.
            blob = self._bucket.blob(key, chunk_size=self._options.gcs_chunk_size)
            blob.upload_from_filename(
                os.fspath(local_path),
                content_type=guess_content_type(key, content_type),
                timeout=self._timeout,
                retry=self._sdk_retry,
                checksum="auto",
            )
            return self._result(blob, key, size)

        return self._run(upload, key=key, what="upload to")

    def put_bytes(self, *, key: str, data: bytes, content_type: str | None = None) -> UploadResult:
        def put() -> UploadResult:
            blob = self._bucket.blob(key)
            blob.upload_from_string(
                data,
                content_type=guess_content_type(key, content_type),
                timeout=self._timeout,
                retry=self._sdk_retry,
            )
            return self._result(blob, key, len(data))

        return self._run(put, key=key, what="put")

    def _metadata(self, key: str) -> Any:
        """The object's metadata (size, generation); StorageError if it or its bucket is missing."""
        blob = self._run(
            lambda: self._bucket.get_blob(key, timeout=self._timeout, retry=self._sdk_retry),
            key=key,
            what="stat",
            not_found=FailureReason.OBJECT_MISSING,
        )
        if blob is None:
            raise object_error(self, key, reason=self._missing_reason(), permanent=True, detail="404")
        return blob

    def _missing_reason(self) -> FailureReason:
        try:
            bucket_found = self._bucket.exists(timeout=self._timeout, retry=None)
        except Exception:  # noqa: BLE001 - only refines the message; no bucket permission is fine
            return FailureReason.OBJECT_MISSING
        return FailureReason.OBJECT_MISSING if bucket_found else FailureReason.BUCKET_MISSING

    def get_bytes(self, *, key: str, max_bytes: int) -> bytes:
        check_max_bytes(max_bytes)
        blob = self._metadata(key)
        size = int(blob.size or 0)
        if size > max_bytes:
            raise object_error(
                self,
                key,
                reason=FailureReason.TOO_LARGE,
                permanent=True,
                detail=f"{size} bytes, at most {max_bytes} allowed",
            )
        pinned = self._bucket.blob(key, generation=blob.generation)
        data: bytes = self._run(
            lambda: pinned.download_as_bytes(timeout=self._timeout, retry=self._sdk_retry),
            key=key,
            what="get",
            not_found=FailureReason.OBJECT_MISSING,
        )
        return data

    def open_read(self, key: str, *, chunk_size: int | None = None) -> ObjectReader:
        step = chunk_size or self._options.read_chunk_size
        blob = self._metadata(key)
        size = int(blob.size or 0)
        # Every chunk is a ranged read of the same generation: an object replaced midway fails the
        # read instead of splicing two versions; each chunk is retried on its own.
        pinned = self._bucket.blob(key, generation=blob.generation)

        def read_range(start: int, end: int) -> bytes:
            data: bytes = pinned.download_as_bytes(
                start=start, end=end, timeout=self._timeout, retry=self._sdk_retry, checksum=None
            )
            if len(data) != end - start + 1:
                raise object_error(
                    self,
                    key,
                    reason=FailureReason.INCOMPLETE,
                    permanent=False,
                    detail=f"asked for bytes {start}-{end}, got {len(data)}",
                )
            return data

        def chunks() -> Iterator[bytes]:
            for start in range(0, size, step):
                end = min(start + step, size) - 1
                yield self._run(
                    functools.partial(read_range, start, end),
                    key=key,
                    what="read",
                    not_found=FailureReason.OBJECT_MISSING,
                )

        return ChunkReader(size=size, chunks=chunks())

    def download_to(self, *, key: str, path: Path) -> int:
        def download(partial: Path) -> int:
            blob = self._bucket.blob(key)
            blob.download_to_filename(os.fspath(partial), timeout=self._timeout, retry=self._sdk_retry)
            return partial.stat().st_size

        return download_whole(
            path,
            lambda partial: self._run(
                functools.partial(download, partial),
                key=key,
                what="download",
                not_found=FailureReason.OBJECT_MISSING,
            ),
        )

    def exists(self, key: str) -> bool:
        found: bool = self._run(
            lambda: self._bucket.blob(key).exists(timeout=self._timeout, retry=self._sdk_retry),
            key=key,
            what="stat",
            not_found=FailureReason.OBJECT_MISSING,
        )
        return found

    def delete(self, key: str) -> None:
        def delete() -> None:
            with contextlib.suppress(api_exceptions.NotFound):
                self._bucket.blob(key).delete(timeout=self._timeout, retry=self._sdk_retry)

        self._run(delete, key=key, what="delete")

    def close(self) -> None:
        self._client.close()


def classify_gcs_error(
    exc: BaseException, *, bucket: str, key: str, not_found: FailureReason = FailureReason.BUCKET_MISSING
) -> StorageError | None:
    """The StorageError an exception from google-cloud-storage stands for, or None if it is not a
    storage failure. ``not_found`` is what a 404 means for the call (the bucket, for writes), unless
    the store's message says it is the bucket."""
    uri = f"gs://{bucket}/{key}"

    def error(reason: FailureReason, *, permanent: bool, detail: str) -> StorageError:
        return StorageError(
            bucket=bucket, key=key, uri=uri, reason=reason, permanent=permanent, detail=detail
        )

    def by_status(status: int, detail: str, message: str) -> StorageError:
        if status == 404:
            reason = FailureReason.BUCKET_MISSING if "bucket" in message.lower() else not_found
            return error(reason, permanent=True, detail=detail)
        if status == 403:
            return error(FailureReason.ACCESS_DENIED, permanent=True, detail=detail)
        if status == 401:
            return error(FailureReason.INVALID_CREDENTIALS, permanent=True, detail=detail)
        if status == 429:
            return error(FailureReason.THROTTLED, permanent=False, detail=detail)
        if status == 408:
            return error(FailureReason.TIMEOUT, permanent=False, detail=detail)
        if status in _TRANSIENT_STATUS or status >= 500:
            return error(FailureReason.SERVER_ERROR, permanent=False, detail=detail)
        return error(FailureReason.BAD_REQUEST, permanent=True, detail=detail)

    for link in exception_chain(exc):
        if isinstance(link, StorageError):
            return link
        if isinstance(link, api_exceptions.RetryError):
            continue  # the SDK gave up retrying: its cause (context) says why
        if isinstance(link, api_exceptions.GoogleAPICallError) and link.code is not None:
            status = int(link.code)
            name = type(link).__name__
            return by_status(status, f"{name}, HTTP {status}", str(link.message))
        if isinstance(link, storage_exceptions.InvalidResponse):
            status = int(getattr(link.response, "status_code", 0) or 0)
            return by_status(status, f"HTTP {status}", str(link))
        if isinstance(link, storage_exceptions.DataCorruption):
            return error(FailureReason.INCOMPLETE, permanent=False, detail=describe_exception(link))
        if isinstance(link, google.auth.exceptions.DefaultCredentialsError):
            return error(FailureReason.NO_CREDENTIALS, permanent=True, detail=describe_exception(link))
        if isinstance(link, google.auth.exceptions.TransportError):
            return error(FailureReason.UNREACHABLE, permanent=False, detail=describe_exception(link))
        if isinstance(link, google.auth.exceptions.RefreshError):
            # Workload Identity's metadata server can fail for a moment; the SDK marks which.
            retryable = bool(getattr(link, "retryable", False))
            return error(
                FailureReason.INVALID_CREDENTIALS, permanent=not retryable, detail=describe_exception(link)
            )
        if isinstance(link, requests.exceptions.Timeout):
            return error(FailureReason.TIMEOUT, permanent=False, detail=describe_exception(link))
        if isinstance(link, requests.exceptions.ConnectionError):
            return error(FailureReason.UNREACHABLE, permanent=False, detail=describe_exception(link))
        if isinstance(
            link, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError
        ):
            return error(FailureReason.INCOMPLETE, permanent=False, detail=describe_exception(link))
    return None
