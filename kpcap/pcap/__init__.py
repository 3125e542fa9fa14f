"""Packet captures as files: one record type, the classic pcap format, reading, writing and merging.

- :mod:`kpcap.pcap.record`: :class:`Record`, the one type of a captured packet (and its plain-tuple
  form for the per-packet path);
- :mod:`kpcap.pcap.classic`: the classic libpcap format (constants, headers, one record's bytes);
- :mod:`kpcap.pcap.reader`: records from byte chunks (:class:`PcapRecords`) or a file;
- :mod:`kpcap.pcap.writer`: the writer interface (:class:`RecordWriter`, which a pcapng writer will
  also implement), the file writer the agent's capture loop uses (:class:`PcapWriter`), and
  :func:`pcap_bytes` for a whole file in memory (the sampler's answers);
- :mod:`kpcap.pcap.merge`: several inputs merged by timestamp, as mergecap (the operator's downloads
  and simple captures);
- :mod:`kpcap.pcap.pcapng_blocks`: the pcapng blocks as bytes (pure builders), epb_flags from the
  AF_PACKET packet type;
- :mod:`kpcap.pcap.pcapng`: :class:`PcapngWriter`, a capture's section and its interfaces
  (``<node>/<interface>``);
- :mod:`kpcap.pcap.pcapng_reader`: pcapng as events (:class:`PcapngReader`), and
  :func:`open_capture` for inputs of either format;
- :mod:`kpcap.pcap.pcapng_merge`: classic and pcapng inputs merged into one pcapng
  (:func:`merge_pcapng`) or one classic pcap (:func:`merge_pcap`), streaming.
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
from kpcap.pcap.merge import MERGED_SNAPLEN, merge, merge_packets, merged_header, merged_records
from kpcap.pcap.pcapng import PcapngWriter, capture_section, interface_name, kpcap_version, node_interface
from kpcap.pcap.pcapng_blocks import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    PACKET_OUTGOING,
    PCAPNG_MEDIA_TYPE,
    InterfaceInfo,
    InterfaceStatistics,
    SectionInfo,
    packet_flags,
)
from kpcap.pcap.pcapng_merge import ClassicInput, MergeInput, merge_input, merge_pcap, merge_pcapng
from kpcap.pcap.pcapng_reader import (
    PcapngEvent,
    PcapngInterface,
    PcapngNames,
    PcapngPacket,
    PcapngReader,
    PcapngSection,
    PcapngStatistics,
    open_capture,
)
from kpcap.pcap.reader import CHUNK_SIZE, PcapRecords, iter_pcap_records
from kpcap.pcap.record import Record, RecordTuple, TimedPacket
from kpcap.pcap.writer import PcapWriter, RecordSink, RecordWriter, StagedRecordWriter, pcap_bytes

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_SNAPLEN",
    "GLOBAL_HEADER_SIZE",
    "LINKTYPE_ETHERNET",
    "MAGIC_MICRO",
    "MAGIC_NANO",
    "MAX_RECORD_SIZE",
    "MERGED_SNAPLEN",
    "PACKET_BROADCAST",
    "PACKET_HOST",
    "PACKET_MULTICAST",
    "PACKET_OTHERHOST",
    "PACKET_OUTGOING",
    "PCAPNG_MEDIA_TYPE",
    "PCAP_MEDIA_TYPE",
    "RECORD_HEADER_SIZE",
    "ClassicInput",
    "InterfaceInfo",
    "InterfaceStatistics",
    "MergeInput",
    "PcapFormatError",
    "PcapHeader",
    "PcapRecords",
    "PcapWriter",
    "PcapngEvent",
    "PcapngInterface",
    "PcapngNames",
    "PcapngPacket",
    "PcapngReader",
    "PcapngSection",
    "PcapngStatistics",
    "PcapngWriter",
    "Record",
    "RecordSink",
    "RecordTuple",
    "RecordWriter",
    "SectionInfo",
    "StagedRecordWriter",
    "TimedPacket",
    "capture_section",
    "global_header",
    "interface_name",
    "iter_pcap_records",
    "kpcap_version",
    "merge",
    "merge_input",
    "merge_packets",
    "merge_pcap",
    "merge_pcapng",
    "merged_header",
    "merged_records",
    "node_interface",
    "open_capture",
    "packet_flags",
    "parse_global_header",
    "pcap_bytes",
    "record_bytes",
]
