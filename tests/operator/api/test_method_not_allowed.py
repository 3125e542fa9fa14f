"""A method a path does not have is a 405 in the failure envelope, with ``Allow`` naming the methods
it has (RFC 9110), and exactly those the OpenAPI document declares for it (plus HEAD with GET)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kpcap_operator.api.app import create_app
from kpcap_operator.api.openapi import ACCOUNT, PREFIX, openapi_document
from kpcap_operator.api.services import ApiSettings, Services

BASE = f"{PREFIX}/accounts/acct/pcaps"
ID = "0" * 32
DECLARED = {
    path: {m.upper() for m in ops if m != "parameters"} for path, ops in openapi_document()["paths"].items()
}


async def _answer(method: str, path: str) -> tuple[int, dict[str, str], Any]:
    settings = ApiSettings(operator_namespace="kpcap-system")
    # Routing answers a 405 before any handler, so no service is reached.
    services = Services(
        settings=settings, authorizer=None, captures=None, ownerships=None, open_download=None
    )
    app = create_app(api=None, settings=settings, sample_store=None, services=services)
    async with TestClient(TestServer(app)) as http:
        response = await http.request(method, path)
        return response.status, dict(response.headers), await response.json()


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("DELETE", BASE, PREFIX + ACCOUNT),
        ("PATCH", f"{BASE}/{ID}", f"{PREFIX}{ACCOUNT}/{{pcap_id}}"),
        ("POST", f"{BASE}/{ID}/download", f"{PREFIX}{ACCOUNT}/{{pcap_id}}/download"),
        ("GET", f"{BASE}/{ID}/stop", f"{PREFIX}{ACCOUNT}/{{pcap_id}}/stop"),
        ("PUT", f"{BASE}/ownership", f"{PREFIX}{ACCOUNT}/ownership"),
        ("DELETE", f"{BASE}/ownership/validate", f"{PREFIX}{ACCOUNT}/ownership/validate"),
        ("OPTIONS", f"{BASE}/ownership/validate", f"{PREFIX}{ACCOUNT}/ownership/validate"),
        ("GET", f"{BASE}/ownership/{ID}", f"{PREFIX}{ACCOUNT}/ownership/{{ownership_id}}"),
        ("POST", f"{PREFIX}/openapi.json", None),
    ],
)
def test_405_names_the_allowed_methods(method: str, path: str, template: str | None) -> None:
    status, headers, envelope = asyncio.run(_answer(method, path))
    assert status == 405
    assert envelope["success"] is False
    assert envelope["errors"][0]["code"] == 1009
    allowed = {name.strip() for name in headers["Allow"].split(",")}
    declared = DECLARED[template] if template else {"GET"}
    assert allowed - {"HEAD"} == declared
