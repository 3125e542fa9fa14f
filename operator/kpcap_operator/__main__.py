"""``python -m kpcap_operator``: run the operator (and its webhook and metrics) until signalled."""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from kpcap.kubeapi import load_api_client
from kpcap.logformat import configure_logging
from kpcap_operator.api import ApiSettings, api_tls_files, start_api
from kpcap_operator.handlers import build_registry, configure_kopf
from kpcap_operator.kube import Kube
from kpcap_operator.leader import LeaseElector
from kpcap_operator.readiness import register_readiness
from kpcap_operator.samples import open_sampling
from kpcap_operator.settings import OperatorSettings, SettingsError
from kpcap_operator.webhook import webhook_server


def main() -> None:
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    configure_logging(level=settings.log_level, log_format=settings.log_format)
    kube = Kube(load_api_client(), namespace=settings.namespace)
    try:
        sampling = open_sampling(settings=settings, kube=kube)
    except ValueError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    elector = _leader_elector(settings)
    registry = build_registry(settings=settings, kube=kube, sampling=sampling, leadership=elector)
    try:
        server = webhook_server(settings, pod_ip=settings.pod_ip)
    except ValueError as err:
        sys.exit(f"kpcap-operator: configuration error: {err}")
    manage_webhook_config = settings.webhook_config_managed

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: object) -> None:
        configure_kopf(
            kopf_settings=settings, webhook_server=server, manage_webhook_config=manage_webhook_config
        )

    if elector is not None:
        elector.start()

        @kopf.on.cleanup(registry=registry)
        def hand_over_leadership(**_: object) -> None:
            elector.stop()

    api_port = settings.api_port
    if api_port is not None:
        api_runners: list[web.AppRunner] = []
        try:
            api_tls = api_tls_files(settings)
        except ValueError as err:
            sys.exit(f"kpcap-operator: configuration error: {err}")

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
                    tls=api_tls,
                )
            )

        @kopf.on.cleanup(registry=registry)
        async def stop_rest_api(**_: object) -> None:
            while api_runners:
                await api_runners.pop().cleanup()

    if settings.readiness_port:
        register_readiness(registry=registry, settings=settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not settings.watch_namespaces,
            namespaces=list(settings.watch_namespaces),
            # Kopf runs standalone in every replica: the leader Lease (leader.py) gates reconciling.
            standalone=True,
            liveness_endpoint=settings.liveness_endpoint or None,
        )
    )


def _leader_elector(settings: OperatorSettings) -> LeaseElector | None:
    if not settings.leader_lease:
        return None
    # The pod's name and a per-process suffix: a restarted container is a new candidate, not the
    # holder of its predecessor's Lease (which may still be counted live by the others).
    identity = f"{settings.pod_name or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return LeaseElector(
        api=load_api_client(), namespace=settings.namespace, name=settings.leader_lease, identity=identity
    )


if __name__ == "__main__":
    main()
