"""An append-only file written in aligned chunks, past the page cache where the filesystem allows.

Why: a full capture writes a node's traffic to disk for minutes (up to 1 GB). Measured on the 2-core
machine under a sustained flood of large frames (benchmarks/capture.py), two thirds of the capture
thread's time went into ``write(2)``: copying each megabyte into the page cache, then being
throttled while the dirty pages were written back, and the ring overflowed meanwhile. Writes with
``O_DIRECT`` skip that copy and the dirty-page accounting (the storage driver reads the user buffer
itself), as Arkime's ``pcapWriteMethod=direct`` does for the same reason. Captured files are read
once, at upload, so the page cache has nothing to offer them.

``O_DIRECT`` needs the buffer, the file offset and the length aligned to the device's logical block
size: records are assembled in place in a page-aligned staging buffer (:attr:`AlignedFile.buffer`),
whole aligned chunks are written, and the unaligned tail is kept for the next chunk; the last tail is
written at :meth:`AlignedFile.close` with ``O_DIRECT`` turned off. Where the filesystem refuses
``O_DIRECT`` (tmpfs, some overlay setups: ``EINVAL``), the same chunks go through the page cache.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path
from typing import Final

ALIGNMENT: Final = 4096  # a multiple of every device's logical block size (512 or 4096)
DEFAULT_CHUNK_BYTES: Final = 1 << 20


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class AlignedFile:
    """A new file (exclusive create: never overwrites) appended to through :attr:`buffer`.

    Callers write up to ``headroom`` bytes past :attr:`used` into :attr:`buffer`, advance
    :attr:`used`, and call :meth:`flush_chunks` once :attr:`used` reaches :attr:`flush_at`.
    """

    def __init__(self, *, path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES, headroom: int) -> None:
        if chunk_bytes < ALIGNMENT or chunk_bytes % ALIGNMENT:
            raise ValueError(f"chunk_bytes must be a positive multiple of {ALIGNMENT}, got {chunk_bytes}")
        self.path: Final = path
        self.flush_at: Final = chunk_bytes
        # Room for a chunk, plus the unaligned tail carried over, plus the largest single append.
        self.buffer: Final = mmap.mmap(-1, _round_up(chunk_bytes + ALIGNMENT + headroom, mmap.PAGESIZE))
        self.used = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        self._closed = False
        self.direct = self._set_direct(True)

    def _set_direct(self, wanted: bool) -> bool:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | os.O_DIRECT if wanted else flags & ~os.O_DIRECT)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            return False
        return wanted

    def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as error:
                # Accepted by fcntl, refused by the filesystem's write path: go through the page cache.
                if error.errno != errno.EINVAL or not self.direct:
                    raise
                self.direct = self._set_direct(False)
                continue
            view = view[written:]

    def flush_chunks(self) -> None:
        """Write the aligned part of what is staged; keep the tail (less than ALIGNMENT bytes)."""
        aligned = self.used - self.used % ALIGNMENT
        if not aligned:
            return
        with memoryview(self.buffer) as staged:
            self._write_all(staged[:aligned])
        tail = self.used - aligned
        if tail:
            self.buffer.move(0, aligned, tail)
        self.used = tail

    def close(self) -> None:
        """Write everything staged, fsync and close; idempotent."""
        if self._closed:
            return
        try:
            self.flush_chunks()
            if self.used:
                if self.direct:
                    self.direct = self._set_direct(False)
                with memoryview(self.buffer) as staged:
                    self._write_all(staged[: self.used])
                self.used = 0
            os.fsync(self._fd)
        finally:
            self._closed = True
            os.close(self._fd)
            self.buffer.close()

    @property
    def closed(self) -> bool:
        return self._closed
