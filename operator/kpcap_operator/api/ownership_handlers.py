"""The bucket-ownership endpoints of the REST API: list, create (write a challenge), validate, delete.

The records and challenges themselves are ``ownership.py``'s; these handlers authorise the caller,
read the request and update the account's records in one read-modify-write each.
"""

from __future__ import annotations

from aiohttp import web

from kpcap.destinations import Destination
from kpcap.errors import SpecInvalid
from kpcap.storage import StorageError
from kpcap_operator.api import ownership as own
from kpcap_operator.api.mapping import ApiError, ErrorCode, ErrorItem, list_success, success
from kpcap_operator.api.openapi import PREFIX
from kpcap_operator.api.request import authorized, blocking, fields, json_body


def _destination(text: str) -> Destination:
    try:
        return own.parse_destination_conf(text)
    except SpecInvalid as invalid:
        raise ApiError(
            400, [ErrorItem(int(ErrorCode.INVALID_FIELD), str(e)) for e in invalid.errors]
        ) from None


async def list_ownerships(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "list")
    records = await blocking(services.ownerships.list, account)
    return web.json_response(list_success([record.to_upstream() for record in records]))


async def create_ownership(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "create")
    body = fields(await json_body(request), allowed=("destination_conf",), required=("destination_conf",))
    destination = _destination(body["destination_conf"])
    challenge = own.new_challenge(destination, now=services.now())
    try:
        await blocking(services.write_challenge, challenge)
    except StorageError as err:
        status = 400 if err.permanent else 503
        raise ApiError.one(
            status,
            ErrorCode.STORAGE,
            f"destination_conf: could not write the challenge file {challenge.destination.bucket}/"
            f"{challenge.key}: {err}",
        ) from None
    record = challenge.ownership

    def put(records: dict[str, own.Ownership]) -> dict[str, own.Ownership]:
        kept = {rid: r for rid, r in records.items() if r.destination_conf != record.destination_conf}
        return {**kept, record.id: record}

    await blocking(services.ownerships.update, account, put)
    return web.json_response(success(record.to_upstream()))


async def validate_ownership(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "create")
    body = fields(
        await json_body(request),
        allowed=("destination_conf", "ownership_challenge"),
        required=("destination_conf", "ownership_challenge"),
    )
    destination = _destination(body["destination_conf"])
    now = services.now()
    outcome: list[own.Ownership] = []

    def check(records: dict[str, own.Ownership]) -> dict[str, own.Ownership]:
        record = own.find_for_destination(list(records.values()), destination)
        if record is None:
            raise ApiError.one(
                404,
                ErrorCode.NOT_FOUND,
                f"destination_conf: no ownership challenge for {body['destination_conf']} in account "
                f"{account}; create one first (POST {PREFIX}/accounts/{account}/pcaps/ownership)",
            )
        if not own.challenge_matches(record, body["ownership_challenge"]):
            raise ApiError.one(
                400,
                ErrorCode.INVALID_FIELD,
                f"ownership_challenge: does not match the contents of {record.filename} in the bucket",
            )
        done = record if record.status == "success" else own.validated(record, now=now)
        outcome.append(done)
        return {**records, done.id: done}

    await blocking(services.ownerships.update, account, check)
    return web.json_response(success(outcome[-1].to_upstream()))


async def delete_ownership(request: web.Request) -> web.Response:
    services, _, account = await authorized(request, "create")
    wanted = request.match_info["ownership_id"]

    def drop(records: dict[str, own.Ownership]) -> dict[str, own.Ownership]:
        if wanted not in records:
            raise ApiError.one(
                404,
                ErrorCode.NOT_FOUND,
                f"ownership_id: no ownership with id {wanted[:80]!r} in account {account}",
            )
        return {rid: r for rid, r in records.items() if rid != wanted}

    await blocking(services.ownerships.update, account, drop)
    return web.Response(status=204)
