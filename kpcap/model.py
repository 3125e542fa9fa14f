"""The PacketCapture spec: typed values, their validation (``parse_spec``) and serialisation
(``spec_to_dict``), shared by the admission webhook, the operator and the capture agent.

The CR uses camelCase (Kubernetes style); the Python model uses snake_case. ``parse_spec`` is the
only way in for user input: it reports every problem at once (``SpecInvalid``), each naming its field
path (``spec.filter.sourcePort``) and what is allowed. A JSON ``null`` counts as an absent field, as
the API server prunes nulls from fields that are not nullable.

The rules themselves (limits, allowed values, which field goes with which type) live in
``kpcap.spec_rules``, shared with the REST API's OpenAPI document and checked against the CRD.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeVar

from kpcap.destinations import Destination, check_destination, destination_uri
from kpcap.errors import FieldError, SpecInvalid, describe_value
from kpcap.names import LABEL_KEY_RULE, LABEL_VALUE_RULE, capture_id, is_label_key, is_label_value
from kpcap.spec_rules import (
    BYTE_LIMIT_RANGE,
    DEFAULT_FULL_PACKET_LIMIT,
    FILTER_FIELDS,
    OFFSET_TIME_WINDOW,
    PACKET_LIMIT_RANGE,
    PORT_PROTOCOLS,
    PORT_RANGE,
    PROTOCOL_RANGE,
    SNAP_LENGTH_RANGE,
    SPEC_FIELDS,
    SYSTEM_ALIASES,
    TIME_LIMIT_RANGE,
    CaptureSystem,
    CaptureType,
)

__all__ = [
    "BYTE_LIMIT_RANGE",
    "OFFSET_TIME_WINDOW",
    "PACKET_LIMIT_RANGE",
    "PORT_PROTOCOLS",
    "PORT_RANGE",
    "PROTOCOL_RANGE",
    "SNAP_LENGTH_RANGE",
    "TIME_LIMIT_RANGE",
    "CaptureFilter",
    "CaptureSpec",
    "CaptureStatus",
    "CaptureSystem",
    "CaptureType",
    "IPAddress",
    "NodePhase",
    "capture_id",
    "parse_spec",
    "spec_to_dict",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CaptureStatus(StrEnum):
    """``status.status``: the upstream PCAPs API enum."""

    UNKNOWN = "unknown"
    PENDING = "pending"
    RUNNING = "running"
    CONVERSION_PENDING = "conversion_pending"
    CONVERSION_RUNNING = "conversion_running"
    SUCCESS = "success"
    COMPLETE = "complete"
    FAILED = "failed"


TERMINAL: Final = frozenset({CaptureStatus.SUCCESS, CaptureStatus.COMPLETE, CaptureStatus.FAILED})
"""The statuses a capture never leaves (StrEnum members: the plain strings match too)."""


class NodePhase(StrEnum):
    """``status.nodes.<node>.phase``: one capture agent's progress."""

    RUNNING = "running"
    UPLOADING = "uploading"
    DONE = "done"
    FAILED = "failed"


def _no_labels() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureFilter:
    """Which packets to keep; every field optional, all given fields must match (AND); empty = all."""

    source_address: IPAddress | None = None
    destination_address: IPAddress | None = None
    source_port: int | None = None
    destination_port: int | None = None
    protocol: int | None = None

    @property
    def is_empty(self) -> bool:
        return all(
            value is None
            for value in (
                self.source_address,
                self.destination_address,
                self.source_port,
                self.destination_port,
                self.protocol,
            )
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSpec:
    """A validated PacketCapture spec. Build it with ``parse_spec``; the constructor does not validate."""

    type: CaptureType
    time_limit: int
    packet_limit: int
    system: CaptureSystem = CaptureSystem.HOST_NETWORK
    filter: CaptureFilter = field(default_factory=CaptureFilter)
    byte_limit: int | None = None
    snap_length: int | None = None  # None: the whole packet
    colo: str | None = None
    # Not hashed (a mapping is not hashable); equal specs still hash equal.
    node_selector: Mapping[str, str] = field(default_factory=_no_labels, hash=False)
    destination: Destination | None = None
    offset_time: datetime | None = None
    stop: bool = False

    def __post_init__(self) -> None:
        # Freeze a caller's dict so the spec stays immutable whatever was passed in.
        if not isinstance(self.node_selector, MappingProxyType):
            object.__setattr__(self, "node_selector", MappingProxyType(dict(self.node_selector)))


_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)

