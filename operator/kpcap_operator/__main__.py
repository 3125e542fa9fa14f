"""``python -m kpcap_operator``: run the operator (and its webhook and metrics) until signalled."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import kopf
from prometheus_client import start_http_server

from kpcap_operator.handlers import build_registry, configure_kopf
from kpcap_operator.kube import Kube, load_client
from kpcap_operator.settings import OperatorSettings, SettingsError
from kpcap_operator.webhook import webhook_server


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("KPCAP_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    kube = Kube(load_client(), namespace=settings.namespace)
    registry = build_registry(settings=settings, kube=kube)
    server = webhook_server(settings, pod_ip=os.environ.get("KPCAP_POD_IP", ""))

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: object) -> None:
        configure_kopf(kopf_settings=settings, webhook_server=server)

    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    namespaces = [n for n in os.environ.get("KPCAP_WATCH_NAMESPACES", "").split(",") if n]
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=os.environ.get("KPCAP_PEERING", "") == "",
            peering_name=os.environ.get("KPCAP_PEERING") or None,
            liveness_endpoint=os.environ.get("KPCAP_LIVENESS_ENDPOINT") or None,
        )
    )


if __name__ == "__main__":
    main()
