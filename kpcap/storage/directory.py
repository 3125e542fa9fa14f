"""An ObjectStore on a local directory: the operator's own store of simple captures' PCAPs.

Keys are relative paths under the root; a key that would leave the root ("..", an absolute path, an
empty segment) is refused. Writes go to a temporary file in the same directory, are fsynced and then
renamed over the key, so a reader sees the whole object or none (a crash leaves at most a stray
``.tmp-*`` file, never a half-written PCAP under the key).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from kpcap.storage.base import (
    ChunkReader,
    FailureReason,
    ObjectReader,
    StorageError,
    UploadResult,
    check_max_bytes,
    object_error,
)

SCHEME = "file"
_DEFAULT_CHUNK = 64 * 1024


class DirectoryStore:
    """One directory as a bucket (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        if not root.is_absolute():
            raise ValueError(f"the store's directory must be an absolute path, got {str(root)!r}")
        self._root = root

    @property
    def scheme(self) -> str:
        return SCHEME

    @property
    def bucket(self) -> str:
        return str(self._root)

    def uri(self, key: str) -> str:
        return f"{SCHEME}://{self._root}/{key}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise object_error(
                self,
                key,
                reason=FailureReason.BAD_REQUEST,
                permanent=True,
                detail="a key is a relative path without empty, '.' or '..' segments",
            )
        return self._root.joinpath(*parts)

    def _error(self, operation: str, key: str, err: OSError) -> StorageError:
        missing = isinstance(err, FileNotFoundError)
        return object_error(
            self,
            key,
            reason=FailureReason.OBJECT_MISSING if missing else FailureReason.SERVER_ERROR,
            permanent=missing,
            detail=f"{operation}: {err.strerror or err}",
        )

    def _write(self, key: str, fill: Callable[[int], None], operation: str) -> UploadResult:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            temporary = Path(name)
            try:
                try:
                    fill(descriptor)
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
                temporary.replace(path)
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
            size = path.stat().st_size
        except OSError as err:
            raise self._error(operation, key, err) from err
        return UploadResult(uri=self.uri(key), bucket=self.bucket, key=key, size=size)

    def upload_file(self, *, local_path: Path, key: str, content_type: str | None = None) -> UploadResult:  # noqa: ARG002 -- files have no content type
        def fill(descriptor: int) -> None:
            with local_path.open("rb") as source, os.fdopen(os.dup(descriptor), "wb") as target:
                shutil.copyfileobj(source, target)

        return self._write(key, fill, "upload")

    def put_bytes(self, *, key: str, data: bytes, content_type: str | None = None) -> UploadResult:  # noqa: ARG002 -- files have no content type
        def fill(descriptor: int) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]

        return self._write(key, fill, "put")

    def get_bytes(self, *, key: str, max_bytes: int) -> bytes:
        check_max_bytes(max_bytes)
        path = self._path(key)
        try:
            with path.open("rb") as file:
                data = file.read(max_bytes + 1)
        except OSError as err:
            raise self._error("get", key, err) from err
        if len(data) > max_bytes:
            raise object_error(
                self,
                key,
                reason=FailureReason.TOO_LARGE,
                permanent=True,
                detail=f"more than {max_bytes} bytes",
            )
        return data

    def open_read(self, key: str, *, chunk_size: int = _DEFAULT_CHUNK) -> ObjectReader:
        path = self._path(key)
        try:
            file = path.open("rb")
            size = os.fstat(file.fileno()).st_size
        except OSError as err:
            raise self._error("read", key, err) from err

        def chunks() -> Iterator[bytes]:
            while chunk := file.read(chunk_size):
                yield chunk

        return ChunkReader(size=size, chunks=chunks(), on_close=file.close)

    def download_to(self, *, key: str, path: Path) -> int:
        source = self._path(key)
        try:
            shutil.copyfile(source, path)
            return path.stat().st_size
        except OSError as err:
            with contextlib.suppress(OSError):
                path.unlink()
            raise self._error("download", key, err) from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as err:
            raise self._error("delete", key, err) from err

    def close(self) -> None:
        """Nothing to release."""
