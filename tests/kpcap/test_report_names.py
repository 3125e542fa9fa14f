"""PacketCaptureReport names: ``<capture-id>.<node>``, a valid object name for any node name."""

from __future__ import annotations

import pytest

from kpcap.names import DNS1123_SUBDOMAIN_MAX_LENGTH, is_dns1123_subdomain, report_name

CID = "0123456789abcdef0123456789abcdef"


def test_a_short_node_name_is_kept_whole() -> None:
    assert report_name(capture_id=CID, node="kpcap-node-1") == f"{CID}.kpcap-node-1"
    assert report_name(capture_id=CID, node="ip-10-0-0-1.ec2.internal") == f"{CID}.ip-10-0-0-1.ec2.internal"


def test_the_longest_plain_name_fits_exactly() -> None:
    node = "a" * (DNS1123_SUBDOMAIN_MAX_LENGTH - len(CID) - 1)
    assert report_name(capture_id=CID, node=node) == f"{CID}.{node}"


@pytest.mark.parametrize(
    "node",
    [
        "a" * 253,
        "a" * 221,  # one over the plain limit
        ("b" * 62 + ".") * 4,  # cut at 200 lands right after a '.'
        "c" * 199 + "-" + "d" * 53,  # cut lands after a '-'
    ],
)
def test_a_long_node_name_is_cut_and_hashed_into_a_valid_name(node: str) -> None:
    node = node.strip(".-")
    name = report_name(capture_id=CID, node=node)
    assert len(name) <= DNS1123_SUBDOMAIN_MAX_LENGTH
    assert is_dns1123_subdomain(name), name
    assert name.startswith(f"{CID}.{node[:150]}")


def test_long_names_differing_only_at_the_end_stay_distinct() -> None:
    one, two = "x" * 240 + "1", "x" * 240 + "2"
    assert report_name(capture_id=CID, node=one) != report_name(capture_id=CID, node=two)
