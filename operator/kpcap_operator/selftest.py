"""`helm test` for the chart: the admission webhook, the REST API and every sampler answer.

    python -m kpcap_operator.selftest      # in the operator's image, as the chart's test Pod runs it

- Webhook: a server-side dry run creates a capture whose offsetTime is in the future, which only the
  webhook refuses (no schema or CEL rule knows the time); the refusal must come from it by name.
- REST API (when the chart enables it): it answers, in its own JSON envelope, through the
  apiserver's proxy to its Service (Service, endpoints and listener, without cluster DNS).
- Samplers: every node the sampler DaemonSet wants has a running pod whose /healthz answers over
  TLS with a certificate of the samplers' CA.

Each check prints one line; the exit status is 1 if any failed.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import API_VERSION, GROUP, KIND, PLURAL, VERSION, load_api_client, request_json

WEBHOOK_NAME = "validate.kpcap.io"
FUTURE = "2099-01-01T00:00:00Z"
TIMEOUT = 5.0
SAMPLER_SETTLE_SECONDS = 20.0
"""A sampler pod just started may not listen yet (right after `helm install` without --wait)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SelfTestSettings:
    namespace: str
    webhook: bool
    api_service: str  # "<scheme>:<service>:<port>" as the apiserver's proxy names it; empty: API off
    sampler_daemonset: str  # empty: the sampler is off
    sampler_port: int
    sampler_ca_file: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SelfTestSettings:
        return cls(
            namespace=env["KPCAP_NAMESPACE"],
            webhook=env.get("KPCAP_SELFTEST_WEBHOOK", "true") == "true",
            api_service=env.get("KPCAP_SELFTEST_API_SERVICE", ""),
            sampler_daemonset=env.get("KPCAP_SELFTEST_SAMPLER_DAEMONSET", ""),
            sampler_port=int(env.get("KPCAP_SAMPLER_PORT", "9444")),
            sampler_ca_file=env.get("KPCAP_SAMPLER_CA_FILE", ""),
        )


def webhook_probe(namespace: str) -> dict[str, Any]:
    """A capture only the webhook refuses (offsetTime in the future)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "kpcap-helm-test", "namespace": namespace},
        "spec": {"type": "simple", "timeLimit": 10, "packetLimit": 10, "offsetTime": FUTURE},
    }


def webhook_verdict(*, status: int | None, body: str) -> str | None:
    """None if the answer to the probe is the webhook's refusal naming the field, else what is wrong."""
    if status is None:
        return "the probe was admitted: the webhook did not run (failurePolicy Ignore and webhook down?)"
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = body
    if f'admission webhook "{WEBHOOK_NAME}" denied the request' in message and "spec.offsetTime" in message:
        return None
    return f"expected the webhook's refusal naming spec.offsetTime, got {status}: {message[:300]}"


def check_webhook(api: client.ApiClient, settings: SelfTestSettings) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{settings.namespace}/{PLURAL}"
    try:
        request_json(api, "POST", path, body=webhook_probe(settings.namespace), query=[("dryRun", "All")])
    except ApiException as err:
        body = err.body.decode() if isinstance(err.body, bytes) else str(err.body)
        problem = webhook_verdict(status=err.status, body=body)
    else:
        problem = webhook_verdict(status=None, body="")
    if problem:
        raise CheckFailedError(f"webhook: {problem}")
    return f"webhook: {WEBHOOK_NAME} refused the probe naming spec.offsetTime"


def _tls(ca_file: str) -> ssl.SSLContext:
    if ca_file:
        context = ssl.create_default_context(cafile=ca_file)
        # Each sampler's certificate names its node, not the address we dial.
        context.check_hostname = False
        return context
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _get(url: str, *, tls: ssl.SSLContext | None) -> int:
    """The HTTP status of GET ``url`` (an error status counts: the server answered)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT, context=tls) as answer:  # noqa: S310 - our URLs
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def api_verdict(*, status: int, body: str) -> str | None:
    """None if ``body`` is the API's own answer (its JSON envelope: the apiserver's proxy sends no
    caller token, so 401 is the expected one), else what is wrong."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "success" in answer and "errors" in answer:
        return None
    return f"expected the API's JSON envelope, got {status}: {body[:300]}"


def check_api(api: client.ApiClient, settings: SelfTestSettings) -> str:
    path = (
        f"/api/v1/namespaces/{settings.namespace}/services/{settings.api_service}/proxy"
        f"/client/v4/accounts/{settings.namespace}/pcaps"
    )
    try:
        answer = request_json(api, "GET", path)
        status, body = 200, json.dumps(answer)
    except ApiException as err:
        status, body = int(err.status), err.body.decode() if isinstance(err.body, bytes) else str(err.body)
    problem = api_verdict(status=status, body=body)
    if problem:
        raise CheckFailedError(f"REST API: {settings.api_service}: {problem}")
    return f"REST API: {settings.api_service} answered ({status}, its own envelope)"


def sampler_addresses(pods: list[Mapping[str, Any]]) -> dict[str, str]:
    """Node -> address of each running sampler pod."""
    return {
        pod["spec"]["nodeName"]: pod["status"]["podIP"]
        for pod in pods
        if (pod.get("status") or {}).get("phase") == "Running" and (pod.get("status") or {}).get("podIP")
    }


def _healthy(address: str, port: int, tls: ssl.SSLContext) -> bool:
    host = f"[{address}]" if ":" in address else address
    try:
        return _get(f"https://{host}:{port}/healthz", tls=tls) == 200
    except OSError:
        return False


def check_samplers(api: client.ApiClient, settings: SelfTestSettings) -> str:
    base = f"/apis/apps/v1/namespaces/{settings.namespace}/daemonsets/{settings.sampler_daemonset}"
    daemonset = request_json(api, "GET", base)
    wanted = int((daemonset.get("status") or {}).get("desiredNumberScheduled") or 0)
    selector = ",".join(f"{k}={v}" for k, v in daemonset["spec"]["selector"]["matchLabels"].items())
    pods = request_json(
        api, "GET", f"/api/v1/namespaces/{settings.namespace}/pods", query=[("labelSelector", selector)]
    )
    addresses = sampler_addresses(pods.get("items") or [])
    if wanted == 0 or len(addresses) < wanted:
        raise CheckFailedError(
            f"samplers: {len(addresses)} of {wanted} wanted are running"
            " (pods refused? see `kubectl describe daemonset` and the namespace's PodSecurity label)"
        )
    tls = _tls(settings.sampler_ca_file)
    silent = sorted(addresses)
    deadline = time.monotonic() + SAMPLER_SETTLE_SECONDS
    while silent:
        silent = [node for node in silent if not _healthy(addresses[node], settings.sampler_port, tls)]
        if not silent or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if silent:
        raise CheckFailedError(f"samplers: no answer from {', '.join(silent)}")
    return f"samplers: {len(addresses)}/{wanted} answered /healthz over TLS"


class CheckFailedError(Exception):
    """One check's failure; the message says what and where."""


def main() -> int:
    settings = SelfTestSettings.from_env(os.environ)
    api = load_api_client()
    checks: list[Callable[[], str]] = []
    if settings.webhook:
        checks.append(lambda: check_webhook(api, settings))
    if settings.api_service:
        checks.append(lambda: check_api(api, settings))
    if settings.sampler_daemonset:
        checks.append(lambda: check_samplers(api, settings))
    failed = 0
    for check in checks:
        try:
            print(f"ok   {check()}")
        except (CheckFailedError, ApiException) as err:
            failed += 1
            print(f"FAIL {err}")
    print(json.dumps({"checks": len(checks), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
