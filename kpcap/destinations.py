"""Where a full capture's files go: parsing ``spec.destinationConf`` and naming the objects.

Accepted forms (docs/design.md, "Storage")::

    s3://<bucket>[/<prefix>][?region=<region>][&endpoint=<http(s) URL of an S3-compatible store>]
    gs://<bucket>[/<prefix>]

Credentials never travel in the capture object: they come from the standard chains (IRSA, GKE
Workload Identity, the environment) or the Secret named in the chart. So user:password@ and any
query parameter that looks like a key, secret, token or signature is rejected with a message saying
so. ``gs://`` takes no parameters: a custom endpoint would receive the node's OAuth bearer token
(the GCS emulator is reached through the client's standard ``STORAGE_EMULATOR_HOST`` instead).

Objects are named ``<prefix>/pcap_<capture id>/<node name>.pcap`` (no leading slash, no empty
segments when the prefix is empty).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, unquote, urlsplit

from kpcap.errors import FieldError, SpecInvalid, describe_value
from kpcap.names import DNS1123_SUBDOMAIN_RULE, is_capture_id, is_dns1123_subdomain, is_ip_address

DESTINATION_FIELD = "spec.destinationConf"
DESTINATION_MAX_LENGTH = 2048
# S3 and GCS object keys are at most 1024 bytes; the rest of the key is
# "/pcap_<32 hex>/<node name, at most 253>.pcap" = 297 bytes.
PREFIX_MAX_BYTES = 1024 - len("/pcap_") - 32 - len("/") - 253 - len(".pcap")

S3_BUCKET_RULE = (
    "an S3 bucket name is 3 to 63 characters of lowercase letters, digits, '.' and '-', starts and "
    "ends with a letter or digit, has no '..', does not look like an IP address, does not start with "
    "'xn--', 'sthree-' or 'amzn-s3-demo-' and does not end with '-s3alias', '--ol-s3', '.mrap', "
    "'--x-s3' or '--table-s3'"
)
GCS_BUCKET_RULE = (
    "a GCS bucket name is 3 to 63 characters (up to 222 if it contains dots, each dot-separated part "
    "at most 63) of lowercase letters, digits, '-', '_' and '.', starts and ends with a letter or "
    "digit, does not look like an IP address, does not start with 'goog' and does not contain "
    "'google' or a close misspelling of it"
)
PREFIX_RULE = (
    "a prefix is '/'-separated parts made of letters, digits and ! - _ . * ' ( ) =, with no empty, "
    f"'.' or '..' part, at most {PREFIX_MAX_BYTES} bytes"
)
REGION_RULE = (
    "a region is 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
)
CREDENTIALS_RULE = (
    "credentials are not accepted in destinationConf: they come from the standard chains (IRSA, GKE "
    "Workload Identity, the environment) or the Secret named in the chart"
)

_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_GCS_GOOGLE_LOOKALIKE = re.compile(r"g[o0][o0]g[l1][e3]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9!\-_.*'()=]+")
_REGION = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# A parameter whose name contains one of these is treated as an attempt to pass credentials.
_CREDENTIAL_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "signature", "sig", "auth")
_S3_PARAMETERS = ("region", "endpoint")

_Fail = Callable[[str], None]


class DestinationScheme(StrEnum):
    """The storage services a full capture can write to."""

    S3 = "s3"
    GCS = "gs"


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """A parsed ``destinationConf``: the bucket, the key prefix (no leading or trailing '/', maybe
    empty) and, for S3 only, the region and the endpoint of an S3-compatible store."""

    scheme: DestinationScheme
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint: str | None = None


def parse_destination(text: object, *, field: str = DESTINATION_FIELD) -> Destination:
    """Parse and validate a ``destinationConf`` URI; raises SpecInvalid naming ``field`` otherwise."""
    destination, errors = check_destination(text, field=field)
    if errors or destination is None:
        raise SpecInvalid(errors or (FieldError(field=field, message="is not a valid destination"),))
    return destination


def check_destination(
    text: object, *, field: str = DESTINATION_FIELD
) -> tuple[Destination | None, list[FieldError]]:
    """Like parse_destination, but returns every problem found instead of raising (for collecting)."""
    errors: list[FieldError] = []

    def fail(message: str) -> None:
        errors.append(FieldError(field=field, message=message))

    forms = "must be 's3://<bucket>/<prefix>?region=<region>&endpoint=<url>' or 'gs://<bucket>/<prefix>'"
    if not isinstance(text, str):
        fail(f"{forms}, got {describe_value(text)}")
        return None, errors
    if len(text) > DESTINATION_MAX_LENGTH:
        fail(f"must be at most {DESTINATION_MAX_LENGTH} characters, got {len(text)}")
        return None, errors
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        fail(f"must not contain whitespace or control characters, got {describe_value(text)}")
        return None, errors
    scheme_text, separator, rest = text.partition("://")
    if not separator or scheme_text not in {scheme.value for scheme in DestinationScheme}:
        fail(f"{forms}, got {describe_value(text)}")
        return None, errors
    scheme = DestinationScheme(scheme_text)

    rest, hash_sign, _fragment = rest.partition("#")
    if hash_sign:
        fail(f"must not have a '#fragment', got {describe_value(text)}")
    location, _question, query = rest.partition("?")
    authority, _slash, path = location.partition("/")

    bucket = authority
    if "@" in authority:
        fail(f"{CREDENTIALS_RULE}, got user information before '@'")
        bucket = authority.rpartition("@")[2]
    if ":" in bucket:
        fail(f"the bucket must be a bare name without ':port', got {describe_value(bucket)}")
    elif scheme is DestinationScheme.S3 and not _is_s3_bucket(bucket):
        fail(f"{S3_BUCKET_RULE}, got {describe_value(bucket)}")
    elif scheme is DestinationScheme.GCS and not _is_gcs_bucket(bucket):
        fail(f"{GCS_BUCKET_RULE}, got {describe_value(bucket)}")

    prefix = path.rstrip("/")  # a trailing slash is harmless; an empty part elsewhere is refused
    if prefix and not _is_prefix(prefix):
        fail(f"{PREFIX_RULE}, got {describe_value(prefix)}")

    region, endpoint = _check_query(query, scheme=scheme, fail=fail)
    if errors:
        return None, errors
    return Destination(scheme=scheme, bucket=bucket, prefix=prefix, region=region, endpoint=endpoint), errors


def destination_uri(destination: Destination) -> str:
    """The canonical ``destinationConf`` text of a parsed destination (parses back to an equal value)."""
    uri = f"{destination.scheme.value}://{destination.bucket}"
    if destination.prefix:
        uri += f"/{destination.prefix}"
    parameters = []
    if destination.region is not None:
        parameters.append(f"region={destination.region}")
    if destination.endpoint is not None:
        parameters.append(f"endpoint={quote(destination.endpoint, safe=':/[]')}")
    if parameters:
        uri += "?" + "&".join(parameters)
    return uri


def object_key(destination: Destination, *, capture_id: str, node_name: str) -> str:
    """The key of one node's PCAP: ``<prefix>/pcap_<capture_id>/<node_name>.pcap``.

    Raises ValueError if ``capture_id`` is not 32 lowercase hex characters or ``node_name`` is not a
    DNS-1123 subdomain (so neither can add path segments).
    """
    if not is_capture_id(capture_id):
        raise ValueError(f"capture_id must be 32 lowercase hexadecimal characters, got {capture_id!r}")
    if not is_dns1123_subdomain(node_name):
        raise ValueError(f"node_name must be {DNS1123_SUBDOMAIN_RULE}, got {node_name!r}")
    parts = [destination.prefix] if destination.prefix else []
    parts += [f"pcap_{capture_id}", f"{node_name}.pcap"]
    return "/".join(parts)


def object_uri(destination: Destination, *, capture_id: str, node_name: str) -> str:
    """The full URI of one node's PCAP, e.g. ``s3://bucket/prefix/pcap_<id>/<node>.pcap``."""
    key = object_key(destination, capture_id=capture_id, node_name=node_name)
    return f"{destination.scheme.value}://{destination.bucket}/{key}"


