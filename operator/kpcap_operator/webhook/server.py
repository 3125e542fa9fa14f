"""The admission webhook's server: TLS from a mounted Secret, or a self-signed pair made at start-up.

With several replicas the chart mounts one certificate into each and owns the webhook configuration
(its CA in caBundle; KPCAP_WEBHOOK_CONFIG_MANAGED=false); a self-signed pair is for a single process
whose configuration Kopf registers and patches.

In a cluster the apiserver calls it through the webhook Service (``service`` client config, so no
pod IP is baked into the ValidatingWebhookConfiguration); outside one (development, some tests) it is
called by URL at ``settings.webhook_host``.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import kopf

from kpcap.names import is_ip_address
from kpcap.tls import self_signed_certificate
from kpcap_operator.settings import OperatorSettings


class ServiceWebhookServer(kopf.WebhookServer):
    """Serves like kopf.WebhookServer but tells the apiserver to come through a Service."""

    def __init__(
        self, *, service_name: str, service_namespace: str, service_port: int, tls: _Tls, port: int
    ) -> None:
        super().__init__(
            addr="0.0.0.0",  # noqa: S104 - the apiserver reaches it from outside the pod
            port=port,
            certfile=tls.certfile,
            pkeyfile=tls.keyfile,
            cafile=tls.certfile,
        )
        self.service = kopf.WebhookClientConfigService(
            name=service_name, namespace=service_namespace, port=service_port, path=""
        )

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for config in super().__call__(fn):
            service_config = kopf.WebhookClientConfig(service=self.service)
            if "caBundle" in config:
                service_config["caBundle"] = config["caBundle"]
            yield service_config


def webhook_server(settings: OperatorSettings, *, pod_ip: str = "") -> kopf.WebhookServer | None:
    if not settings.webhook_enabled:
        return None
    cert_dir = Path(settings.webhook_cert_dir) if settings.webhook_cert_dir else None
    if cert_dir is not None and (cert_dir / "tls.crt").exists():
        certfile, keyfile = cert_dir / "tls.crt", cert_dir / "tls.key"
    elif not settings.webhook_config_managed:
        # The configuration's caBundle is the chart's: a pair of our own would be trusted by no one.
        raise ValueError(
            f"KPCAP_WEBHOOK_CERT_DIR: no tls.crt in {settings.webhook_cert_dir!r}; with"
            " KPCAP_WEBHOOK_CONFIG_MANAGED=false every replica must serve the chart's certificate"
        )
    else:
        names = ["localhost"]
        if settings.webhook_service:
            svc, ns = settings.webhook_service, settings.namespace
            names += [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
        ips = [ip for ip in {settings.webhook_host, pod_ip, "127.0.0.1"} if ip and is_ip_address(ip)]
        names += [h for h in (settings.webhook_host,) if h and not is_ip_address(h)]
        cert, key = self_signed_certificate(common_name="kpcap-webhook", dns_names=names, ip_addresses=ips)
        directory = Path(tempfile.mkdtemp(prefix="kpcap-webhook-"))
        certfile, keyfile = directory / "tls.crt", directory / "tls.key"
        certfile.write_bytes(cert)
        keyfile.write_bytes(key)
        keyfile.chmod(0o600)
    tls = _Tls(certfile=str(certfile), keyfile=str(keyfile))
    if settings.webhook_service:
        return ServiceWebhookServer(
            service_name=settings.webhook_service,
            service_namespace=settings.namespace,
            service_port=443,
            tls=tls,
            port=settings.webhook_port,
        )
    return kopf.WebhookServer(
        addr="0.0.0.0",  # noqa: S104 - the apiserver reaches it from outside the pod
        port=settings.webhook_port,
        host=settings.webhook_host or pod_ip or "127.0.0.1",
        certfile=tls.certfile,
        pkeyfile=tls.keyfile,
        cafile=tls.certfile,
    )


@dataclass(frozen=True, slots=True)
class _Tls:
    certfile: str
    keyfile: str
