"""Bucket ownership: prove a bucket is yours before full captures may be written to it.

Flow (upstream's): create -> the API writes ``ownership-challenge-<hex>.txt`` (a random secret) under
the destination's prefix in the bucket -> the user reads it from their bucket and posts its contents
to validate -> full captures in that account (namespace) may then go to that bucket.

Storage design: one ConfigMap per account, ``kpcap-ownership-<namespace>``, in the **operator's
namespace**, one data key per ownership id (a JSON record). Why there and not in the account's
namespace (a ConfigMap or annotations there): an ownership record is an authorisation the operator
acts on with its own storage credentials, so users must not be able to forge one; Kubernetes'
default ``edit`` role lets a namespace's users write its ConfigMaps, and annotations on objects they
own are theirs to edit too. In the operator's namespace only the operator (and cluster admins)
write them; users reach them only through the API, authorised by SubjectAccessReview. The record
keeps the SHA-256 of the challenge, not the challenge itself, so reading the ConfigMap does not
let anyone validate a bucket they cannot read. Updates are read-modify-replace with the
resourceVersion (optimistic concurrency, retried on conflict), so concurrent API replicas do not
lose each other's writes. (A namespace's ConfigMap is not deleted with the namespace: a new
namespace of the same name would inherit its validated buckets. Delete it with the namespace, or
label-select ``kpcap.io/ownership-account``.)

A bucket is identified by (scheme, endpoint, bucket): the prefix and region in ``destination_conf``
do not matter, as ownership is of the bucket, while the same bucket name at another S3-compatible
endpoint is another bucket. One record per canonical ``destination_conf``: creating again replaces
the record with a new pending challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any, Final

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.destinations import Destination, destination_uri, parse_destination
from kpcap.errors import SpecInvalid
from kpcap.kubeapi import status_time

CONFIGMAP_PREFIX: Final = "kpcap-ownership-"
ACCOUNT_LABEL: Final = "kpcap.io/ownership-account"
CHALLENGE_PREFIX: Final = "ownership-challenge-"
DESTINATION_FIELD: Final = "destination_conf"
_MAX_ATTEMPTS: Final = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Ownership:
    id: str
    destination_conf: str
    filename: str
    status: str  # pending | success | failed
    submitted: str
    validated: str = ""
    challenge_sha256: str = ""

    def to_upstream(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "destination_conf": self.destination_conf,
            "filename": self.filename,
            "status": self.status,
            "submitted": self.submitted,
            "validated": self.validated,
        }


@dataclass(frozen=True, slots=True)
class Challenge:
    """A new ownership record and the file to write: ``key`` in the bucket, holding ``contents``."""

    ownership: Ownership
    destination: Destination
    key: str
    contents: bytes


def parse_destination_conf(text: object) -> Destination:
    """Raises SpecInvalid naming ``destination_conf``."""
    return parse_destination(text, field=DESTINATION_FIELD)


def bucket_identity(destination: Destination) -> tuple[str, str, str]:
    return (destination.scheme.value, destination.endpoint or "", destination.bucket)


def _digest(text: str) -> str:
    return hashlib.sha256(text.strip().encode()).hexdigest()


def new_challenge(destination: Destination, *, now: datetime) -> Challenge:
    """Pure: a fresh pending record and its challenge file (random id, name and contents)."""
    contents = secrets.token_urlsafe(48)
    filename = f"{CHALLENGE_PREFIX}{secrets.token_hex(16)}.txt"
    key = f"{destination.prefix}/{filename}" if destination.prefix else filename
    record = Ownership(
        id=secrets.token_hex(16),
        destination_conf=destination_uri(destination),
        filename=filename,
        status="pending",
        submitted=status_time(now),
        challenge_sha256=_digest(contents),
    )
    return Challenge(ownership=record, destination=destination, key=key, contents=contents.encode())


def challenge_matches(record: Ownership, posted: str) -> bool:
    """Constant-time comparison of the posted contents (surrounding whitespace ignored) with the file's."""
    return hmac.compare_digest(_digest(posted), record.challenge_sha256)


def validated(record: Ownership, *, now: datetime) -> Ownership:
    return replace(record, status="success", validated=status_time(now))


def is_owned(records: list[Ownership], destination: Destination) -> bool:
    wanted = bucket_identity(destination)
    for record in records:
        if record.status != "success":
            continue
        try:
            if bucket_identity(parse_destination_conf(record.destination_conf)) == wanted:
                return True
        except SpecInvalid:
            continue
    return False


def find_for_destination(records: list[Ownership], destination: Destination) -> Ownership | None:
    canonical = destination_uri(destination)
    return next((r for r in records if r.destination_conf == canonical), None)


def _decode(data: dict[str, str] | None) -> list[Ownership]:
    records = []
    for raw in (data or {}).values():
        try:
            fields = json.loads(raw)
            records.append(Ownership(**fields))
        except (ValueError, TypeError):
            continue  # a hand-edited, broken entry is ignored rather than failing every call
    return sorted(records, key=lambda r: (r.submitted, r.id), reverse=True)


class OwnershipStore:
    """The ConfigMaps that hold ownership records (blocking Kubernetes calls)."""

    def __init__(self, api: client.ApiClient, *, namespace: str) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace

    @staticmethod
    def configmap_name(account: str) -> str:
        return f"{CONFIGMAP_PREFIX}{account}"

    def _read(self, account: str) -> Any | None:
        try:
            return self._core.read_namespaced_config_map(self.configmap_name(account), self._namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, account: str) -> list[Ownership]:
        configmap = self._read(account)
        return _decode(configmap.data if configmap is not None else None)

    def update(
        self, account: str, change: Callable[[dict[str, Ownership]], dict[str, Ownership]]
    ) -> dict[str, Ownership]:
        """Apply ``change`` to the records by id and write the result (retried on conflicts)."""
        for attempt in range(_MAX_ATTEMPTS):
            configmap = self._read(account)
            current = {r.id: r for r in _decode(configmap.data if configmap is not None else None)}
            wanted = change(dict(current))
            data = {rid: json.dumps(asdict(record), sort_keys=True) for rid, record in wanted.items()}
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": self.configmap_name(account),
                    "namespace": self._namespace,
                    "labels": {ACCOUNT_LABEL: account, "app.kubernetes.io/managed-by": "kpcap"},
                },
                "data": data,
            }
            try:
                if configmap is None:
                    self._core.create_namespaced_config_map(self._namespace, body)
                else:
                    body["metadata"]["resourceVersion"] = configmap.metadata.resource_version
                    self._core.replace_namespaced_config_map(
                        self.configmap_name(account), self._namespace, body
                    )
            except ApiException as err:
                if err.status == 409 and attempt + 1 < _MAX_ATTEMPTS:
                    continue
                raise
            return wanted
        raise RuntimeError("unreachable")  # pragma: no cover - the loop returns or raises
