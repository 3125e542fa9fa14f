"""An append-only file written in aligned chunks by a writer thread, past the page cache where the
filesystem allows.

Why past the page cache: a full capture writes a node's traffic to disk for minutes (up to 1 GB).
Measured on the 2-core machine under a sustained flood of large frames (benchmarks/capture.py), two
thirds of the capture thread's time went into ``write(2)``: copying each megabyte into the page
cache, then being throttled while the dirty pages were written back, and the ring overflowed
meanwhile. In a capture pod it is worse: the pod's memory limit (256Mi by default) bounds its dirty
pages too, so buffered writes are throttled after a few tens of megabytes. Writes with ``O_DIRECT``
skip the copy and the dirty-page accounting (the storage driver reads the user buffer itself), as
Arkime's ``pcapWriteMethod=direct`` does for the same reason. Captured files are read once, at
upload, so the page cache has nothing to offer them.

Why a writer thread: a direct write returns when the device has the data, and a device shared with
other pods can take tens of milliseconds to answer, or seconds when it is saturated. Meanwhile the
capture thread keeps filling the next staging chunk from the ring; up to ``queue_chunks`` filled
chunks wait for the writer (16 MiB). ``os.write`` releases the GIL, so the two overlap. When the
device falls further behind, the writer sends chunks through the page cache until it has caught up
(:meth:`AlignedFile._write_chunks`): the page cache is then the buffer, as it is for tcpdump.

``O_DIRECT`` needs the buffer, the file offset and the length aligned to the device's logical block
size: records are assembled in place in a page-aligned staging chunk (:attr:`AlignedFile.buffer`),
whole aligned parts are written, and the unaligned tail moves to the start of the next chunk; the
last tail is written at :meth:`AlignedFile.close` with ``O_DIRECT`` turned off. Where the filesystem
refuses ``O_DIRECT`` (tmpfs, some overlay setups: ``EINVAL``), the same chunks go through the page
cache.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from pathlib import Path
from typing import Final

ALIGNMENT: Final = 4096  # a multiple of every device's logical block size (512 or 4096)
DEFAULT_CHUNK_BYTES: Final = 1 << 20
DEFAULT_QUEUE_CHUNKS: Final = 16


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def write_direct(*, direct: bool, backlog: int, behind: int, caught_up: int) -> bool:
    """Whether the next chunk is written past the page cache, given the chunks still waiting.

    Through the page cache from ``behind`` waiting chunks on, past it again from ``caught_up`` or
    fewer: two thresholds, so the writer does not switch on every chunk.
    """
    if direct:
        return backlog < behind
    return backlog <= caught_up


class AlignedFile:
    """A new file (exclusive create: never overwrites) appended to through :attr:`buffer`.

    Callers write up to ``headroom`` bytes past :attr:`used` into :attr:`buffer`, advance
    :attr:`used`, and call :meth:`flush_chunks` once :attr:`used` reaches :attr:`flush_at`; after
    that call :attr:`buffer` may be another chunk (read it again). A write error of the writer thread
    is raised by the next :meth:`flush_chunks`, or by :meth:`close` if none did; nothing is written
    after it (the file ends with the last chunk written).
    """

    def __init__(
        self,
        *,
        path: Path,
        headroom: int,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        queue_chunks: int = DEFAULT_QUEUE_CHUNKS,
    ) -> None:
        if chunk_bytes < ALIGNMENT or chunk_bytes % ALIGNMENT:
            raise ValueError(f"chunk_bytes must be a positive multiple of {ALIGNMENT}, got {chunk_bytes}")
        if queue_chunks < 1:
            raise ValueError(f"queue_chunks must be at least 1, got {queue_chunks}")
        self.path: Final = path
        self.flush_at: Final = chunk_bytes
        # A chunk has room for itself, the unaligned tail carried over, and the largest single append.
        self._chunk_size = _round_up(chunk_bytes + ALIGNMENT + headroom, mmap.PAGESIZE)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        self._closed = False
        self.direct = self._set_direct(True)
        self._direct_supported = self.direct
        self.direct_chunks = 0  # chunks written past the page cache, and through it (a slow device)
        self.cached_chunks = 0
        self.buffer = mmap.mmap(-1, self._chunk_size)
        self.used = 0
        # Chunks are made when first needed (an idle capture pays for one) and reused after that.
        self._chunks_made = 1
        self._queue_chunks = queue_chunks
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        # SimpleQueue (in C): a Queue's Python-level condition variables cost more than the write.
        self._filled: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._error_raised = False
        self._writer = threading.Thread(target=self._write_chunks, name=f"write {path.name}", daemon=True)
        self._writer.start()

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
                self.direct = self._direct_supported = self._set_direct(False)
                continue
            view = view[written:]

    def _write_chunks(self) -> None:
        """The writer thread: filled chunks in order, each back to the free pool once written.

        When the device falls behind (half the queue waiting), chunks go through the page cache,
        which takes them at memory speed, until the queue is short again: the capture thread never
        waits for a slow device while there is memory for the page cache, as tcpdump's writes do.
        """
        behind, caught_up = max(1, self._queue_chunks // 2), 1
        while (item := self._filled.get()) is not None:
            chunk, length = item
            try:
                if self._error is None:
                    if self._direct_supported:
                        backlog = self._filled.qsize()
                        wanted = write_direct(
                            direct=self.direct, backlog=backlog, behind=behind, caught_up=caught_up
                        )
                        if wanted != self.direct:
                            self.direct = self._set_direct(wanted)
                    if self.direct:
                        self.direct_chunks += 1
                    else:
                        self.cached_chunks += 1
                    with memoryview(chunk) as staged:
                        self._write_all(staged[:length])
            except BaseException as error:  # noqa: BLE001 - handed to the capture thread
                # Without its traceback: its frames hold views of the chunk, which could not be unmapped.
                self._error = error.with_traceback(None)
            finally:
                self._free.put(chunk)

    def _raise_writer_error(self) -> None:
        if self._error is not None:
            self._error_raised = True
            raise OSError(f"writing {self.path} failed: {self._error}") from self._error

    def _next_chunk(self) -> mmap.mmap:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._chunks_made < self._queue_chunks + 1:
                self._chunks_made += 1
                return mmap.mmap(-1, self._chunk_size)
        return self._free.get()  # every chunk is waiting for the device: wait for one to come back

    def flush_chunks(self) -> None:
        """Hand the aligned part of what is staged to the writer; keep the tail in a fresh chunk."""
        self._raise_writer_error()
        aligned = self.used - self.used % ALIGNMENT
        if not aligned:
            return
        tail = self.used - aligned
        filled, self.buffer = self.buffer, self._next_chunk()
        if tail:
            self.buffer[:tail] = filled[aligned : self.used]
        self._filled.put((filled, aligned))
        self.used = tail

    def close(self) -> None:
        """Write everything staged, fsync and close; idempotent. Raises what a write raised."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                if self._error is None:
                    self.flush_chunks()
            finally:
                self._filled.put(None)  # the writer thread ends once the chunks before it are written
                self._writer.join()
            if self._error is not None:
                # The file lacks a chunk from there on: write nothing after it; raise the error
                # unless a write already did (closing after a failed write only frees things).
                if self._error_raised:
                    return
                self._raise_writer_error()
            if self.used:
                if self.direct:
                    self._set_direct(False)  # the unaligned last tail; ``direct`` says how chunks went
                with memoryview(self.buffer) as staged:
                    self._write_all(staged[: self.used])
                self.used = 0
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self.buffer.close()
            while not self._free.empty():
                self._free.get_nowait().close()

    @property
    def capacity(self) -> int:
        """Bytes a staging chunk holds (:attr:`flush_at`, the tail carried over, the headroom)."""
        return self._chunk_size

    @property
    def direct_supported(self) -> bool:
        """Whether the filesystem takes ``O_DIRECT`` writes of this file."""
        return self._direct_supported

    @property
    def closed(self) -> bool:
        return self._closed
