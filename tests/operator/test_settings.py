"""OperatorSettings.from_env: the one place the operator reads its environment."""

from __future__ import annotations

import pytest

from kpcap_operator.api import ApiSettings
from kpcap_operator.settings import OperatorSettings, SettingsError

REQUIRED = {"KPCAP_NAMESPACE": "kpcap-system", "KPCAP_AGENT_IMAGE": "registry.example/kpcap-agent:1"}


def test_defaults_with_only_the_required_variables() -> None:
    settings = OperatorSettings.from_env(REQUIRED)
    assert settings == OperatorSettings(
        namespace="kpcap-system", agent_image="registry.example/kpcap-agent:1"
    )
    assert settings.api_port is None  # no REST API unless asked for
    assert settings.watch_namespaces == ()  # cluster-wide
    assert settings.leader_lease == ""  # a single replica: no election, it reconciles
    assert settings.webhook_config_managed  # Kopf registers the webhook (no chart around it)


def test_what_main_used_to_read_itself_is_in_the_settings() -> None:
    settings = OperatorSettings.from_env(
        {
            **REQUIRED,
            "KPCAP_LOG_LEVEL": "debug",
            "KPCAP_POD_IP": "198.18.0.10",
            "KPCAP_API_PORT": "8000",
            "KPCAP_API_HOST": "0.0.0.0",  # noqa: S104 - a value read, not a socket bound
            "KPCAP_API_TLS_CERT_FILE": "/etc/kpcap/api-tls/tls.crt",
            "KPCAP_API_TLS_KEY_FILE": "/etc/kpcap/api-tls/tls.key",
            "KPCAP_READINESS_PORT": "8082",
            "KPCAP_LOG_FORMAT": "json",
            "KPCAP_WATCH_NAMESPACES": "team-a, team-b,",
            "KPCAP_LEADER_LEASE": "kpcap-operator-leader",
            "KPCAP_POD_NAME": "kpcap-operator-7d9f-abcde",
            "KPCAP_WEBHOOK_CONFIG_MANAGED": "false",
            "KPCAP_LIVENESS_ENDPOINT": "http://0.0.0.0:8081/healthz",
            "KPCAP_AGENT_CPU_REQUEST": "100m",
            "KPCAP_AGENT_MEMORY_REQUEST": "96Mi",
            "KPCAP_AGENT_MEMORY_LIMIT": "320Mi",
        }
    )
    assert settings.log_level == "DEBUG"
    assert settings.pod_ip == "198.18.0.10"
    assert (settings.api_port, settings.api_host) == (8000, "0.0.0.0")  # noqa: S104
    assert (settings.api_tls_enabled, settings.api_tls_cert_file) == (True, "/etc/kpcap/api-tls/tls.crt")
    assert (settings.readiness_port, settings.log_format) == (8082, "json")
    assert settings.watch_namespaces == ("team-a", "team-b")
    assert (settings.leader_lease, settings.pod_name) == (
        "kpcap-operator-leader",
        "kpcap-operator-7d9f-abcde",
    )
    assert settings.webhook_config_managed is False
    assert settings.liveness_endpoint == "http://0.0.0.0:8081/healthz"
    assert (settings.agent_cpu_request, settings.agent_memory_request, settings.agent_memory_limit) == (
        "100m",
        "96Mi",
        "320Mi",
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KPCAP_NAMESPACE", "", "KPCAP_NAMESPACE: required"),
        ("KPCAP_REPORT_GRACE_SECONDS", "4", "KPCAP_REPORT_GRACE_SECONDS: must be in 5..3600"),
        ("KPCAP_API_PORT", "http", "KPCAP_API_PORT: must be an integer in 1..65535"),
        ("KPCAP_API_PORT", "0", "KPCAP_API_PORT: must be in 1..65535"),
        (
            "KPCAP_WEBHOOK_FAILURE_POLICY",
            "Maybe",
            "KPCAP_WEBHOOK_FAILURE_POLICY: must be one of Fail, Ignore",
        ),
        ("KPCAP_LOG_LEVEL", "chatty", "KPCAP_LOG_LEVEL: must be one of DEBUG"),
    ],
)
def test_a_bad_variable_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env({**REQUIRED, name: value})


@pytest.mark.parametrize("grace", [5, 6, 60, 3600])
def test_the_upload_deadline_is_derived_from_the_report_grace(grace: int) -> None:
    settings = OperatorSettings.from_env({**REQUIRED, "KPCAP_REPORT_GRACE_SECONDS": str(grace)})
    assert 1 <= settings.upload_deadline_seconds < grace


def test_the_rest_api_settings_are_derived_from_the_operators() -> None:
    settings = OperatorSettings.from_env({**REQUIRED, "KPCAP_SIMPLE_RATE_WINDOW_SECONDS": "5"})
    api = ApiSettings.of(settings)
    assert (api.operator_namespace, api.simple_rate_window_seconds) == ("kpcap-system", 5)
