"""What every storage backend shares: the interface, the error, the results and the retry loop.

The backends (``kpcap.storage.s3``, ``kpcap.storage.gcs``) only translate between this interface and
their SDK; the retry loop, the error shape and the tuning knobs live here, so the operator and the
agent see one behaviour whichever bucket a capture names.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol, Self, TypeVar, runtime_checkable

from kpcap.pcap import PCAP_MEDIA_TYPE

log = logging.getLogger("kpcap.storage")

T = TypeVar("T")

MiB = 1024 * 1024
GCS_CHUNK_QUANTUM = 256 * 1024  # a resumable upload's chunk size must be a multiple of this
PCAP_CONTENT_TYPE = PCAP_MEDIA_TYPE  # the storage API's name for it
DEFAULT_CONTENT_TYPE = "application/octet-stream"


class FailureReason(StrEnum):
    """Why a storage call failed, in words a capture's status can carry."""

    BUCKET_MISSING = "bucket does not exist"
    OBJECT_MISSING = "object does not exist"
    ACCESS_DENIED = "access denied"
    INVALID_CREDENTIALS = "invalid credentials"
    NO_CREDENTIALS = "no credentials"
    WRONG_REGION = "wrong region"
    TOO_LARGE = "object too large"
    BAD_REQUEST = "request rejected"
    UNREACHABLE = "store unreachable"
    THROTTLED = "throttled"
    SERVER_ERROR = "server error"
    TIMEOUT = "timed out"
    INCOMPLETE = "incomplete transfer"


_EXPLANATIONS: dict[str, str] = {
    FailureReason.BUCKET_MISSING: "the bucket does not exist",
    FailureReason.OBJECT_MISSING: "the object does not exist",
    FailureReason.ACCESS_DENIED: "access denied",
    FailureReason.INVALID_CREDENTIALS: "the credentials were rejected",
    FailureReason.NO_CREDENTIALS: "no credentials were found in the standard chain",
    FailureReason.WRONG_REGION: "the bucket is in another region",
    FailureReason.TOO_LARGE: "the object is larger than allowed",
    FailureReason.BAD_REQUEST: "the store rejected the request",
    FailureReason.UNREACHABLE: "the store could not be reached",
    FailureReason.THROTTLED: "the store throttled the request",
    FailureReason.SERVER_ERROR: "the store failed with a server error",
    FailureReason.TIMEOUT: "the request timed out",
    FailureReason.INCOMPLETE: "the transfer was incomplete",
}


class StorageError(Exception):
    """A storage call failed. Read-only fields: ``bucket``, ``key``, ``uri`` (of the object, or the
    bucket when no key applies), ``reason`` (a FailureReason value), ``permanent`` (retrying cannot
    help), ``detail`` (the store's error code or the exception, for logs) and ``attempts`` made.

    ``str()`` says which object and why, e.g.
    ``s3://my-bucket/pcap_x/node-1.pcap: the bucket does not exist (NoSuchBucket)``.
    """

    __slots__ = ("_attempts", "_bucket", "_detail", "_key", "_permanent", "_reason", "_uri")

    def __init__(
        self,
        *,
        bucket: str,
        key: str,
        uri: str,
        reason: str,
        permanent: bool,
        detail: str = "",
        attempts: int = 1,
    ) -> None:
        self._bucket = bucket
        self._key = key
        self._uri = uri
        self._reason = reason
        self._permanent = permanent
        self._detail = detail
        self._attempts = attempts
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self._uri}: {_EXPLANATIONS.get(self._reason, self._reason)}"
        if self._detail:
            text += f" ({self._detail})"
        if self._attempts > 1:
            text += f", after {self._attempts} attempts"
        return text

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def key(self) -> str:
        return self._key

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def permanent(self) -> bool:
        return self._permanent

    @property
    def detail(self) -> str:
        return self._detail

    @property
    def attempts(self) -> int:
        return self._attempts

    def with_attempts(self, attempts: int) -> StorageError:
        """The same error, saying how many attempts were made."""
        return StorageError(
            bucket=self._bucket,
            key=self._key,
            uri=self._uri,
            reason=self._reason,
            permanent=self._permanent,
            detail=self._detail,
            attempts=attempts,
        )

    def __reduce__(self) -> tuple[Callable[..., StorageError], tuple[object, ...]]:
        return (
            _rebuild_storage_error,
            (self._bucket, self._key, self._uri, self._reason, self._permanent, self._detail, self._attempts),
        )


