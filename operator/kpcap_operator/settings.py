"""The operator's configuration: one frozen object, read once from the environment, passed explicitly.

``OperatorSettings.from_env`` is the only place the operator process reads its ``KPCAP_*``
variables (the chart's operator Deployment sets them); everything else gets the object.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kpcap import envconfig
from kpcap.logformat import LOG_FORMATS

# The agent's upload retries stop this share of the report grace after timeLimit: the rest is room
# for the try still in flight and the final report, so a node still uploading reports (done or
# failed) before the operator could count it silent.
UPLOAD_SHARE_OF_GRACE = 0.75


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
    pod_ip: str = ""
    """The operator pod's address (downward API): the self-signed webhook certificate names it."""
    metrics_port: int = 8080
    agent_metrics_ports: tuple[int, int] | None = None
    """First and last port (both included) capture agents serve metrics on, one per live capture
    (hostNetwork: the node's ports); None: agents serve none."""
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
    api_port: int | None = None
    """Serve the REST API on this port; None: no API."""
    api_host: str = ""
    """Address the REST API listens on; empty: every interface."""
    api_tls_cert_file: str = ""
    """The REST API's certificate chain (PEM); with api_tls_key_file, it serves HTTPS (reloaded when
    the file changes, e.g. renewed by cert-manager)."""
    api_tls_key_file: str = ""
    api_tls_enabled: bool = True
    """False: plain HTTP, only behind a TLS-terminating proxy (callers send bearer tokens)."""
    readiness_port: int = 0
    """Serve /readyz here (Kopf's health, the webhook's and the API's listeners); 0: none."""
    log_format: str = "text"
    """text or json (one object a line, with object references); the agents get the same."""
    log_level: str = "INFO"
    watch_namespaces: tuple[str, ...] = ()
    """Namespaces whose captures are served; empty: every namespace (cluster-wide)."""
    leader_lease: str = ""
    """The coordination.k8s.io Lease (operator namespace) replicas elect their leader on; empty: no
    election, this process reconciles (a single replica)."""
    pod_name: str = ""
    """The operator pod's name (downward API): the first part of its leader-election identity."""
    webhook_config_managed: bool = True
    """Kopf creates and patches the ValidatingWebhookConfiguration "kpcap.io" (URL, caBundle); false:
    the chart owns it, with the shared certificate's CA, and every replica serves that certificate."""
    liveness_endpoint: str = ""
    """Kopf's liveness endpoint URL (``http://0.0.0.0:8081/healthz``); empty: none."""

    @property
    def upload_deadline_seconds(self) -> int:
        """Seconds after ``started + timeLimit`` by which an agent stops retrying its upload.

        Derived from the report grace (see UPLOAD_SHARE_OF_GRACE) and handed to the agents in their
        DaemonSet's environment, so the two can never drift apart.
        """
        return max(1, int(self.report_grace_seconds * UPLOAD_SHARE_OF_GRACE))

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
        source = os.environ if env is None else env
        try:
            return _from_env(source)
        except envconfig.EnvError as err:
            raise SettingsError(str(err)) from None


