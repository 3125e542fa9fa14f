"""``python -m kpcap_operator``: run the operator (and its webhook and metrics) until signalled."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from kpcap_operator.api import ApiSettings, start_api
from kpcap_operator.handlers import build_registry, configure_kopf
from kpcap_operator.kube import Kube, load_client
from kpcap_operator.samples import open_sampling
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
    try:
        sampling = open_sampling(settings=settings, kube=kube)
    except ValueError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    registry = build_registry(settings=settings, kube=kube, sampling=sampling)
    server = webhook_server(settings, pod_ip=os.environ.get("KPCAP_POD_IP", ""))

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: object) -> None:
        configure_kopf(kopf_settings=settings, webhook_server=server)

    api_port = _api_port()
    if api_port is not None:
        api_runners: list[web.AppRunner] = []

        @kopf.on.startup(registry=registry)
        async def start_rest_api(**_: object) -> None:
            # In Kopf's event loop, with its own API client (the handlers' one is used from threads).
            api_settings = ApiSettings(
                operator_namespace=settings.namespace,
                simple_rate_window_seconds=settings.simple_rate_window_seconds,
            )
            host = os.environ.get("KPCAP_API_HOST", "")
            api_runners.append(
                await start_api(
                    api=load_client(),
                    settings=api_settings,
                    sample_store=sampling.store,
                    host=host,
                    port=api_port,
                )
            )

        @kopf.on.cleanup(registry=registry)
        async def stop_rest_api(**_: object) -> None:
            while api_runners:
                await api_runners.pop().cleanup()

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


def _api_port() -> int | None:
    """KPCAP_API_PORT: serve the REST API on this port (unset or empty: no API)."""
    raw = os.environ.get("KPCAP_API_PORT", "")
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        sys.exit(f"kpcap-operator: configuration error: KPCAP_API_PORT: must be 1 to 65535, got {raw!r}")
    return int(raw)


if __name__ == "__main__":
    main()