def _is_s3_bucket(bucket: str) -> bool:
    return (
        _S3_BUCKET.fullmatch(bucket) is not None
        and ".." not in bucket
        and not is_ip_address(bucket)
        and not bucket.startswith(_S3_RESERVED_PREFIXES)
        and not bucket.endswith(_S3_RESERVED_SUFFIXES)
    )


def _is_gcs_bucket(bucket: str) -> bool:
    if _GCS_BUCKET.fullmatch(bucket) is None or is_ip_address(bucket):
        return False
    parts = bucket.split(".")
    if "." not in bucket and len(bucket) > 63:
        return False
    if any(not part or len(part) > 63 for part in parts):
        return False
    return not bucket.startswith("goog") and _GCS_GOOGLE_LOOKALIKE.search(bucket) is None


def _is_prefix(prefix: str) -> bool:
    if len(prefix.encode()) > PREFIX_MAX_BYTES:
        return False
    parts = prefix.split("/")
    return all(_PREFIX_PART.fullmatch(part) and part not in {".", ".."} for part in parts)


def _check_query(query: str, *, scheme: DestinationScheme, fail: _Fail) -> tuple[str | None, str | None]:
    """Validate the query string; returns (region, endpoint)."""
    if not query:
        return None, None
    values: dict[str, str] = {}
    for item in query.split("&"):
        name, equals, raw_value = item.partition("=")
        name = unquote(name)
        value = unquote(raw_value)
        normalized = name.lower().replace("-", "_")
        if any(word in normalized for word in _CREDENTIAL_WORDS):
            fail(f"{CREDENTIALS_RULE}, got the parameter {describe_value(name)}")
        elif scheme is DestinationScheme.GCS:
            fail(f"gs:// destinations take no query parameters, got {describe_value(name)}")
        elif name not in _S3_PARAMETERS:
            fail(f"unknown parameter {describe_value(name)}, s3:// allows only 'region' and 'endpoint'")
        elif name in values:
            fail(f"the parameter {name!r} is given more than once")
        elif not equals or not value:
            fail(f"the parameter {name!r} needs a value, as in '{name}=...'")
        else:
            values[name] = value
    region = values.get("region")
    if region is not None and _REGION.fullmatch(region) is None:
        fail(f"{REGION_RULE}, got {describe_value(region)}")
        region = None
    endpoint = values.get("endpoint")
    if endpoint is not None:
        endpoint = _check_endpoint(endpoint, fail=fail)
    return region, endpoint


def _check_endpoint(endpoint: str, *, fail: _Fail) -> str | None:
    rule = (
        "endpoint must be an http:// or https:// URL of the store, as 'https://host[:port]' "
        "(no path, query or credentials)"
    )
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # raises ValueError for a port that is not 0..65535
    except ValueError:
        fail(f"{rule}, got {describe_value(endpoint)}")
        return None
    if parts.username is not None or parts.password is not None:
        fail(f"{CREDENTIALS_RULE}, got user information in the endpoint")
        return None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        fail(f"{rule}, got {describe_value(endpoint)}")
        return None
    if parts.path not in {"", "/"} or parts.query or parts.fragment or endpoint.endswith(("?", "#")):
        fail(f"{rule}, got {describe_value(endpoint)}")
        return None
    host = parts.hostname
    if ":" in host:  # an IPv6 literal: urlsplit drops the brackets
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
