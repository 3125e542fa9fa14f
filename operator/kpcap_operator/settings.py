"""The operator's configuration: one frozen object, read once from the environment, passed explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class SettingsError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorSettings:
    namespace: str
    """Where capture DaemonSets are created (the operator's own namespace)."""
    agent_image: str
    agent_service_account: str = "kpcap-agent"
    colo_label: str = "topology.kubernetes.io/zone"
    report_grace_seconds: int = 60
    """Beyond timeLimit, how long a node has to upload and report before it counts as silent."""
    simple_rate_window_seconds: int = 60
    agent_image_pull_policy: str = "IfNotPresent"
    agent_cpu_request: str = "50m"
    agent_memory_request: str = "64Mi"
    agent_memory_limit: str = "256Mi"
    agent_priority_class: str = ""
    agent_credentials_secret: str = ""
    """A Secret in the operator's namespace whose keys become the agents' environment (storage
    credentials for the SDKs' standard chains, e.g. AWS_ACCESS_KEY_ID); optional."""
    webhook_enabled: bool = True
    webhook_failure_policy: str = "Fail"
    """Fail: no capture is created while the webhook is down; Ignore: the operator still validates."""
    webhook_port: int = 9443
    webhook_host: str = ""
    """Address the apiserver calls the webhook on (the pod IP or a Service name); empty: no webhook."""
    webhook_service: str = ""
    webhook_cert_dir: str = ""
    metrics_port: int = 8080
    reconcile_interval_seconds: float = 1.0
    service_account: str = "kpcap-operator"
    """The operator's own ServiceAccount (operator namespace): its audience-bound tokens prove the
    operator to the samplers."""
    sampler_selector: str = "app.kubernetes.io/component=sampler"
    """Label selector of the sampler pods in the operator's namespace."""
    sampler_port: int = 9444
    sampler_audience: str = "kpcap-sampler"
    sampler_ca_file: str = ""
    """The CA that issued the samplers' certificates (the chart's); empty: they are not verified."""
    sampler_timeout_seconds: float = 1.0
    """How long a simple capture waits for the samplers' answers."""
    sample_store: str = "/var/lib/kpcap/samples"
    """Where simple captures' PCAPs are kept: a directory (a volume), or an s3:// or gs:// bucket URI."""

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
        source = os.environ if env is None else env

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = source.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}: must be an integer from {low} to {high}, got {raw!r}") from None
            if not low <= value <= high:
                raise SettingsError(f"{name}: must be an integer from {low} to {high}, got {value}")
            return value

        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            value = source.get(name) or default
            if value not in allowed:
                raise SettingsError(f"{name}: must be one of {', '.join(allowed)}, got {value!r}")
            return value

        namespace = source.get("KPCAP_NAMESPACE", "")
        if not namespace:
            raise SettingsError(
                "KPCAP_NAMESPACE: required (the operator's namespace, where capture DaemonSets go)"
            )
        image = source.get("KPCAP_AGENT_IMAGE", "")
        if not image:
            raise SettingsError("KPCAP_AGENT_IMAGE: required (the capture agent's image)")
        return OperatorSettings(
            namespace=namespace,
            agent_image=image,
            agent_service_account=source.get("KPCAP_AGENT_SERVICE_ACCOUNT", "kpcap-agent"),
            colo_label=source.get("KPCAP_COLO_LABEL", "topology.kubernetes.io/zone"),
            report_grace_seconds=integer("KPCAP_REPORT_GRACE_SECONDS", 60, 5, 3600),
            simple_rate_window_seconds=integer("KPCAP_SIMPLE_RATE_WINDOW_SECONDS", 60, 0, 3600),
            agent_image_pull_policy=source.get("KPCAP_AGENT_IMAGE_PULL_POLICY", "IfNotPresent"),
            agent_priority_class=source.get("KPCAP_AGENT_PRIORITY_CLASS", ""),
            agent_credentials_secret=source.get("KPCAP_AGENT_CREDENTIALS_SECRET", ""),
            webhook_enabled=source.get("KPCAP_WEBHOOK_ENABLED", "true").lower() == "true",
            webhook_failure_policy=choice("KPCAP_WEBHOOK_FAILURE_POLICY", "Fail", ("Fail", "Ignore")),
            webhook_port=integer("KPCAP_WEBHOOK_PORT", 9443, 1, 65535),
            webhook_host=source.get("KPCAP_WEBHOOK_HOST", ""),
            webhook_service=source.get("KPCAP_WEBHOOK_SERVICE", ""),
            webhook_cert_dir=source.get("KPCAP_WEBHOOK_CERT_DIR", ""),
            metrics_port=integer("KPCAP_METRICS_PORT", 8080, 0, 65535),
            service_account=source.get("KPCAP_SERVICE_ACCOUNT") or "kpcap-operator",
            sampler_selector=source.get("KPCAP_SAMPLER_SELECTOR") or "app.kubernetes.io/component=sampler",
            sampler_port=integer("KPCAP_SAMPLER_PORT", 9444, 1, 65535),
            sampler_audience=source.get("KPCAP_SAMPLER_AUDIENCE") or "kpcap-sampler",
            sampler_ca_file=source.get("KPCAP_SAMPLER_CA_FILE", ""),
            sampler_timeout_seconds=integer("KPCAP_SAMPLER_TIMEOUT_MS", 1000, 100, 60000) / 1000,
            sample_store=source.get("KPCAP_SAMPLE_STORE") or "/var/lib/kpcap/samples",
        )