_Report = Callable[[str, str], None]
_E = TypeVar("_E", bound=StrEnum)


def parse_spec(spec: object, *, now: datetime | None) -> CaptureSpec:
    """Validate a PacketCapture ``spec`` (camelCase, as stored) and return the typed value.

    Raises SpecInvalid listing every problem. ``now`` (timezone-aware) bounds ``offsetTime`` to
    ``[now - 24 h, now]``; pass None only when re-reading an object that was admitted earlier, where
    the window no longer applies.
    """
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    errors: list[FieldError] = []

    def report(path: str, message: str) -> None:
        errors.append(FieldError(field=path, message=message))

    if not isinstance(spec, Mapping):
        raise SpecInvalid(
            [FieldError(field="spec", message=f"must be an object, got {describe_value(spec)}")]
        )
    _report_unknown_fields(spec, allowed=SPEC_FIELDS, path="spec", report=report)

    def given(name: str) -> Any:
        return spec.get(name)

    capture_type = _parse_enum(given("type"), CaptureType, path="spec.type", report=report)
    if given("type") is None:
        report("spec.type", f"required, must be one of {_quoted(CaptureType)}")
    system: CaptureSystem | None = CaptureSystem.HOST_NETWORK
    if given("system") is not None:
        system_text = given("system")
        alias = SYSTEM_ALIASES.get(system_text) if isinstance(system_text, str) else None
        system = alias or _parse_enum(
            system_text, CaptureSystem, path="spec.system", report=report, aliases=SYSTEM_ALIASES
        )
    capture_filter = _parse_filter(given("filter"), report=report)

    time_limit = _parse_int(given("timeLimit"), TIME_LIMIT_RANGE, path="spec.timeLimit", report=report)
    if given("timeLimit") is None:
        report("spec.timeLimit", f"required, must be an integer from {_range(TIME_LIMIT_RANGE)} (seconds)")

    packet_limit = _parse_int(
        given("packetLimit"), PACKET_LIMIT_RANGE, path="spec.packetLimit", report=report
    )
    if given("packetLimit") is None:
        if capture_type is CaptureType.SIMPLE:
            report(
                "spec.packetLimit",
                f"required when spec.type is 'simple', must be an integer from {_range(PACKET_LIMIT_RANGE)}",
            )
        packet_limit = DEFAULT_FULL_PACKET_LIMIT

    byte_limit = _parse_int(given("byteLimit"), BYTE_LIMIT_RANGE, path="spec.byteLimit", report=report)
    _require_type(given("byteLimit"), CaptureType.FULL, capture_type, path="spec.byteLimit", report=report)
    snap_length = _parse_int(
        given("snapLength"), SNAP_LENGTH_RANGE, path="spec.snapLength", report=report, unit="bytes"
    )

    colo = None
    if given("colo") is not None:
        colo = _parse_label_value(given("colo"), path="spec.colo", report=report, allow_empty=False)
    node_selector = _parse_labels(given("nodeSelector"), path="spec.nodeSelector", report=report)
    if capture_type is CaptureType.FULL and given("colo") is None and given("nodeSelector") is None:
        report(
            "spec.colo",
            "required when spec.type is 'full' unless spec.nodeSelector is given "
            "(a full capture must name where to capture)",
        )

    destination = None
    if given("destinationConf") is not None:
        destination, destination_errors = check_destination(given("destinationConf"))
        errors.extend(destination_errors)
        _require_type(
            given("destinationConf"),
            CaptureType.FULL,
            capture_type,
            path="spec.destinationConf",
            report=report,
        )
    elif capture_type is CaptureType.FULL:
        report(
            "spec.destinationConf",
            "required when spec.type is 'full', must be 's3://<bucket>/<prefix>?region=<region>' "
            "or 'gs://<bucket>/<prefix>'",
        )

    offset_time = None
    if given("offsetTime") is not None:
        offset_time = _parse_offset_time(given("offsetTime"), now=now, report=report)
        _require_type(
            given("offsetTime"), CaptureType.SIMPLE, capture_type, path="spec.offsetTime", report=report
        )

    stop = False
    if given("stop") is not None:
        if isinstance(given("stop"), bool):
            stop = given("stop")
        else:
            report("spec.stop", f"must be true or false, got {describe_value(given('stop'))}")

    # Each None here was reported as an error; the test narrows the types for the checker.
    if errors or capture_type is None or time_limit is None or packet_limit is None:
        raise SpecInvalid(errors)
    return CaptureSpec(
        type=capture_type,
        system=system or CaptureSystem.HOST_NETWORK,
        filter=capture_filter,
        time_limit=time_limit,
        packet_limit=packet_limit,
        byte_limit=byte_limit,
        snap_length=snap_length,
        colo=colo,
        node_selector=MappingProxyType(node_selector),
        destination=destination,
        offset_time=offset_time,
        stop=stop,
    )


