"""Where the operator keeps simple captures' PCAPs: a directory (a volume), or a bucket with a prefix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kpcap.destinations import parse_destination
from kpcap.errors import SpecInvalid
from kpcap.storage import ObjectStore, open_store
from kpcap.storage.directory import DirectoryStore


@dataclass(frozen=True, slots=True)
class SampleStore:
    """The operator's own store of simple captures' PCAPs: a directory, or a bucket with a prefix."""

    store: ObjectStore
    prefix: str

    def key(self, *, namespace: str, capture_id: str) -> str:
        """Derived from the capture's namespace and id only, never from user-written fields."""
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, namespace, f"pcap_{capture_id}.pcap"])


def open_sample_store(location: str) -> SampleStore:
    """``location``: an absolute directory path, or ``s3://bucket/prefix?region=...`` / ``gs://bucket/prefix``.

    Raises ValueError naming KPCAP_SAMPLE_STORE and what is allowed.
    """
    if "://" in location:
        try:
            destination = parse_destination(location, field="KPCAP_SAMPLE_STORE")
        except SpecInvalid as invalid:
            raise ValueError(str(invalid)) from None
        return SampleStore(store=open_store(destination), prefix=destination.prefix)
    path = Path(location)
    if not path.is_absolute():
        raise ValueError(
            f"KPCAP_SAMPLE_STORE: must be an absolute directory path or an s3:// or gs:// bucket URI, "
            f"got {location!r}"
        )
    return SampleStore(store=DirectoryStore(path), prefix="")
