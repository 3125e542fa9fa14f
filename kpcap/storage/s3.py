"""S3 (and S3-compatible stores) through boto3.

Credentials come only from boto3's standard chain: the environment, the shared config and
credentials files, IRSA (web identity token), container and instance metadata. The endpoint and
region come from the destination. Large files go up as multipart uploads (boto3's TransferConfig);
botocore retries each request, and the store's Retrier retries whole operations on transient
failures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

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

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

_MISSING_BUCKET = {"NoSuchBucket"}
_MISSING_OBJECT = {"NoSuchKey", "NotFound", "404"}
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}
_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
_THROTTLED = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "503",
}
_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
}


class S3Store:
    """One S3 bucket. Thread-safe (one boto3 client, which is)."""

    scheme = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        region: str | None = None,
        endpoint: str | None = None,
        options: StoreOptions | None = None,
        retrier: Retrier | None = None,
    ) -> None:
        self._bucket = bucket
        self._options = options or StoreOptions()
        self._retrier = retrier or Retrier()
        opts = self._options
        addressing = opts.s3_addressing_style or ("path" if endpoint else "auto")
        config = Config(
            region_name=region,
            retries={"mode": opts.sdk_retry_mode, "total_max_attempts": opts.sdk_max_attempts},
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            s3={"addressing_style": addressing},
            # S3-compatible stores often reject the flexible checksums newer botocore adds by default.
            request_checksum_calculation="when_required" if endpoint else "when_supported",
            response_checksum_validation="when_required" if endpoint else "when_supported",
            user_agent_extra="kpcap",
            max_pool_connections=max(10, opts.max_concurrency + 2),
        )
        # A session of our own (sessions are not thread-safe); credentials from its standard chain.
        session = boto3.session.Session()
        self._client: S3Client = session.client("s3", endpoint_url=endpoint, config=config)
        self._transfer = TransferConfig(
            multipart_threshold=opts.multipart_threshold,
            multipart_chunksize=opts.multipart_chunksize,
            max_concurrency=opts.max_concurrency,
            use_threads=opts.max_concurrency > 1,
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    def uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{key}"

    def classify(self, exc: BaseException, *, key: str = "") -> StorageError | None:
        return classify_s3_error(exc, bucket=self._bucket, key=key)

    def _run(self, operation: Callable[[], T], *, key: str, what: str) -> T:
        return self._retrier.call(
            operation, classify=lambda exc: self.classify(exc, key=key), what=f"{what} {self.uri(key)}"
        )

    def upload_file(self, *, local_path: Path, key: str, content_type: str | None = None) -> UploadResult:
        size = local_path.stat().st_size  # FileNotFoundError for a missing file: not a storage error
        extra = {"ContentType": guess_content_type(key, content_type)}

        def upload() -> UploadResult:
            self._client.upload_file(
                Filename=os.fspath(local_path),
                Bucket=self._bucket,
                Key=key,
                ExtraArgs=extra,
                Config=self._transfer,
            )
            head = self._client.head_object(Bucket=self._bucket, Key=key)
            stored = int(head["ContentLength"])
            check_stored_size(self, key, stored=stored, size=size)
            return UploadResult(
                uri=self.uri(key),
                bucket=self._bucket,
                key=key,
                size=stored,
                etag=head.get("ETag", "").strip('"') or None,
            )

        return self._run(upload, key=key, what="upload to")

    def put_bytes(self, *, key: str, data: bytes, content_type: str | None = None) -> UploadResult:
        def put() -> UploadResult:
            response = self._client.put_object(
                Bucket=self._bucket, Key=key, Body=data, ContentType=guess_content_type(key, content_type)
            )
            return UploadResult(
                uri=self.uri(key),
                bucket=self._bucket,
                key=key,
                size=len(data),
                etag=response.get("ETag", "").strip('"') or None,
            )

        return self._run(put, key=key, what="put")

    def get_bytes(self, *, key: str, max_bytes: int) -> bytes:
        check_max_bytes(max_bytes)

        def get() -> bytes:
            response = self._client.get_object(Bucket=self._bucket, Key=key)
            body = response["Body"]
            try:
                length = int(response.get("ContentLength", 0))
                if length > max_bytes:
                    raise self._too_large(key, length, max_bytes)
                data = body.read(max_bytes + 1)  # bounded even if the length header lied
                if len(data) > max_bytes:
                    raise self._too_large(key, len(data), max_bytes)
                return data
            finally:
                body.close()

        return self._run(get, key=key, what="get")

    def _too_large(self, key: str, size: int, max_bytes: int) -> StorageError:
        return object_error(
            self,
            key,
            reason=FailureReason.TOO_LARGE,
            permanent=True,
            detail=f"{size} bytes or more, at most {max_bytes} allowed",
        )

    def open_read(self, key: str, *, chunk_size: int | None = None) -> ObjectReader:
        size_of_chunk = chunk_size or self._options.read_chunk_size
        response = self._run(
            lambda: self._client.get_object(Bucket=self._bucket, Key=key), key=key, what="read"
        )
        body = response["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in body.iter_chunks(size_of_chunk):
                    if chunk:
                        yield chunk
            except Exception as exc:
                error = self.classify(exc, key=key)
                if error is None:
                    raise
                raise error from exc
            finally:
                body.close()

        return ChunkReader(size=int(response["ContentLength"]), chunks=chunks(), on_close=body.close)

    def download_to(self, *, key: str, path: Path) -> int:
        def download(partial: Path) -> int:
            self._client.download_file(
                Bucket=self._bucket, Key=key, Filename=os.fspath(partial), Config=self._transfer
            )
            return partial.stat().st_size

        return download_whole(
            path, lambda partial: self._run(lambda: download(partial), key=key, what="download")
        )

    def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                self._client.head_object(Bucket=self._bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
            return True

        return self._run(head, key=key, what="head")

    def delete(self, key: str) -> None:
        self._run(lambda: self._client.delete_object(Bucket=self._bucket, Key=key), key=key, what="delete")

    def close(self) -> None:
        self._client.close()


def _status(exc: botocore.exceptions.ClientError) -> int:
    try:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    except (TypeError, ValueError):
        return 0


def classify_s3_error(exc: BaseException, *, bucket: str, key: str) -> StorageError | None:
    """The StorageError an exception from boto3 stands for, or None if it is not a storage failure."""
    uri = f"s3://{bucket}/{key}"

    def error(reason: FailureReason, *, permanent: bool, detail: str) -> StorageError:
        return StorageError(
            bucket=bucket, key=key, uri=uri, reason=reason, permanent=permanent, detail=detail
        )

    for link in exception_chain(exc):
        if isinstance(link, StorageError):
            return link
        if isinstance(link, botocore.exceptions.ClientError):
            code = str(link.response.get("Error", {}).get("Code", "")) or "unknown error"
            status = _status(link)
            detail = code if code == str(status) else f"{code}, HTTP {status}" if status else code
            if code in _MISSING_BUCKET:
                return error(FailureReason.BUCKET_MISSING, permanent=True, detail=code)
            if code in _BAD_CREDENTIALS:
                return error(FailureReason.INVALID_CREDENTIALS, permanent=True, detail=code)
            if code in _ACCESS_DENIED or status == 403:
                return error(FailureReason.ACCESS_DENIED, permanent=True, detail=detail)
            if code in _MISSING_OBJECT or status == 404:
                return error(FailureReason.OBJECT_MISSING, permanent=True, detail=detail)
            if code in _WRONG_REGION or status == 301:
                return error(FailureReason.WRONG_REGION, permanent=True, detail=detail)
            if code in _THROTTLED or status == 429:
                return error(FailureReason.THROTTLED, permanent=False, detail=detail)
            if code in _TRANSIENT_CODES or status >= 500:
                return error(FailureReason.SERVER_ERROR, permanent=False, detail=detail)
            return error(FailureReason.BAD_REQUEST, permanent=True, detail=detail)
        if isinstance(
            link, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        ):
            return error(FailureReason.NO_CREDENTIALS, permanent=True, detail=describe_exception(link))
        if isinstance(link, botocore.exceptions.CredentialRetrievalError):
            # IRSA / metadata hiccups: the provider may answer next time.
            return error(FailureReason.NO_CREDENTIALS, permanent=False, detail=describe_exception(link))
        if isinstance(link, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError):
            return error(FailureReason.TIMEOUT, permanent=False, detail=describe_exception(link))
        if isinstance(link, botocore.exceptions.EndpointConnectionError):
            return error(FailureReason.UNREACHABLE, permanent=False, detail=describe_exception(link))
        if isinstance(
            link,
            botocore.exceptions.ConnectionError
            | botocore.exceptions.HTTPClientError
            | botocore.exceptions.IncompleteReadError
            | botocore.exceptions.ResponseStreamingError,
        ):
            return error(FailureReason.INCOMPLETE, permanent=False, detail=describe_exception(link))
        if isinstance(link, botocore.exceptions.ParamValidationError):
            return error(FailureReason.BAD_REQUEST, permanent=True, detail=describe_exception(link))
    return None
