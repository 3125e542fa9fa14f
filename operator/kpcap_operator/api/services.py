"""What the REST API's handlers work with: its settings and the services behind it, in one object.

``create_app`` (app.py) builds the ``Services`` once and stores them on the application; handlers
read them from the request (``request.authorized``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from aiohttp import web

from kpcap.storage import open_store
from kpcap_operator.api import ownership as own
from kpcap_operator.api.auth import Authorizer
from kpcap_operator.api.download import MergedDownload
from kpcap_operator.settings import OperatorSettings

DEFAULT_MAX_BODY: Final = 64 * 1024
Json = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The REST API's part of the operator's settings (``ApiSettings.of``), plus its body limit."""

    operator_namespace: str
    """Where ownership records are kept (the operator's namespace)."""
    simple_rate_window_seconds: int = 60
    max_body_bytes: int = DEFAULT_MAX_BODY

    @staticmethod
    def of(settings: OperatorSettings) -> ApiSettings:
        return ApiSettings(
            operator_namespace=settings.namespace,
            simple_rate_window_seconds=settings.simple_rate_window_seconds,
        )


class Captures(Protocol):
    """The PacketCapture calls the API makes (``kube.Kube`` implements them; blocking)."""

    def list_captures(self, namespace: str) -> list[Json]: ...

    def create_capture(self, namespace: str, body: Json) -> Json: ...

    def request_stop(self, namespace: str, name: str) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _write_challenge(challenge: own.Challenge) -> None:
    store = open_store(challenge.destination)
    try:
        store.put_bytes(key=challenge.key, data=challenge.contents, content_type="text/plain")
    finally:
        store.close()


@dataclass(slots=True, kw_only=True)
class Services:
    settings: ApiSettings
    authorizer: Authorizer
    captures: Captures
    ownerships: own.OwnershipStore
    now: Callable[[], datetime] = _now
    open_download: Callable[[Mapping[str, Any]], MergedDownload]
    """A finished capture's PCAP (download.open_capture_download with the operator's sample store)."""
    write_challenge: Callable[[own.Challenge], None] = field(default=_write_challenge)


SERVICES: Final = web.AppKey("services", Services)
