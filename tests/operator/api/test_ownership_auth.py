"""The pure parts of bucket ownership and of reading the bearer token."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kpcap.destinations import parse_destination
from kpcap_operator.api.auth import bearer_token
from kpcap_operator.api.mapping import ApiError
from kpcap_operator.api.ownership import (
    challenge_matches,
    find_for_destination,
    is_owned,
    new_challenge,
    validated,
)

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def test_challenge_file_and_validation() -> None:
    destination = parse_destination("s3://bkt/some/dir?region=us-east-1&endpoint=http://10.0.0.1:9000")
    challenge = new_challenge(destination, now=NOW)
    record = challenge.ownership
    assert record.filename.startswith("ownership-challenge-")
    assert record.filename.endswith(".txt")
    assert challenge.key == f"some/dir/{record.filename}"
    assert len(record.id) == 32
    assert record.status == "pending"
    assert challenge.contents.decode() not in repr(record.to_upstream())
    assert challenge_matches(record, challenge.contents.decode() + "\n")
    assert not challenge_matches(record, "guess")
    assert not is_owned([record], destination)
    done = validated(record, now=NOW)
    assert done.to_upstream()["validated"] == "2026-05-01T00:00:00Z"
    # Ownership is of the bucket (at that endpoint): any prefix or region, not another endpoint.
    assert is_owned(
        [done], parse_destination("s3://bkt/other?region=eu-west-1&endpoint=http://10.0.0.1:9000")
    )
    assert not is_owned([done], parse_destination("s3://bkt/other?region=us-east-1"))
    assert not is_owned([done], parse_destination("gs://bkt/some/dir"))
    assert find_for_destination([done], destination) is done


def test_root_prefix_key() -> None:
    challenge = new_challenge(parse_destination("gs://bkt"), now=NOW)
    assert challenge.key == challenge.ownership.filename


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer  ", "Bearer a b", "Bearer é"])
def test_bad_authorization_headers_are_401(header: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        bearer_token(header)
    assert caught.value.status == 401
    assert caught.value.errors[0].message.startswith("Authentication error")


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer xyz") == "xyz"
