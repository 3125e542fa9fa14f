"""The rules of a PacketCapture spec's fields, stated once: limits, allowed values, patterns, and
which fields belong to which capture type.

``kpcap.model.parse_spec`` enforces them (with a message per field), the REST API's OpenAPI document
is built from ``field_schemas``, and a test keeps the CRD's schema (``crds/packetcapture.yaml``, the
cluster's single source of truth) equal to them: a limit changes here and in the CRD together.

Required fields and defaults (upstream PCAPs API where it says, docs/design.md otherwise):

=================  ===========================================================================
``type``           required: ``simple`` | ``full``
``system``         default ``host-network``; upstream ``magic-transit`` is accepted as its alias
``filter``         default empty: every packet (upstream "empty = all packets")
``timeLimit``      required, 1..300 seconds
``packetLimit``    1..10000; required for simple (upstream); for full it defaults to 10000
``byteLimit``      1..1e9, full only, optional (absent: only the packet and time limits apply);
                   counts the bytes kept (after ``snapLength``), not the bytes on the wire
``snapLength``     1..262144 bytes kept of each packet, optional (absent: the whole packet, up to
                   262144); full: cut in the kernel; simple: the samples are cut to it (they hold
                   at most the samplers' own snap length anyway)
``colo``           a node-label value; optional for simple (absent: every node); for full,
                   ``colo`` or ``nodeSelector`` is required (upstream requires colo_name) so a
                   full capture never lands on every node of a cluster by omission
``nodeSelector``   label key -> value, optional, ANDed with ``colo``
``destinationConf``  full only and required for full (see ``kpcap.destinations``)
``offsetTime``     simple only, optional (absent: the time the capture was created); RFC 3339 with
                   a time zone, not in the future and at most 24 h before ``now``
``stop``           default false
=================  ===========================================================================

Filter consistency rules (a filter that no packet can match is rejected rather than accepted and
left to capture nothing): ``sourceAddress`` and ``destinationAddress`` must be the same IP version;
a port filter needs ``protocol`` absent or one of 6 (TCP), 17 (UDP), 132 (SCTP).

The schemas use only the keywords that a CRD's structural schema and OpenAPI 3 share (``type``,
``minimum``/``maximum``, ``enum``, ``pattern``, ``minLength``/``maxLength``, ``format``, ``anyOf``,
``properties``, ``additionalProperties``, ``default``). Patterns are anchored and written so that
Go's RE2, ECMA-262 and Python's ``re`` read them alike.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from kpcap.destinations import DESTINATION_MAX_LENGTH
from kpcap.names import DNS1123_SUBDOMAIN_MAX_LENGTH, LABEL_NAME_MAX_LENGTH, LABEL_VALUE_MAX_LENGTH

Schema = dict[str, Any]

TIME_LIMIT_RANGE: Final = (1, 300)
PACKET_LIMIT_RANGE: Final = (1, 10_000)
BYTE_LIMIT_RANGE: Final = (1, 1_000_000_000)
# libpcap's largest snap length (MAXIMUM_SNAPLEN), which is also kpcap.pcap's DEFAULT_SNAPLEN.
SNAP_LENGTH_RANGE: Final = (1, 262_144)
PORT_RANGE: Final = (0, 65_535)
PROTOCOL_RANGE: Final = (0, 255)
OFFSET_TIME_WINDOW: Final = timedelta(hours=24)
# Only these IP protocols carry ports (libpcap's `port` primitive means exactly these three).
PORT_PROTOCOLS: Final = MappingProxyType({6: "TCP", 17: "UDP", 132: "SCTP"})
DEFAULT_FULL_PACKET_LIMIT: Final = PACKET_LIMIT_RANGE[1]
# The longest text form of an IPv6 address (an IPv4-mapped one written out in full).
ADDRESS_MAX_LENGTH: Final = 45

_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LABEL_VALUE_PATTERN: Final = f"^{_LABEL_NAME}$"
"""A non-empty label value (``kpcap.names.is_label_value`` with the length limit)."""
LABEL_VALUE_OR_EMPTY_PATTERN: Final = f"^({_LABEL_NAME})?$"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# No more than 253 characters before the '/' (a lookahead: ECMA and Python only, not for the CRD).
LABEL_KEY_PATTERN: Final = (
    rf"^(?![^/]{{{DNS1123_SUBDOMAIN_MAX_LENGTH + 1}}})({_DNS_LABEL}(\.{_DNS_LABEL})*/)?"
    rf"[A-Za-z0-9]([-A-Za-z0-9_.]{{0,{LABEL_NAME_MAX_LENGTH - 2}}}[A-Za-z0-9])?$"
)
"""A label key, ``[prefix/]name`` (``kpcap.names.is_label_key``)."""
DESTINATION_PATTERN: Final = r"^(s3|gs)://[^/?#@:\s]+(/[^?#\s]*)?(\?[^#\s]*)?$"
"""The shape of ``destinationConf``; ``kpcap.destinations.check_destination`` checks the rest."""
DESTINATION_CHARACTERS_PATTERN: Final = r"^[!-~]*$"
"""Printable ASCII without spaces: every character check_destination can accept (the CRD's pattern
leaves this to the webhook; the REST API's document states it)."""


class CaptureType(StrEnum):
    """``simple``: sampled headers from the last 24 h, completes at once; ``full``: live, to a bucket."""

    SIMPLE = "simple"
    FULL = "full"


class CaptureSystem(StrEnum):
    """Where packets are taken. ``host-network``: the nodes' own interfaces."""

    HOST_NETWORK = "host-network"


# Upstream's only value; its SDK allows nothing else, so it must keep working.
SYSTEM_ALIASES: Final = MappingProxyType({"magic-transit": CaptureSystem.HOST_NETWORK})

SPEC_FIELDS: Final = (
    "type",
    "system",
    "filter",
    "timeLimit",
    "packetLimit",
    "byteLimit",
    "snapLength",
    "colo",
    "nodeSelector",
    "destinationConf",
    "offsetTime",
    "stop",
)
FILTER_FIELDS: Final = ("sourceAddress", "sourcePort", "destinationAddress", "destinationPort", "protocol")
REQUIRED_FIELDS: Final = ("type", "timeLimit")
REQUIRED_BY_TYPE: Final = MappingProxyType(
    {CaptureType.SIMPLE: ("packetLimit",), CaptureType.FULL: ("destinationConf",)}
)
ONLY_FOR_TYPE: Final = MappingProxyType(
    {"byteLimit": CaptureType.FULL, "destinationConf": CaptureType.FULL, "offsetTime": CaptureType.SIMPLE}
)
FULL_TARGET_FIELDS: Final = ("colo", "nodeSelector")
"""A full capture needs at least one of these (where to capture)."""


def integer_schema(bounds: tuple[int, int]) -> Schema:
    return {"type": "integer", "minimum": bounds[0], "maximum": bounds[1]}


def address_schema() -> Schema:
    return {
        "type": "string",
        "maxLength": ADDRESS_MAX_LENGTH,
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
    }


def filter_field_schemas() -> dict[str, Schema]:
    """The schema of each ``spec.filter`` field (a fresh copy each call)."""
    return {
        "sourceAddress": address_schema(),
        "destinationAddress": address_schema(),
        "sourcePort": integer_schema(PORT_RANGE),
        "destinationPort": integer_schema(PORT_RANGE),
        "protocol": integer_schema(PROTOCOL_RANGE),
    }


def label_key_schema() -> Schema:
    """Keys of ``nodeSelector``: the CRD cannot check map keys, parse_spec and the REST API do."""
    maximum = DNS1123_SUBDOMAIN_MAX_LENGTH + 1 + LABEL_NAME_MAX_LENGTH
    return {"type": "string", "minLength": 1, "maxLength": maximum, "pattern": LABEL_KEY_PATTERN}


def field_schemas() -> dict[str, Schema]:
    """The schema of each spec field, keyed by its camelCase name (a fresh copy each call)."""
    return {
        "type": {"type": "string", "enum": [member.value for member in CaptureType]},
        "system": {
            "type": "string",
            "enum": [*(member.value for member in CaptureSystem), *SYSTEM_ALIASES],
            "default": CaptureSystem.HOST_NETWORK.value,
        },
        "filter": {"type": "object", "properties": filter_field_schemas()},
        "timeLimit": integer_schema(TIME_LIMIT_RANGE),
        "packetLimit": integer_schema(PACKET_LIMIT_RANGE),
        "byteLimit": integer_schema(BYTE_LIMIT_RANGE),
        "snapLength": integer_schema(SNAP_LENGTH_RANGE),
        "colo": {
            "type": "string",
            "minLength": 1,
            "maxLength": LABEL_VALUE_MAX_LENGTH,
            "pattern": LABEL_VALUE_PATTERN,
        },
        "nodeSelector": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "maxLength": LABEL_VALUE_MAX_LENGTH,
                "pattern": LABEL_VALUE_OR_EMPTY_PATTERN,
            },
        },
        "destinationConf": {
            "type": "string",
            "maxLength": DESTINATION_MAX_LENGTH,
            "pattern": DESTINATION_PATTERN,
        },
        "offsetTime": {"type": "string", "format": "date-time"},
        "stop": {"type": "boolean", "default": False},
    }
