"""Leader election on a coordination.k8s.io/v1 Lease: of several operator replicas, one reconciles.

Every replica serves the webhook and the REST API; only the one holding the Lease acts on captures
(``handlers`` asks ``is_leader()``). Why a Lease of our own and not Kopf peering: peering pauses
every replica when two share a priority (the Deployment's replicas all do), and a dead peer is
noticed only after its record's lifetime (60 s by default); a Lease taken over by a conditional
write (``resourceVersion``) gives one holder at a time, decided by the apiserver, in seconds.

The rules follow client-go's leaderelection, in one pure function (``decide``): a Lease held by
another identity is taken over only when its record has not changed for ``lease_seconds`` as timed
by *this* process's monotonic clock (never by comparing the holder's timestamps with ours, so clock
skew between nodes does not matter). The holder renews every ``renew_seconds`` and stops counting
itself leader ``renew_deadline_seconds`` after its last successful write, before anyone else may
take over (``renew_deadline_seconds < lease_seconds``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEASE_SECONDS = 10
RENEW_SECONDS = 2.0
RENEW_DEADLINE_SECONDS = 7.0
REQUEST_TIMEOUT_SECONDS = 2.0


class Leadership(Protocol):
    """What handlers ask before acting on a capture."""

    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """A single replica without election (development, tests, leader election switched off)."""

    def is_leader(self) -> bool:
        return True


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRecord:
    """The Lease as read: who holds it, and the version a conditional write must name."""

    holder: str
    lease_seconds: int
    transitions: int
    resource_version: str
    renew_time: str = ""

    @property
    def content(self) -> tuple[str, str, int]:
        """What changes on every write by its holder (a renewal moves ``renew_time``)."""
        return (self.holder, self.renew_time, self.transitions)


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE_OVER = "take_over"  # released, or its holder stopped renewing
    FOLLOW = "follow"  # another identity renews it


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    transitions: int = 0
    """``leaseTransitions`` the write sets (one more on a change of holder)."""


def decide(
    *, lease: LeaseRecord | None, me: str, unchanged_since: float, now: float, lease_seconds: int
) -> Decision:
    """What ``me`` does with ``lease``, whose content this process has seen unchanged since
    ``unchanged_since`` (its monotonic clock, as ``now``)."""
    if lease is None:
        return Decision(Action.CREATE)
    if lease.holder == me:
        return Decision(Action.RENEW, transitions=lease.transitions)
    duration = lease.lease_seconds if lease.lease_seconds > 0 else lease_seconds
    if not lease.holder or now - unchanged_since >= duration:
        return Decision(Action.TAKE_OVER, transitions=lease.transitions + 1)
    return Decision(Action.FOLLOW)


def _micro_time(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    *, holder: str, lease_seconds: int, transitions: int, acquired: bool, now: datetime
) -> dict[str, Any]:
    """The spec a write puts (``acquired``: the holder changes now, so ``acquireTime`` too)."""
    spec: dict[str, Any] = {
        "holderIdentity": holder,
        "leaseDurationSeconds": lease_seconds,
        "leaseTransitions": transitions,
        "renewTime": _micro_time(now),
    }
    if acquired:
        spec["acquireTime"] = _micro_time(now)
    return spec


def _record(api: client.ApiClient, body: Any) -> LeaseRecord:
    data = api.sanitize_for_serialization(body)
    spec = data.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(data["metadata"]["resourceVersion"]),
        renew_time=str(spec.get("renewTime") or ""),
    )


class LeaseElector:
    """The thin loop around ``decide``: read, decide, write conditionally, every ``renew_seconds``.

    A thread of its own, so a busy event loop cannot delay renewals; ``is_leader`` is safe to call
    from any thread.
    """

    def __init__(
        self,
        *,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        renew_deadline_seconds: float = RENEW_DEADLINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not renew_seconds < renew_deadline_seconds < lease_seconds:
            raise ValueError("leader election needs renew_seconds < renew_deadline_seconds < lease_seconds")
        self._api = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self._lease_seconds = lease_seconds
        self._renew_seconds = renew_seconds
        self._renew_deadline = renew_deadline_seconds
        self._clock = clock
        self._renewed_at: float | None = None  # our last successful write as holder
        self._seen: tuple[tuple[str, str, int], float] | None = None  # content, first seen at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self._renew_deadline

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kpcap-leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and hand the Lease over at once (a graceful exit: a rollout takes seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS * 2)
        if self.is_leader():
            self._release()
        self._renewed_at = None

    def _run(self) -> None:
        while not self._stop.is_set():
            was_leader = self.is_leader()
            try:
                self.step()
            except Exception as err:  # noqa: BLE001 - the loop must outlive apiserver trouble
                log.warning("leader election: Lease %s/%s: %s", self.namespace, self.name, err)
            if self.is_leader() != was_leader:
                state = "leading" if self.is_leader() else "standing by"
                log.warning(
                    "leader election: %s %s (Lease %s/%s)", self.identity, state, self.namespace, self.name
                )
            self._stop.wait(self._renew_seconds)

    def step(self) -> Decision:
        """One round: read the Lease, decide, write if the decision says so."""
        now = self._clock()
        try:
            lease: LeaseRecord | None = _record(
                self._api.api_client,
                self._api.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                ),
            )
        except ApiException as err:
            if err.status != 404:
                raise
            lease = None
        if lease is not None and (self._seen is None or self._seen[0] != lease.content):
            self._seen = (lease.content, now)
        since = self._seen[1] if self._seen is not None else now
        decision = decide(
            lease=lease, me=self.identity, unchanged_since=since, now=now, lease_seconds=self._lease_seconds
        )
        if decision.action is Action.FOLLOW:
            self._renewed_at = None
            return decision
        spec = lease_spec(
            holder=self.identity,
            lease_seconds=self._lease_seconds,
            transitions=decision.transitions,
            acquired=decision.action is not Action.RENEW,
            now=datetime.now(UTC),
        )
        try:
            if lease is None:
                body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
                self._api.create_namespaced_lease(
                    self.namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            else:
                if decision.action is Action.RENEW:
                    spec.pop("acquireTime", None)
                body = {
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "resourceVersion": lease.resource_version,
                    },
                    "spec": spec,
                }
                # A merge patch naming resourceVersion is conditional: 409 if anyone wrote since our read.
                self._api.patch_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
        except ApiException as err:
            if err.status in (409, 422):
                self._renewed_at = None  # another replica wrote first: it leads
                return Decision(Action.FOLLOW)
            raise
        self._renewed_at = now
        return decision

    def _release(self) -> None:
        try:
            lease = _record(
                self._api.api_client,
                self._api.read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                ),
            )
            if lease.holder != self.identity:
                return
            body = {
                "metadata": {"resourceVersion": lease.resource_version},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1},
            }
            self._api.patch_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
            log.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as err:  # noqa: BLE001 - best effort: the Lease expires anyway
            log.warning("leader election: releasing Lease %s/%s: %s", self.namespace, self.name, err)
