"""The sampler's settings from the environment (kpcap_agent.sampler_settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpcap.envconfig import EnvError, parse_duration, parse_quantity
from kpcap_agent.sampler import SamplerConfig
from kpcap_agent.sampler_service import main
from kpcap_agent.sampler_settings import SamplerServiceConfig
from tests.agent.sampler_calls import (
    BASE_ENV,
    CLIENT,
)


def test_env_defaults_and_values() -> None:
    config = SamplerServiceConfig.from_env(BASE_ENV)
    assert (config.node_name, config.client, config.audience) == ("node-1", CLIENT, "kpcap-sampler")
    assert (config.host, config.port, config.interfaces) == ("0.0.0.0", 9444, None)  # noqa: S104
    assert config.sampler == SamplerConfig(
        sample_rate=100, snap_length=128, byte_budget=64 << 20, retention_seconds=86400
    )
    config = SamplerServiceConfig.from_env(
        BASE_ENV
        | {
            "KPCAP_SAMPLER_RATE": "7",
            "KPCAP_SAMPLER_SNAPLEN": "96",
            "KPCAP_SAMPLER_RETENTION": "90m",
            "KPCAP_SAMPLER_BYTE_BUDGET": "128Mi",
            "KPCAP_SAMPLER_PORT": "10443",
            "KPCAP_SAMPLER_HOST": "::",
            "KPCAP_SAMPLER_AUDIENCE": "other-audience",
            "KPCAP_SAMPLER_INTERFACES": "eth0, eth1,",
        }
    )
    assert config.sampler == SamplerConfig(
        sample_rate=7, snap_length=96, byte_budget=128 << 20, retention_seconds=5400
    )
    assert (config.host, config.port, config.audience) == ("::", 10443, "other-audience")
    assert config.interfaces == ("eth0", "eth1")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90m", 5400),
        ("45s", 45),
        ("1h30m", 5400),
        ("2h0m5s", 7205),
        ("3600", 3600),
        ("1.5", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("128Mi", 128 << 20),
        ("1Gi", 1 << 30),
        ("500M", 500_000_000),
        ("1.5Ki", 1536),
        ("2k", 2000),
    ],
)
def test_quantities(text: str, size: int) -> None:
    assert parse_quantity(text) == size


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KPCAP_NODE_NAME", "", r"KPCAP_NODE_NAME: required"),
        ("KPCAP_SAMPLER_CLIENT", " ", r"KPCAP_SAMPLER_CLIENT: required"),
        ("KPCAP_SAMPLER_RATE", "0", r"KPCAP_SAMPLER_RATE: must be in 1\.\.2147483647"),
        ("KPCAP_SAMPLER_RATE", "ten", r"KPCAP_SAMPLER_RATE: must be an integer in 1\.\.2147483647"),
        ("KPCAP_SAMPLER_SNAPLEN", "32", r"KPCAP_SAMPLER_SNAPLEN: must be in 64\.\.65535"),
        ("KPCAP_SAMPLER_SNAPLEN", "1e3", r"KPCAP_SAMPLER_SNAPLEN: must be an integer in 64\.\.65535"),
        ("KPCAP_SAMPLER_RETENTION", "1d", r"KPCAP_SAMPLER_RETENTION: not a duration: '1d'.*at most 604800 s"),
        (
            "KPCAP_SAMPLER_RETENTION",
            "0s",
            r"KPCAP_SAMPLER_RETENTION: .*retention_seconds must be in \(0, 604800\]",
        ),
        (
            "KPCAP_SAMPLER_RETENTION",
            "200h",
            r"KPCAP_SAMPLER_RETENTION: .*retention_seconds must be in \(0, 604800\]",
        ),
        (
            "KPCAP_SAMPLER_BYTE_BUDGET",
            "lots",
            r"KPCAP_SAMPLER_BYTE_BUDGET: not a byte quantity.*320\.\.281474976710656",
        ),
        (
            "KPCAP_SAMPLER_BYTE_BUDGET",
            "100",
            r"KPCAP_SAMPLER_BYTE_BUDGET: '100' is out of range: byte_budget must be in 320\.\.",
        ),
        (
            "KPCAP_SAMPLER_BYTE_BUDGET",
            "1Ei",
            r"KPCAP_SAMPLER_BYTE_BUDGET: .*byte_budget must be in 320\.\.281474976710656",
        ),
        ("KPCAP_SAMPLER_PORT", "0", r"KPCAP_SAMPLER_PORT: must be in 1\.\.65535"),
        ("KPCAP_SAMPLER_PORT", "https", r"KPCAP_SAMPLER_PORT: must be an integer in 1\.\.65535"),
        ("KPCAP_SAMPLER_HOST", "example.com", r"KPCAP_SAMPLER_HOST: must be an IP address"),
        ("KPCAP_SAMPLER_INTERFACES", "eth0,a/b", r"KPCAP_SAMPLER_INTERFACES: must be a comma-separated list"),
        ("KPCAP_SAMPLER_INTERFACES", ",", r"KPCAP_SAMPLER_INTERFACES: must be a comma-separated list"),
    ],
)
def test_env_errors_name_the_variable_and_the_allowed_values(variable: str, value: str, message: str) -> None:
    with pytest.raises(EnvError, match=message) as raised:
        SamplerServiceConfig.from_env(BASE_ENV | {variable: value})
    assert raised.value.variable == variable


def test_main_exits_2_on_a_bad_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(BASE_ENV | {"KPCAP_SAMPLER_RATE": "-1"}) == 2
    assert (
        "configuration error: KPCAP_SAMPLER_RATE: must be in 1..2147483647 (keep 1 packet in N), got -1"
        in capsys.readouterr().err
    )


def test_a_bad_ca_dir_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match=r"KPCAP_SAMPLER_CA_DIR: must hold ca\.crt and ca\.key") as raised:
        SamplerServiceConfig.from_env(BASE_ENV | {"KPCAP_SAMPLER_CA_DIR": str(tmp_path)})
    assert raised.value.variable == "KPCAP_SAMPLER_CA_DIR"
    with pytest.raises(EnvError, match="KPCAP_NODE_IP"):
        SamplerServiceConfig.from_env(BASE_ENV | {"KPCAP_NODE_IP": "node-1"})
