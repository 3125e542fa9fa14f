"""``python -m kpcap_operator``: run the operator (and its webhook and metrics) until signalled."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from kpcap.kubeapi import load_api_client
from kpcap_operator.api import ApiSettings, start_api
from kpcap_operator.handlers import build_registry, configure_kopf
from kpcap_operator.kube import Kube
from kpcap_operator.samples import open_sampling
from kpcap_operator.settings import OperatorSettings, SettingsError
from kpcap_operator.webhook import webhook_server


def main() -> None:
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kube = Kube(load_api_client(), namespace=settings.namespace)
    try:
        sampling = open_sampling(settings=settings, kube=kube)
    except ValueError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    registry = build_registry(settings=settings, kube=kube, sampling=sampling)
    server = webhook_server(settings, pod_ip=settings.pod_ip)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: object) -> None:
        configure_kopf(kopf_settings=settings, webhook_server=server)

    api_port = settings.api_port
    if api_port is not None:
        api_runners: list[web.AppRunner] = []

        @kopf.on.startup(registry=registry)
        async def start_rest_api(**_: object) -> None:
            # In Kopf's event loop, with its own API client (the handlers' one is used from threads).
            api_runners.append(
                await start_api(
                    api=load_api_client(),
                    settings=ApiSettings.of(settings),
                    sample_store=sampling.store,
                    host=settings.api_host,
                    port=api_port,
                )
            )

        @kopf.on.cleanup(registry=registry)
        async def stop_rest_api(**_: object) -> None:
            while api_runners:
                await api_runners.pop().cleanup()

    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not settings.watch_namespaces,
            namespaces=list(settings.watch_namespaces),
            standalone=not settings.peering,
            peering_name=settings.peering or None,
            liveness_endpoint=settings.liveness_endpoint or None,
        )
    )


if __name__ == "__main__":
    main()
