"""Simple captures' samples: the window asked for, the samplers' answers merged, and what a simple
capture needs bundled (:class:`Sampling`).

Each node runs a sampler (``python -m kpcap_agent sample``, the chart's sampler DaemonSet) holding 1 in
N recent packets; :mod:`kpcap_operator.sampler_client` asks the target nodes' samplers for the
window, and :func:`merge_newest` merges their answers by timestamp as they stream in, holding only
the newest ``packetLimit``, so the operator's memory for a simple capture is bounded by its
packetLimit (times the samplers' snap length), not by the number of nodes, and the file never holds
more. The result is kept in the :class:`~kpcap_operator.sample_store.SampleStore`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Final

from kpcap.model import CaptureSpec
from kpcap.pcap import global_header, merged_header, merged_records, parse_global_header, record_bytes
from kpcap_operator.kube import Kube
from kpcap_operator.sample_store import SampleStore, open_sample_store
from kpcap_operator.sampler_client import SamplerAnswer, Samplers, SamplerTls
from kpcap_operator.settings import OperatorSettings

# SampleStore and SamplerAnswer are part of what this module's callers use with Sampling.
__all__ = [
    "MergedSample",
    "SampleStore",
    "SamplerAnswer",
    "Sampling",
    "merge_newest",
    "open_sampling",
    "sample_window",
]

_NS: Final = 1_000_000_000


def sample_window(*, spec: CaptureSpec, now: datetime) -> tuple[int, int]:
    """[offsetTime - timeLimit, offsetTime] in ns since the epoch; offsetTime defaults to ``now``."""
    until = spec.offset_time or now
    since = until - timedelta(seconds=spec.time_limit)
    return round(since.timestamp() * _NS), round(until.timestamp() * _NS)


@dataclass(frozen=True, slots=True)
class Sampling:
    """What simple captures need: the samplers to ask and the store to keep the result in."""

    samplers: Samplers
    store: SampleStore


def open_sampling(*, settings: OperatorSettings, kube: Kube) -> Sampling:
    """The operator's samplers and sample store, from its settings (ValueError names a bad setting)."""
    samplers = Samplers(
        request_token=partial(
            kube.request_token, service_account=settings.service_account, audience=settings.sampler_audience
        ),
        list_sampler_pods=partial(kube.list_pods, settings.sampler_selector),
        port=settings.sampler_port,
        timeout=settings.sampler_timeout_seconds,
        tls=SamplerTls(settings.sampler_ca_file),
    )
    return Sampling(samplers=samplers, store=open_sample_store(settings.sample_store))


# --- merging -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergedSample:
    pcap: bytes
    packets: int
    packet_bytes: int  # captured packet data (sum of incl_len)
    per_node: dict[str, int]  # packets each node contributed to the file


def merge_newest(
    answers: Sequence[SamplerAnswer], *, limit: int, snap_length: int | None = None
) -> MergedSample:
    """The answers' records merged by timestamp as they stream in; only the newest ``limit`` are
    held, so memory is bounded by the capture's packetLimit, whatever the number of nodes.

    ``snap_length`` (the spec's snapLength) cuts each record's data to it, the original length
    kept; the samplers have already cut theirs to their own snap length, so a larger one changes
    nothing."""
    given = [a for a in answers if a.records is not None]
    inputs = [a.records for a in given if a.records is not None]
    header = merged_header([i.header for i in inputs])
    if snap_length is not None:
        shape = parse_global_header(header)
        header = global_header(
            nanosecond=shape.nanosecond, snaplen=min(shape.snaplen, snap_length), linktype=shape.linktype
        )
    nanosecond = any(i.header.nanosecond for i in inputs)
    newest = deque(merged_records(inputs), maxlen=limit)
    per_node = dict.fromkeys((a.node for a in given), 0)
    chunks = [header]
    packet_bytes = 0
    for index, whole in newest:
        cut = snap_length is not None and whole.captured_length > snap_length
        record = whole._replace(data=whole.data[:snap_length]) if cut else whole
        per_node[given[index].node] += 1
        packet_bytes += record.captured_length
        chunks.append(record_bytes(record, nanosecond=nanosecond))
    return MergedSample(b"".join(chunks), len(newest), packet_bytes, per_node)