def spec_to_dict(spec: CaptureSpec) -> dict[str, Any]:
    """The camelCase spec as stored in the object (the inverse of ``parse_spec``); absent optional
    fields are left out, defaults that parse_spec filled in are written out."""
    result: dict[str, Any] = {"type": spec.type.value, "system": spec.system.value}
    filter_dict = filter_to_dict(spec.filter)
    if filter_dict:
        result["filter"] = filter_dict
    result["timeLimit"] = spec.time_limit
    result["packetLimit"] = spec.packet_limit
    if spec.byte_limit is not None:
        result["byteLimit"] = spec.byte_limit
    if spec.snap_length is not None:
        result["snapLength"] = spec.snap_length
    if spec.colo is not None:
        result["colo"] = spec.colo
    if spec.node_selector:
        result["nodeSelector"] = dict(spec.node_selector)
    if spec.destination is not None:
        result["destinationConf"] = destination_uri(spec.destination)
    if spec.offset_time is not None:
        result["offsetTime"] = format_rfc3339(spec.offset_time)
    result["stop"] = spec.stop
    return result


def filter_to_dict(capture_filter: CaptureFilter) -> dict[str, Any]:
    """The camelCase ``filter`` object; only the fields that are set."""
    pairs: list[tuple[str, Any]] = [
        (
            "sourceAddress",
            None if capture_filter.source_address is None else str(capture_filter.source_address),
        ),
        ("sourcePort", capture_filter.source_port),
        (
            "destinationAddress",
            None if capture_filter.destination_address is None else str(capture_filter.destination_address),
        ),
        ("destinationPort", capture_filter.destination_port),
        ("protocol", capture_filter.protocol),
    ]
    return {name: value for name, value in pairs if value is not None}


def format_rfc3339(moment: datetime) -> str:
    """RFC 3339 text of a timezone-aware datetime, with 'Z' for UTC, its precision kept.

    For spec values (``offsetTime``: the instant a user asked for, sub-second and all, round-trips
    through ``spec_to_dict``) and messages about them. Timestamps kpcap stamps into objects are
    ``kpcap.kubeapi.status_time`` (whole seconds).
    """
    if moment.utcoffset() is None:
        raise ValueError("only timezone-aware datetimes have an RFC 3339 form")
    text = moment.isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def _quoted(choices: type[StrEnum] | Mapping[str, object]) -> str:
    return ", ".join(f"'{choice}'" for choice in choices)


def _range(bounds: tuple[int, int]) -> str:
    return f"{bounds[0]} to {bounds[1]}"


def _report_unknown_fields(
    given: Mapping[Any, Any], *, allowed: tuple[str, ...], path: str, report: _Report
) -> None:
    for name in given:
        if name not in allowed:
            report(f"{path}.{name}", f"unknown field, the fields of {path} are {', '.join(allowed)}")


def _parse_enum(
    value: object,
    enum: type[_E],
    *,
    path: str,
    report: _Report,
    aliases: Mapping[str, object] | None = None,
) -> _E | None:
    if value is None:
        return None
    if isinstance(value, str) and value in enum.__members__.values():
        return enum(value)
    allowed = _quoted(enum) + (f" (or its alias {_quoted(aliases)})" if aliases else "")
    report(path, f"must be one of {allowed}, got {describe_value(value)}")
    return None


