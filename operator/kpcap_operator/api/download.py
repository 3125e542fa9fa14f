"""Downloads: one PCAP stream made of a capture's files, merged by timestamp, never held whole.

Each file is read as an iterator of chunks (``kpcap.storage`` ObjectReader) and merged by
``kpcap.pcap.merge`` (byte for byte mergecap's output for the same files in the same order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kpcap.destinations import Destination, parse_destination
from kpcap.errors import SpecInvalid
from kpcap.model import CaptureType, NodePhase, capture_id
from kpcap.pcap import CHUNK_SIZE, PcapFormatError, PcapRecords, merge
from kpcap.storage import ObjectReader, ObjectStore, open_store
from kpcap_operator import spec_changes
from kpcap_operator.samples import SampleStore

NodeReports = Callable[[str], Mapping[str, Mapping[str, Any]]]
"""Capture id -> node -> the status of its PacketCaptureReport (``kube.Kube.node_reports``)."""

# --- a capture's files ----------------------------------------------------------------------------


def file_uris(capture: Mapping[str, Any], *, reports: NodeReports | None = None) -> list[str]:
    """Every file of the capture: ``status.files``, or, when that lists only the first ones
    (``filesTotal``, over 50 nodes), the objectUri of each done node's report in target order
    (the order ``status.files`` has)."""
    status = capture.get("status") or {}
    files = [str(f) for f in status.get("files") or []]
    if reports is None or int(status.get("filesTotal") or 0) <= len(files):
        return files
    by_node = reports(capture_id(capture["metadata"]["uid"]))
    done = [by_node.get(node) or {} for node in status.get("targetNodes") or []]
    return [str(e["objectUri"]) for e in done if e.get("phase") == NodePhase.DONE and e.get("objectUri")]


def file_keys(
    capture: Mapping[str, Any], *, reports: NodeReports | None = None
) -> tuple[Destination, list[str]]:
    """The store and the object keys of a capture's files (``file_uris``), in that order.

    The store comes from ``spec.destinationConf`` (it carries the region and endpoint the URIs lack);
    a file URI outside that bucket is refused rather than fetched.
    """
    spec = spec_changes.admitted(capture)  # the bucket it was admitted with, whatever the spec says now
    files = file_uris(capture, reports=reports)
    text = spec.get("destinationConf")
    if text is None and files:
        scheme, _, rest = files[0].partition("://")
        text = f"{scheme}://{rest.partition('/')[0]}"
    try:
        destination = parse_destination(text)
    except SpecInvalid as invalid:
        raise PcapFormatError(f"the capture's files cannot be located: {invalid}") from None
    base = f"{destination.scheme.value}://{destination.bucket}/"
    keys = []
    for uri in files:
        if not uri.startswith(base):
            raise PcapFormatError(f"file {uri} is not in the capture's bucket {base}")
        keys.append(uri.removeprefix(base))
    return destination, keys


class MergedDownload:
    """Opened files (headers read, so errors show before the response starts); iterate, then close."""

    def __init__(
        self,
        store: ObjectStore,
        keys: Sequence[str],
        *,
        close_store: bool,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._store = store
        self._close_store = close_store
        self._readers: list[ObjectReader] = []
        try:
            inputs = []
            for key in keys:
                reader = store.open_read(key, chunk_size=chunk_size)
                self._readers.append(reader)
                inputs.append(PcapRecords(reader))
            self._chunks = merge(inputs, chunk_size=chunk_size)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        if self._close_store:
            self._store.close()


def open_capture_download(
    capture: Mapping[str, Any], *, sample_store: SampleStore | None, reports: NodeReports | None = None
) -> MergedDownload:
    """A finished capture's PCAP: a simple capture's file in the operator's own store, or a full
    capture's node files merged from its bucket (all of them: from ``reports`` past 50 files)."""
    if spec_changes.admitted(capture).get("type") == CaptureType.SIMPLE.value:
        if sample_store is None:
            raise PcapFormatError("this operator keeps no simple captures (no sample store configured)")
        meta = capture["metadata"]
        key = sample_store.key(namespace=meta["namespace"], capture_id=capture_id(meta["uid"]))
        return MergedDownload(sample_store.store, [key], close_store=False)
    destination, keys = file_keys(capture, reports=reports)
    return MergedDownload(open_store(destination), keys, close_store=True)