def _rebuild_storage_error(
    bucket: str, key: str, uri: str, reason: str, permanent: bool, detail: str, attempts: int
) -> StorageError:
    return StorageError(
        bucket=bucket, key=key, uri=uri, reason=reason, permanent=permanent, detail=detail, attempts=attempts
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadResult:
    """What the store holds after an upload: the object's URI and size, and its version markers
    (``etag`` on both; ``generation``, ``md5`` and ``crc32c`` (base64) on GCS)."""

    uri: str
    bucket: str
    key: str
    size: int
    etag: str | None = None
    generation: int | None = None
    md5: str | None = None
    crc32c: str | None = None


@runtime_checkable
class ObjectReader(Protocol):
    """An object being read: iterate it for its bytes in chunks; close it when done (or use ``with``)."""

    @property
    def size(self) -> int: ...

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class ObjectStore(Protocol):
    """One bucket of one storage service. Every method raises StorageError on failure; transient
    failures have already been retried by then. The store never deletes a local file."""

    @property
    def scheme(self) -> str: ...

    @property
    def bucket(self) -> str: ...

    def uri(self, key: str) -> str:
        """``<scheme>://<bucket>/<key>``."""
        ...

    def upload_file(self, *, local_path: Path, key: str, content_type: str | None = None) -> UploadResult:
        """Upload a local file (multipart on S3, resumable on GCS once it is large)."""
        ...

    def put_bytes(self, *, key: str, data: bytes, content_type: str | None = None) -> UploadResult:
        """Write a small object in one request."""
        ...

    def get_bytes(self, *, key: str, max_bytes: int) -> bytes:
        """Read a small object; StorageError (reason TOO_LARGE) if it has more than ``max_bytes``."""
        ...

    def open_read(self, key: str, *, chunk_size: int = ...) -> ObjectReader:
        """Stream an object: chunks of at most ``chunk_size`` bytes, never the whole object at once."""
        ...

    def download_to(self, *, key: str, path: Path) -> int:
        """Download an object to ``path`` (written whole or not at all); returns its size."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Delete an object; deleting one that is already gone is not an error."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Our own bounded retry around whole operations (on top of the SDK's per-request retries):
    at most ``max_attempts`` tries and ``deadline`` seconds, sleeping a "full jitter" exponential
    backoff between tries: uniform in [0, min(max_delay, base_delay * 2**(n-1))] after try n."""

    max_attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0
    deadline: float | None = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must not be negative")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"deadline must be positive or None, got {self.deadline}")

    def backoff_cap(self, attempt: int) -> float:
        """The largest sleep after failed try number ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreOptions:
    """Transfer tuning and the SDKs' own retry settings.

    S3: files of ``multipart_threshold`` bytes or more go up in ``multipart_chunksize`` parts,
    ``max_concurrency`` at a time; botocore retries each request (``sdk_retry_mode``,
    ``sdk_max_attempts`` tries in all). ``s3_addressing_style`` defaults to path style for custom
    endpoints (what S3-compatible stores expect) and to botocore's choice on AWS.
    GCS: files over 8 MiB go up as a resumable upload in ``gcs_chunk_size`` chunks (a multiple of
    256 KiB); the client retries transient failures for up to ``gcs_sdk_retry_timeout`` seconds
    (resuming from the last chunk the server acknowledged; 0 turns that off).
    """

    multipart_threshold: int = 8 * MiB
    multipart_chunksize: int = 8 * MiB
    max_concurrency: int = 4
    sdk_retry_mode: Literal["standard", "adaptive"] = "standard"
    sdk_max_attempts: int = 3
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    s3_addressing_style: Literal["auto", "path", "virtual"] | None = None
    gcs_chunk_size: int = 8 * MiB
    gcs_sdk_retry_timeout: float = 60.0
    read_chunk_size: int = MiB

    def __post_init__(self) -> None:
        if self.multipart_chunksize < 5 * MiB:
            raise ValueError(
                "multipart_chunksize must be at least 5 MiB (S3's minimum part size), "
                f"got {self.multipart_chunksize}"
            )
        if self.multipart_threshold < 1:
            raise ValueError(f"multipart_threshold must be positive, got {self.multipart_threshold}")
        if self.gcs_chunk_size <= 0 or self.gcs_chunk_size % GCS_CHUNK_QUANTUM:
            raise ValueError(
                f"gcs_chunk_size must be a positive multiple of 256 KiB, got {self.gcs_chunk_size}"
            )
        if self.sdk_max_attempts < 1 or self.max_concurrency < 1 or self.read_chunk_size < 1:
            raise ValueError("sdk_max_attempts, max_concurrency and read_chunk_size must be at least 1")
        if self.gcs_sdk_retry_timeout < 0:
            raise ValueError(f"gcs_sdk_retry_timeout must not be negative, got {self.gcs_sdk_retry_timeout}")


Classifier = Callable[[BaseException], "StorageError | None"]


@dataclass(slots=True, kw_only=True)
class Retrier:
    """Runs an operation under a RetryPolicy. ``sleep``, ``clock`` and ``jitter`` (a source of
    floats in [0, 1)) are injectable so the loop can be tested without waiting."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = random.random

    def call(self, operation: Callable[[], T], *, classify: Classifier, what: str = "") -> T:
        """Call ``operation`` until it returns. ``classify`` turns an exception into a StorageError
        (or None: not a storage failure, re-raised as is). A permanent StorageError is raised at
        once; a transient one is retried until the attempts or the deadline run out."""
        started = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except Exception as exc:
                error = exc if isinstance(exc, StorageError) else classify(exc)
                if error is None:
                    raise
                if error.permanent:
                    raise error.with_attempts(attempt) from exc
                if attempt >= self.policy.max_attempts:
                    raise error.with_attempts(attempt) from exc
                delay = self.jitter() * self.policy.backoff_cap(attempt)
                if self.policy.deadline is not None and self.clock() + delay - started > self.policy.deadline:
                    raise error.with_attempts(attempt) from exc
                log.warning(
                    "%s failed (try %d of %d), retrying in %.2fs: %s",
                    what or error.uri,
                    attempt,
                    self.policy.max_attempts,
                    delay,
                    error,
                )
                self.sleep(delay)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (SDKs wrap each other's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def guess_content_type(key: str, content_type: str | None) -> str:
    if content_type:
        return content_type
    return PCAP_CONTENT_TYPE if key.endswith(".pcap") else DEFAULT_CONTENT_TYPE


def describe_exception(exc: BaseException, *, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_max_bytes(max_bytes: int) -> None:
    if max_bytes < 0:
        raise ValueError(f"max_bytes must not be negative, got {max_bytes}")


def object_error(
    store: ObjectStore, key: str, *, reason: FailureReason, permanent: bool, detail: str
) -> StorageError:
    """A StorageError about ``key`` in ``store``'s bucket."""
    return StorageError(
        bucket=store.bucket, key=key, uri=store.uri(key), reason=reason, permanent=permanent, detail=detail
    )


def check_stored_size(store: ObjectStore, key: str, *, stored: int, size: int) -> None:
    """An upload that left fewer or more bytes than it sent is a transient INCOMPLETE failure."""
    if stored != size:
        raise object_error(
            store,
            key,
            reason=FailureReason.INCOMPLETE,
            permanent=False,
            detail=f"stored {stored} bytes of {size}",
        )


def download_whole(path: Path, download: Callable[[Path], int]) -> int:
    """``download(partial)`` writes a ``.part`` file beside ``path`` and returns its size; the file
    is then renamed to ``path``, so ``path`` is written whole or not at all."""
    partial = path.with_name(path.name + ".part")
    try:
        size = download(partial)
        partial.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return size


class ChunkReader:
    """An ObjectReader over a generator of chunks; ``close`` stops it and releases its connection."""

    def __init__(
        self, *, size: int, chunks: Iterator[bytes], on_close: Callable[[], None] | None = None
    ) -> None:
        self._size = size
        self._chunks = chunks
        self._on_close = on_close
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        return next(self._chunks)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