def _parse_int(
    value: object, bounds: tuple[int, int], *, path: str, report: _Report, unit: str = ""
) -> int | None:
    """An integer within bounds; bool and strings are refused, a whole float (10.0) is accepted."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):  # bool is an int subclass: refuse it
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)  # JSON has one number type; clients may send 10.0
    if number is None or not bounds[0] <= number <= bounds[1]:
        unit_text = f" ({unit})" if unit else ""
        report(path, f"must be an integer from {_range(bounds)}{unit_text}, got {describe_value(value)}")
        return None
    return number


def _require_type(
    value: object, wanted: CaptureType, actual: CaptureType | None, *, path: str, report: _Report
) -> None:
    # Unknown type (missing or invalid, already reported): no cross-field verdict is possible.
    if value is not None and actual is not None and actual is not wanted:
        report(path, f"only allowed when spec.type is '{wanted}', got type '{actual}'")


def _parse_address(value: object, *, path: str, report: _Report) -> IPAddress | None:
    if value is None:
        return None
    rule = (
        "must be an IPv4 or IPv6 address such as '198.51.100.7' or '2001:db8::7' (no prefix length or zone)"
    )
    if isinstance(value, str):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            if not (isinstance(address, ipaddress.IPv6Address) and address.scope_id):
                return address
    report(path, f"{rule}, got {describe_value(value)}")
    return None


def _parse_filter(value: object, *, report: _Report) -> CaptureFilter:
    path = "spec.filter"
    if value is None:
        return CaptureFilter()
    if not isinstance(value, Mapping):
        report(
            path, f"must be an object with the fields {', '.join(FILTER_FIELDS)}, got {describe_value(value)}"
        )
        return CaptureFilter()
    _report_unknown_fields(value, allowed=FILTER_FIELDS, path=path, report=report)
    source = _parse_address(value.get("sourceAddress"), path=f"{path}.sourceAddress", report=report)
    destination = _parse_address(
        value.get("destinationAddress"), path=f"{path}.destinationAddress", report=report
    )
    source_port = _parse_int(value.get("sourcePort"), PORT_RANGE, path=f"{path}.sourcePort", report=report)
    destination_port = _parse_int(
        value.get("destinationPort"), PORT_RANGE, path=f"{path}.destinationPort", report=report
    )
    protocol = _parse_int(value.get("protocol"), PROTOCOL_RANGE, path=f"{path}.protocol", report=report)

    if source is not None and destination is not None and source.version != destination.version:
        report(
            f"{path}.destinationAddress",
            f"must be the same IP version as {path}.sourceAddress (IPv{source.version}) since no packet "
            f"could match both, got IPv{destination.version} '{destination}'",
        )
    if (
        protocol is not None
        and protocol not in PORT_PROTOCOLS
        and (source_port, destination_port) != (None, None)
    ):
        allowed = ", ".join(f"{number} ({name})" for number, name in PORT_PROTOCOLS.items())
        report(
            f"{path}.protocol",
            f"must be one of {allowed} when a port is given, as only those carry ports, got {protocol}",
        )
    return CaptureFilter(
        source_address=source,
        destination_address=destination,
        source_port=source_port,
        destination_port=destination_port,
        protocol=protocol,
    )


def _parse_label_value(value: object, *, path: str, report: _Report, allow_empty: bool) -> str | None:
    if isinstance(value, str) and is_label_value(value) and (value or allow_empty):
        return value
    qualifier = "" if allow_empty else " (not empty)"
    report(path, f"must be {LABEL_VALUE_RULE}{qualifier}, got {describe_value(value)}")
    return None


def _parse_labels(value: object, *, path: str, report: _Report) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        report(path, f"must be an object of label keys to label values, got {describe_value(value)}")
        return {}
    labels: dict[str, str] = {}
    for key, label_value in value.items():
        if not isinstance(key, str) or not is_label_key(key):
            report(f"{path}.{key}", f"the key must be {LABEL_KEY_RULE}, got {describe_value(key)}")
            continue
        parsed = _parse_label_value(label_value, path=f"{path}.{key}", report=report, allow_empty=True)
        if parsed is not None:
            labels[key] = parsed
    return labels


def _parse_offset_time(value: object, *, now: datetime | None, report: _Report) -> datetime | None:
    path = "spec.offsetTime"
    rule = "must be an RFC 3339 timestamp with a time zone, such as '2024-05-01T12:00:00Z'"
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        report(path, f"{rule}, got {describe_value(value)}")
        return None
    zone = match["zone"].upper().replace("Z", "+00:00")
    # Python keeps microseconds: finer fractions are cut, not rounded (never into the future).
    fraction = f".{match['fraction'][:6]}" if match["fraction"] else ""
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['time']}{fraction}{zone}")
    except ValueError:
        report(path, f"{rule} (a real date and time), got {describe_value(value)}")
        return None
    if now is not None:
        earliest = now - OFFSET_TIME_WINDOW
        if moment > now:
            report(path, f"must not be in the future (now is {format_rfc3339(now)}), got {value!r}")
            return None
        if moment < earliest:
            report(
                path,
                f"must be within the last 24 hours (not before {format_rfc3339(earliest)}), got {value!r}",
            )
            return None
    return moment
