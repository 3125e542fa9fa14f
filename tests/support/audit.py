"""Reading the local apiserver's audit log: who wrote what, answered how.

The local control plane logs every write request at Metadata level, one JSON ``audit.k8s.io/v1``
Event per line at ``ResponseComplete`` (``kpcap_localcluster.controlplane.AUDIT_POLICY``). Tests take
a ``marker()`` before acting and read the entries written since, or filter by time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from kpcap.kubeapi import parse_time

# Stages that end a request: the response code is known.
_FINAL_STAGES = frozenset({"ResponseComplete", "Panic"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One finished request."""

    user: str
    groups: tuple[str, ...]
    user_agent: str
    verb: str
    api_group: str  # "" for the core group
    resource: str  # "" for a non-resource URL (e.g. /healthz)
    subresource: str
    namespace: str
    name: str  # absent for a create at Metadata level: ""
    code: int
    received: datetime
    uri: str


class RequestKey(NamedTuple):
    user: str
    verb: str
    resource: str
    subresource: str
    code: int


def parse_entry(event: dict[str, Any]) -> AuditEntry | None:
    """The entry of one decoded audit Event; None for a stage that does not end the request."""
    if event.get("stage") not in _FINAL_STAGES:
        return None
    user = event.get("user") or {}
    ref = event.get("objectRef") or {}
    received = parse_time(event.get("requestReceivedTimestamp"))
    if received is None:
        raise ValueError(f"audit event {event.get('auditID')} has no requestReceivedTimestamp")
    return AuditEntry(
        user=str(user.get("username", "")),
        groups=tuple(user.get("groups") or ()),
        user_agent=str(event.get("userAgent", "")),
        verb=str(event.get("verb", "")),
        api_group=str(ref.get("apiGroup", "")),
        resource=str(ref.get("resource", "")),
        subresource=str(ref.get("subresource", "")),
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        code=int((event.get("responseStatus") or {}).get("code", 0)),
        received=received,
        uri=str(event.get("requestURI", "")),
    )


def parse_lines(lines: Iterable[str]) -> list[AuditEntry]:
    """Entries of the finished requests among JSON lines (blank lines skipped)."""
    entries = []
    for line in lines:
        if line.strip() and (entry := parse_entry(json.loads(line))) is not None:
            entries.append(entry)
    return entries


class AuditLog:
    """The audit log file of a running apiserver (it only grows while the tests run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def marker(self) -> int:
        """Where the log ends now: pass it to ``entries(since=...)`` to read only what follows.

        The end of the last whole line: under load the apiserver may be half-way through one."""
        if not self.path.exists():
            return 0
        with self.path.open("rb") as log:
            end = log.seek(0, 2)
            start = max(0, end - (1 << 20))
            log.seek(start)
            tail = log.read(end - start)
        newline = tail.rfind(b"\n")
        return start + newline + 1 if newline >= 0 else start

    def entries(
        self, *, since: int = 0, start: datetime | None = None, end: datetime | None = None
    ) -> list[AuditEntry]:
        """Finished requests logged after byte offset ``since``, received in [``start``, ``end``)."""
        with self.path.open("rb") as log:
            log.seek(0, 2)
            if log.tell() < since:
                raise RuntimeError(f"{self.path} was rotated after the marker; raise its --audit-log-maxsize")
            log.seek(since)
            data = log.read()
        # The apiserver may be writing a line right now: only whole lines count.
        complete = data[: data.rfind(b"\n") + 1].decode()
        return [
            entry
            for entry in parse_lines(complete.splitlines())
            if (start is None or entry.received >= start) and (end is None or entry.received < end)
        ]


def count_requests(entries: Iterable[AuditEntry]) -> Counter[RequestKey]:
    """How many requests per (user, verb, resource, subresource, response code)."""
    return Counter(RequestKey(e.user, e.verb, e.resource, e.subresource, e.code) for e in entries)


def format_counts(counts: Counter[RequestKey]) -> str:
    """A table, most frequent first: ``count verb resource[/subresource] code user``."""
    rows = []
    for key, count in counts.most_common():
        resource = f"{key.resource}/{key.subresource}" if key.subresource else key.resource or "-"
        rows.append(f"{count:6d} {key.verb:8s} {resource:32s} {key.code} {key.user}")
    return "\n".join(rows)
