"""The sampler wire protocol, both ends: the operator asks a node's sampler for a past window.

- ``GET /healthz`` -> 200 ``ok`` (no authentication; the readiness probe);
- ``POST /v1/samples`` with ``Authorization: Bearer <token>`` and a JSON body of at most
  :data:`MAX_QUERY_BYTES`, ``{"spec": <PacketCapture spec, camelCase>, "sinceNs": <int>, "untilNs":
  <int>}`` (:func:`encode_query`, :func:`parse_query`). The answer is a classic PCAP
  (:data:`~kpcap.pcap.PCAP_MEDIA_TYPE`) of the newest ``spec.packetLimit`` matching records with
  ``sinceNs <= timestamp <= untilNs``, ascending, with the headers :data:`NODE_HEADER`,
  :data:`SAMPLE_RATE_HEADER` and :data:`HELD_RECORDS_HEADER`; at most :data:`MAX_ANSWER_BYTES`.
- Errors are JSON ``{"error": "..."}`` (:func:`error_body`, :func:`error_message`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from kpcap.errors import SpecInvalid
from kpcap.model import PACKET_LIMIT_RANGE, CaptureSpec, CaptureType, parse_spec, spec_to_dict
from kpcap.pcap import GLOBAL_HEADER_SIZE, RECORD_HEADER_SIZE

HEALTH_PATH: Final = "/healthz"
SAMPLES_PATH: Final = "/v1/samples"
QUERY_MEDIA_TYPE: Final = "application/json"
NODE_HEADER: Final = "X-Kpcap-Node"
SAMPLE_RATE_HEADER: Final = "X-Kpcap-Sample-Rate"
HELD_RECORDS_HEADER: Final = "X-Kpcap-Held-Records"
MAX_QUERY_BYTES: Final = 64 * 1024
MAX_SNAP_LENGTH: Final = 65535  # the samplers' largest snap length
# packetLimit records of the largest snap length, and the file header.
MAX_ANSWER_BYTES: Final = PACKET_LIMIT_RANGE[1] * (MAX_SNAP_LENGTH + RECORD_HEADER_SIZE) + GLOBAL_HEADER_SIZE
MAX_NS: Final = 2**63 - 1
_FIELDS: Final = ("spec", "sinceNs", "untilNs")


class QueryInvalid(ValueError):  # noqa: N818 -- the name reads as the verdict
    """A query body the sampler refuses (400); the message names the field or the problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleQuery:
    spec: CaptureSpec
    since_ns: int
    until_ns: int


def encode_query(query: SampleQuery) -> bytes:
    """The ``POST /v1/samples`` body of ``query``."""
    document = {"spec": spec_to_dict(query.spec), "sinceNs": query.since_ns, "untilNs": query.until_ns}
    return json.dumps(document).encode()


def parse_query(body: bytes) -> SampleQuery:
    """Check a ``POST /v1/samples`` body; raises :class:`QueryInvalid` naming the field."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise QueryInvalid(f"body: not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise QueryInvalid("body: must be a JSON object with spec, sinceNs and untilNs")
    unknown = sorted(set(document) - set(_FIELDS))
    if unknown:
        raise QueryInvalid(f"body: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    bounds: dict[str, int] = {}
    for name in ("sinceNs", "untilNs"):
        given = document.get(name)
        if given is None:
            raise QueryInvalid(f"{name}: required, an integer from 0 to {MAX_NS} (ns since the epoch)")
        if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= MAX_NS:
            shown = json.dumps(given)[:40]
            raise QueryInvalid(
                f"{name}: must be an integer from 0 to {MAX_NS} (ns since the epoch), got {shown}"
            )
        bounds[name] = given
    if bounds["sinceNs"] > bounds["untilNs"]:
        raise QueryInvalid(f"untilNs: must be >= sinceNs, got {bounds['untilNs']} < {bounds['sinceNs']}")
    if "spec" not in document:
        raise QueryInvalid("spec: required, the PacketCapture's spec")
    try:
        spec = parse_spec(document["spec"], now=None)  # the sampler trusts nothing it did not check
    except SpecInvalid as err:
        raise QueryInvalid(str(err)) from None
    if spec.type is not CaptureType.SIMPLE:
        raise QueryInvalid(f"spec.type: must be 'simple' for a sample query, got {spec.type.value!r}")
    return SampleQuery(spec=spec, since_ns=bounds["sinceNs"], until_ns=bounds["untilNs"])


def error_body(message: str) -> bytes:
    """An error answer's JSON body."""
    return (json.dumps({"error": message}) + "\n").encode()


def error_message(data: bytes) -> str:
    """The message of an error answer's body (its start, as text, if it is not the JSON form)."""
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace")
