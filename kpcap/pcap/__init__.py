"""Packet captures as files: one record type, the classic pcap format, reading, writing and merging.

- :mod:`kpcap.pcap.record`: :class:`Record`, the one type of a captured packet (and its plain-tuple
  form for the per-packet path);
- :mod:`kpcap.pcap.classic`: the classic libpcap format (constants, headers, one record's bytes);
- :mod:`kpcap.pcap.reader`: records from byte chunks (:class:`PcapRecords`) or a file;
- :mod:`kpcap.pcap.writer`: the writer interface (:class:`RecordWriter`, which a pcapng writer will
  also implement), the file writer the agent's capture loop uses (:class:`PcapWriter`), and
  :func:`pcap_bytes` for a whole file in memory (the sampler's answers);
- :mod:`kpcap.pcap.merge`: several inputs merged by timestamp, as mergecap (the operator's downloads
  and simple captures).
"""

from kpcap.pcap.classic import (
    DEFAULT_SNAPLEN,
    GLOBAL_HEADER_SIZE,
    LINKTYPE_ETHERNET,
    MAGIC_MICRO,
    MAGIC_NANO,
    MAX_RECORD_SIZE,
    PCAP_MEDIA_TYPE,
    RECORD_HEADER_SIZE,
    PcapFormatError,
    PcapHeader,
    global_header,
    parse_global_header,
    record_bytes,
)
from kpcap.pcap.merge import MERGED_SNAPLEN, merge, merged_header, merged_records
from kpcap.pcap.reader import CHUNK_SIZE, PcapRecords, iter_pcap_records
from kpcap.pcap.record import Record, RecordTuple, TimedPacket
from kpcap.pcap.writer import PcapWriter, RecordSink, RecordWriter, pcap_bytes

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_SNAPLEN",
    "GLOBAL_HEADER_SIZE",
    "LINKTYPE_ETHERNET",
    "MAGIC_MICRO",
    "MAGIC_NANO",
    "MAX_RECORD_SIZE",
    "MERGED_SNAPLEN",
    "PCAP_MEDIA_TYPE",
    "RECORD_HEADER_SIZE",
    "PcapFormatError",
    "PcapHeader",
    "PcapRecords",
    "PcapWriter",
    "Record",
    "RecordSink",
    "RecordTuple",
    "RecordWriter",
    "TimedPacket",
    "global_header",
    "iter_pcap_records",
    "merge",
    "merged_header",
    "merged_records",
    "parse_global_header",
    "pcap_bytes",
    "record_bytes",
]
