"""The sampler's settings: one frozen object, read once from the chart's environment (kpcap.envconfig)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kpcap import envconfig
from kpcap.envconfig import EnvError
from kpcap_agent.sampler import (
    DEFAULT_RETENTION_SECONDS,
    MAX_BYTE_BUDGET,
    MAX_RETENTION_SECONDS,
    MAX_SAMPLE_RATE,
    MAX_SNAP_LENGTH,
    MIN_SNAP_LENGTH,
    RECORD_OVERHEAD_BYTES,
    SamplerConfig,
)
from kpcap_agent.sampler_ca import read_ca

DEFAULT_HOST: Final = "0.0.0.0"  # noqa: S104 -- the node's operator-facing port, on every address
DEFAULT_PORT: Final = 9444
DEFAULT_AUDIENCE: Final = "kpcap-sampler"
DEFAULT_SAMPLE_RATE: Final = 100
DEFAULT_SNAP_LENGTH: Final = 128
DEFAULT_BYTE_BUDGET: Final = 64 << 20
_INTERFACE_NAME: Final = re.compile(r"[^\s/:,]{1,15}")

# The SamplerConfig field each variable sets, to name the variable in SamplerConfig's own messages.
_SAMPLER_FIELDS: Final = {
    "sample_rate": "KPCAP_SAMPLER_RATE",
    "snap_length": "KPCAP_SAMPLER_SNAPLEN",
    "retention_seconds": "KPCAP_SAMPLER_RETENTION",
    "byte_budget": "KPCAP_SAMPLER_BYTE_BUDGET",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerServiceConfig:
    """What the sampler of one node runs with; :meth:`from_env` reads it from the chart's env.

    ``port`` 0 binds any free port (tests); the environment allows 1..65535 only.
    """

    node_name: str
    sampler: SamplerConfig
    client: str  # the one username allowed to query, e.g. system:serviceaccount:kpcap-system:kpcap-operator
    audience: str = DEFAULT_AUDIENCE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    interfaces: tuple[str, ...] | None = None  # None: every interface but lo
    node_ip: str | None = None  # also named in the serving certificate (hostNetwork: the node's IP)
    ca: tuple[bytes, bytes] | None = None  # (certificate, key) PEM of the CA issuing the serving cert
    ca_dir: Path | None = None  # where ``ca`` was read: checked for a rotated CA (refresh_certificate)
    metrics_port: int | None = None  # plain-HTTP /metrics on ``host`` (counts only); None: not served

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SamplerServiceConfig:
        """Read and check every variable; raises :class:`~kpcap.envconfig.EnvError` naming the
        variable and what it allows."""
        source = os.environ if env is None else env
        node_name = envconfig.required(
            source, "KPCAP_NODE_NAME", what="the node's name, from the downward API"
        )
        client = envconfig.required(
            source,
            "KPCAP_SAMPLER_CLIENT",
            what="the username allowed to query, e.g. system:serviceaccount:kpcap-system:kpcap-operator",
        )
        host = envconfig.ip_address(
            source,
            "KPCAP_SAMPLER_HOST",
            default=DEFAULT_HOST,
            what="an IP address to listen on, such as 0.0.0.0 or ::",
        )
        snap_length = envconfig.integer(
            source,
            "KPCAP_SAMPLER_SNAPLEN",
            default=DEFAULT_SNAP_LENGTH,
            low=MIN_SNAP_LENGTH,
            high=MAX_SNAP_LENGTH,
            what="bytes kept of each sampled packet",
        )
        try:
            sampler = SamplerConfig(
                sample_rate=envconfig.integer(
                    source,
                    "KPCAP_SAMPLER_RATE",
                    default=DEFAULT_SAMPLE_RATE,
                    low=1,
                    high=MAX_SAMPLE_RATE,
                    what="keep 1 packet in N",
                ),
                snap_length=snap_length,
                byte_budget=envconfig.quantity(
                    source,
                    "KPCAP_SAMPLER_BYTE_BUDGET",
                    default=DEFAULT_BYTE_BUDGET,
                    allowed=f"{snap_length + RECORD_OVERHEAD_BYTES}..{MAX_BYTE_BUDGET} bytes",
                ),
                retention_seconds=envconfig.duration(
                    source,
                    "KPCAP_SAMPLER_RETENTION",
                    default=DEFAULT_RETENTION_SECONDS,
                    allowed=f"more than 0 s, at most {MAX_RETENTION_SECONDS:g} s (168h)",
                ),
            )
        except (ValueError, TypeError) as err:
            if isinstance(err, EnvError):
                raise
            # SamplerConfig's own range checks: its message starts with the field's name.
            field = str(err).split(" ", 1)[0]
            variable = _SAMPLER_FIELDS.get(field, "KPCAP_SAMPLER_*")
            given = source.get(variable, "")
            raise EnvError(variable, f"{given.strip()!r} is out of range: {err}") from None
        node_ip = envconfig.ip_address(
            source, "KPCAP_NODE_IP", default=None, what="the node's IP address (downward API status.hostIP)"
        )
        ca_dir = envconfig.optional(source, "KPCAP_SAMPLER_CA_DIR")
        return cls(
            node_name=node_name,
            sampler=sampler,
            client=client,
            audience=envconfig.string(source, "KPCAP_SAMPLER_AUDIENCE", default=DEFAULT_AUDIENCE),
            host=host or DEFAULT_HOST,
            port=envconfig.integer(
                source, "KPCAP_SAMPLER_PORT", default=DEFAULT_PORT, low=1, high=65535, what="the HTTPS port"
            ),
            interfaces=_interfaces(source),
            node_ip=node_ip,
            ca=None if ca_dir is None else read_ca(Path(ca_dir)),
            ca_dir=None if ca_dir is None else Path(ca_dir),
            metrics_port=None
            if envconfig.optional(source, "KPCAP_SAMPLER_METRICS_PORT") is None
            else envconfig.integer(
                source, "KPCAP_SAMPLER_METRICS_PORT", default=0, low=1, high=65535, what="the metrics port"
            ),
        )


def _interfaces(env: Mapping[str, str]) -> tuple[str, ...] | None:
    text = envconfig.optional(env, "KPCAP_SAMPLER_INTERFACES")
    if text is None:
        return None
    interfaces = tuple(name.strip() for name in text.split(",") if name.strip())
    bad = [name for name in interfaces if not _INTERFACE_NAME.fullmatch(name)]
    if bad or not interfaces:
        raise EnvError(
            "KPCAP_SAMPLER_INTERFACES",
            "must be a comma-separated list of interface names (1-15 characters, no spaces, "
            f"'/' or ':'), or unset for every interface but lo; got {text!r}",
        )
    return interfaces
