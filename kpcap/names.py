"""Kubernetes name rules, the capture id, the report names and the IP address test, shared by the
model, the destinations, the agent, the operator and the webhook's certificate.

Regular expressions are matched with ``re.fullmatch`` so that a trailing newline never slips through
(``$`` would allow one).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

DNS1123_SUBDOMAIN_MAX_LENGTH = 253
LABEL_NAME_MAX_LENGTH = 63
LABEL_VALUE_MAX_LENGTH = 63

_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*")
# Label names and values: alphanumerics at both ends, '-', '_' and '.' inside (case-sensitive).
_LABEL_TOKEN = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_CAPTURE_ID = re.compile(r"[0-9a-f]{32}")

DNS1123_SUBDOMAIN_RULE = (
    "a DNS-1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit"
)
LABEL_VALUE_RULE = (
    "a label value: empty or at most 63 characters, letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit"
)
LABEL_KEY_RULE = (
    "a label key: an optional DNS-1123 subdomain prefix and '/', then a name of at most 63 characters, "
    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
)


def is_dns1123_subdomain(text: str) -> bool:
    """True if ``text`` is a valid Kubernetes object name of the DNS-1123 subdomain kind (node names are)."""
    return len(text) <= DNS1123_SUBDOMAIN_MAX_LENGTH and _DNS1123_SUBDOMAIN.fullmatch(text) is not None


def is_label_value(text: str) -> bool:
    """True if ``text`` may be the value of a Kubernetes label (the empty string is allowed)."""
    return text == "" or (len(text) <= LABEL_VALUE_MAX_LENGTH and _LABEL_TOKEN.fullmatch(text) is not None)


def is_label_key(text: str) -> bool:
    """True if ``text`` may be the key of a Kubernetes label: ``[prefix/]name``."""
    prefix, slash, name = text.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= LABEL_NAME_MAX_LENGTH and _LABEL_TOKEN.fullmatch(name) is not None


def is_ip_address(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (a bucket must not be named like one; a
    certificate lists one as an IP, not a DNS, name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def capture_id(uid: str) -> str:
    """The capture id of a PacketCapture: its ``metadata.uid`` without dashes, lowercase (as upstream).

    Raises ValueError unless the result is 32 hexadecimal characters.
    """
    candidate = uid.replace("-", "").lower()
    if _CAPTURE_ID.fullmatch(candidate) is None:
        raise ValueError(
            f"a capture id must be 32 hexadecimal characters once dashes are removed, got {uid!r}"
        )
    return candidate


def is_capture_id(text: str) -> bool:
    """True if ``text`` is already a capture id (32 lowercase hexadecimal characters)."""
    return _CAPTURE_ID.fullmatch(text) is not None


# Room kept for the node in a long report name: 32 (id) + "." + 200 + "-" + 16 (hash) = 250 <= 253.
_REPORT_NODE_PREFIX = 200
_REPORT_NODE_HASH = 16


def report_name(*, capture_id: str, node: str) -> str:
    """The name of the PacketCaptureReport of ``node`` in capture ``capture_id``: ``<id>.<node>``.

    A valid DNS-1123 subdomain for any node name (node names are subdomains themselves): when the
    plain form would pass 253 characters, the node is cut to 200 characters (without a trailing '.'
    or '-', so the name stays valid) and made unique again by the first 16 hex digits of its SHA-256.
    """
    plain = f"{capture_id}.{node}"
    if len(plain) <= DNS1123_SUBDOMAIN_MAX_LENGTH:
        return plain
    digest = hashlib.sha256(node.encode()).hexdigest()[:_REPORT_NODE_HASH]
    return f"{capture_id}.{node[:_REPORT_NODE_PREFIX].rstrip('.-')}-{digest}"
