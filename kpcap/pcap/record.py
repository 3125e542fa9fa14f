"""A captured packet: the one record type the sources capture, the writers store and the readers return."""

from __future__ import annotations

from typing import Final, NamedTuple, Protocol

NANOSECONDS_PER_SECOND: Final = 1_000_000_000


class Record(NamedTuple):
    """One captured packet.

    A NamedTuple, with the timestamp as seconds and nanoseconds as the kernel's ring and a pcap
    record header hold it: one is built per packet, and this is the cheapest shape. ``data`` is what
    was captured (at most the snap length), ``original_length`` the packet's length on the wire,
    ``interface_index`` the interface it was seen on (0 when not known; classic pcap does not store
    it, a pcapng file will).
    """

    seconds: int
    nanoseconds: int
    data: bytes
    original_length: int
    interface_index: int = 0

    @property
    def timestamp_ns(self) -> int:
        return self.seconds * NANOSECONDS_PER_SECOND + self.nanoseconds

    @property
    def captured_length(self) -> int:
        return len(self.data)

    @classmethod
    def at(
        cls, *, timestamp_ns: int, data: bytes, original_length: int | None = None, interface_index: int = 0
    ) -> Record:
        seconds, nanoseconds = divmod(timestamp_ns, NANOSECONDS_PER_SECOND)
        return cls(
            seconds,
            nanoseconds,
            data,
            len(data) if original_length is None else original_length,
            interface_index,
        )


# A Record's fields as a plain tuple: what the live source builds per packet, because a NamedTuple
# call costs about six times a tuple display. Every Record is one; the hot path takes either.
RecordTuple = tuple[int, int, bytes, int, int]


class TimedPacket(Protocol):
    """What the encoders read from a packet: a Record, or a store's compact form of one (the
    sampler's held records, which keep one timestamp to stay small)."""

    @property
    def timestamp_ns(self) -> int: ...

    @property
    def original_length(self) -> int: ...

    @property
    def data(self) -> bytes: ...