def _from_env(source: Mapping[str, str]) -> OperatorSettings:
    text, integer = envconfig.string, envconfig.integer
    namespace = envconfig.required(
        source, "KPCAP_NAMESPACE", what="the operator's namespace, where capture DaemonSets go"
    )
    api_port = envconfig.optional(source, "KPCAP_API_PORT")
    return OperatorSettings(
        namespace=namespace,
        agent_image=envconfig.required(source, "KPCAP_AGENT_IMAGE", what="the capture agent's image"),
        agent_service_account=text(source, "KPCAP_AGENT_SERVICE_ACCOUNT", default="kpcap-agent"),
        colo_label=text(source, "KPCAP_COLO_LABEL", default="topology.kubernetes.io/zone"),
        report_grace_seconds=integer(source, "KPCAP_REPORT_GRACE_SECONDS", default=60, low=5, high=3600),
        simple_rate_window_seconds=integer(
            source, "KPCAP_SIMPLE_RATE_WINDOW_SECONDS", default=60, low=0, high=3600
        ),
        agent_image_pull_policy=envconfig.choice(
            source,
            "KPCAP_AGENT_IMAGE_PULL_POLICY",
            default="IfNotPresent",
            allowed=("IfNotPresent", "Always", "Never"),
        ),
        agent_cpu_request=text(source, "KPCAP_AGENT_CPU_REQUEST", default="50m"),
        agent_memory_request=text(source, "KPCAP_AGENT_MEMORY_REQUEST", default="64Mi"),
        agent_memory_limit=text(source, "KPCAP_AGENT_MEMORY_LIMIT", default="256Mi"),
        agent_priority_class=text(source, "KPCAP_AGENT_PRIORITY_CLASS", default=""),
        agent_credentials_secret=text(source, "KPCAP_AGENT_CREDENTIALS_SECRET", default=""),
        webhook_enabled=envconfig.boolean(source, "KPCAP_WEBHOOK_ENABLED", default=True),
        webhook_failure_policy=envconfig.choice(
            source, "KPCAP_WEBHOOK_FAILURE_POLICY", default="Fail", allowed=("Fail", "Ignore")
        ),
        webhook_port=integer(source, "KPCAP_WEBHOOK_PORT", default=9443, low=1, high=65535),
        webhook_host=text(source, "KPCAP_WEBHOOK_HOST", default=""),
        webhook_service=text(source, "KPCAP_WEBHOOK_SERVICE", default=""),
        webhook_cert_dir=text(source, "KPCAP_WEBHOOK_CERT_DIR", default=""),
        pod_ip=text(source, "KPCAP_POD_IP", default=""),
        metrics_port=integer(source, "KPCAP_METRICS_PORT", default=8080, low=0, high=65535),
        agent_metrics_ports=_port_range(source, "KPCAP_AGENT_METRICS_PORTS"),
        service_account=text(source, "KPCAP_SERVICE_ACCOUNT", default="kpcap-operator"),
        sampler_selector=text(
            source, "KPCAP_SAMPLER_SELECTOR", default="app.kubernetes.io/component=sampler"
        ),
        sampler_port=integer(source, "KPCAP_SAMPLER_PORT", default=9444, low=1, high=65535),
        sampler_audience=text(source, "KPCAP_SAMPLER_AUDIENCE", default="kpcap-sampler"),
        sampler_ca_file=text(source, "KPCAP_SAMPLER_CA_FILE", default=""),
        sampler_timeout_seconds=integer(source, "KPCAP_SAMPLER_TIMEOUT_MS", default=1000, low=100, high=60000)
        / 1000,
        sample_store=text(source, "KPCAP_SAMPLE_STORE", default="/var/lib/kpcap/samples"),
        api_port=None
        if api_port is None
        else integer(source, "KPCAP_API_PORT", default=0, low=1, high=65535, what="the REST API's port"),
        api_host=text(source, "KPCAP_API_HOST", default=""),
        **_api_tls(source, api_port=api_port),
        readiness_port=integer(source, "KPCAP_READINESS_PORT", default=0, low=0, high=65535),
        log_format=envconfig.choice(source, "KPCAP_LOG_FORMAT", default="text", allowed=LOG_FORMATS),
        log_level=_log_level(source),
        watch_namespaces=tuple(
            n.strip() for n in text(source, "KPCAP_WATCH_NAMESPACES", default="").split(",") if n.strip()
        ),
        leader_lease=text(source, "KPCAP_LEADER_LEASE", default=""),
        pod_name=text(source, "KPCAP_POD_NAME", default=""),
        webhook_config_managed=envconfig.boolean(source, "KPCAP_WEBHOOK_CONFIG_MANAGED", default=True),
        liveness_endpoint=text(source, "KPCAP_LIVENESS_ENDPOINT", default=""),
    )


def _api_tls(source: Mapping[str, str], *, api_port: str | None) -> dict[str, Any]:
    enabled = envconfig.boolean(source, "KPCAP_API_TLS_ENABLED", default=True)
    cert = envconfig.string(source, "KPCAP_API_TLS_CERT_FILE", default="")
    key = envconfig.string(source, "KPCAP_API_TLS_KEY_FILE", default="")
    if api_port is not None and enabled:
        for name, value in (("KPCAP_API_TLS_CERT_FILE", cert), ("KPCAP_API_TLS_KEY_FILE", key)):
            if not value:
                raise envconfig.EnvError(
                    name,
                    "the REST API serves HTTPS (bearer tokens travel): set the certificate and key"
                    " files, or KPCAP_API_TLS_ENABLED=false only behind a TLS-terminating proxy",
                )
    return {"api_tls_enabled": enabled, "api_tls_cert_file": cert, "api_tls_key_file": key}


def _port_range(source: Mapping[str, str], name: str) -> tuple[int, int] | None:
    """``FIRST-LAST`` (e.g. ``9460-9659``), both in 1..65535, FIRST <= LAST; unset or empty: None."""
    given = envconfig.string(source, name, default="").strip()
    if not given:
        return None
    first, _, last = given.partition("-")
    try:
        low, high = int(first), int(last)
    except ValueError:
        low = high = 0
    if not 1 <= low <= high <= 65535:
        raise envconfig.EnvError(
            name, f"must be FIRST-LAST, ports in 1..65535 with FIRST <= LAST, got {given!r}"
        )
    return low, high


def _log_level(source: Mapping[str, str]) -> str:
    level = envconfig.string(source, "KPCAP_LOG_LEVEL", default="INFO").upper()
    if level not in _LOG_LEVELS:
        raise envconfig.EnvError("KPCAP_LOG_LEVEL", f"must be one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    return level


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
