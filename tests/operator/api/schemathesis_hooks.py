"""schemathesis hooks for test_api_fuzz.py: the values that no schema can state.

A generated request keeps its shape; only values that depend on the server's state or on the clock,
and only where they already have the schema's shape (so a request meant to be invalid stays
invalid), are swapped for values of the same shape that hold now:

- ``destination_conf``: a bucket this test owns at the test's S3 server, as a user's would be
  (full captures need a validated ownership; and nothing may leave the machine);
- ``offset_time``: a moment within the last 24 hours;
- ``ownership_challenge``: the contents of the current challenge file, read back from the bucket as
  a user reads it.

Loaded by the schemathesis process (``hooks`` in the config file); the test passes its values in
``KPCAP_FUZZ_*`` environment variables.
"""

from __future__ import annotations

import os
import random
import ssl
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import jsonschema_rs
import schemathesis

from kpcap.destinations import parse_destination
from kpcap_operator.api.openapi import SCHEMAS

# "Has the schema's shape" is decided by the document's own schemas, as schemathesis decides it.
_DESTINATION = jsonschema_rs.validator_for(SCHEMAS["OwnershipCreate"]["properties"]["destination_conf"])
_DATE_TIME = jsonschema_rs.validator_for({"type": "string", "format": "date-time"}, validate_formats=True)


def _env(name: str) -> str:
    return os.environ[f"KPCAP_FUZZ_{name}"]


def _recent() -> str:
    moment = datetime.now(UTC) - timedelta(seconds=random.uniform(60, 23 * 3600))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _current_challenge() -> str | None:
    """The challenge file's contents for the ownership destination, if a challenge was written."""
    wanted = parse_destination(_env("OWNERSHIP_DESTINATION"))
    listed = httpx.get(
        f"{_env('BASE_URL')}/accounts/{_env('ACCOUNT')}/pcaps/ownership",
        headers={"Authorization": f"Bearer {_env('TOKEN')}"},
        timeout=10,
        verify=ssl.create_default_context(cafile=_env("CA_FILE")),  # the chart's CA
    )
    for record in listed.json().get("result") or []:
        if parse_destination(record["destination_conf"]) == wanted:
            key = "/".join(part for part in (wanted.prefix, record["filename"]) if part)
            s3 = boto3.client("s3", endpoint_url=_env("S3_ENDPOINT"), region_name="us-east-1")
            return str(s3.get_object(Bucket=wanted.bucket, Key=key)["Body"].read().decode())
    return None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    # At call time (not generation time): the challenge read is the one the server holds now.
    # schemathesis re-checks the edited case against the schema before sending it.
    del context, kwargs
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path
    ownership = "/ownership" in path
    if "destination_conf" in body and _DESTINATION.is_valid(body["destination_conf"]):
        body["destination_conf"] = _env("OWNERSHIP_DESTINATION" if ownership else "CAPTURE_DESTINATION")
    if not ownership and "offset_time" in body and _DATE_TIME.is_valid(body["offset_time"]):
        body["offset_time"] = _recent()
    if path.endswith("/ownership/validate") and isinstance(body.get("ownership_challenge"), str):
        body["ownership_challenge"] = _current_challenge() or body["ownership_challenge"]
