"""The sampler's authorisation (kpcap_agent.sampler_auth): an unreachable apiserver, and real
TokenReviews against the local cluster's apiserver (``e2e``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kpcap.pcap import Record
from kpcap_agent.sampler import SamplerConfig
from kpcap_agent.sampler_auth import Refused, TokenReviewAuthoriser
from kpcap_agent.sampler_service import SamplerService
from kpcap_agent.sampler_settings import SamplerServiceConfig
from kpcap_agent.sources import MemorySource
from tests.agent.sampler_calls import (
    CLIENT,
    NS,
    SIMPLE_SPEC,
    pcap_records,
    query,
    request,
    udp,
)
from tests.support.waiting import wait_for


def test_tokenreview_authoriser_answers_503_when_the_apiserver_is_unreachable() -> None:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # nothing listens there
    configuration.retries = 0
    authoriser = TokenReviewAuthoriser(
        api_client=client.ApiClient(configuration), audience="kpcap-sampler", allowed_user=CLIENT
    )
    with pytest.raises(Refused) as refused:
        authoriser.authorise("some-token")
    assert refused.value.status == 503
    assert "apiserver is unreachable" in refused.value.message


# --- real TokenReviews (the local cluster's apiserver) -------------------------------------------

AUDIENCE = "kpcap-sampler"


def sa_token(core: client.CoreV1Api, namespace: str, name: str, audiences: list[str]) -> str:
    request_body = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences, expiration_seconds=600)
    )
    return str(core.create_namespaced_service_account_token(name, namespace, request_body).status.token)


@dataclass
class Cluster:
    service: SamplerService
    authoriser: TokenReviewAuthoriser
    tokens: dict[str, str]
    allowed_user: str


@pytest.fixture
def reviewed_service(local_cluster: Any, namespace: str, core: client.CoreV1Api) -> Iterator[Cluster]:
    """A sampler whose own ServiceAccount may only create TokenReviews, as the chart's."""
    for name in ("sampler", "operator", "other"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac = client.RbacAuthorizationV1Api(local_cluster.api_client())
    role = f"kpcap-sampler-test-{namespace}"
    rbac.create_cluster_role(
        {
            "metadata": {"name": role},
            "rules": [
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "sampler", "namespace": namespace}],
        }
    )
    try:
        allowed_user = f"system:serviceaccount:{namespace}:operator"
        authoriser = TokenReviewAuthoriser(
            api_client=local_cluster.token_client(sa_token(core, namespace, "sampler", [])),
            audience=AUDIENCE,
            allowed_user=allowed_user,
        )
        tokens = {
            "operator": sa_token(core, namespace, "operator", [AUDIENCE]),
            "operator-apiserver-audience": sa_token(core, namespace, "operator", []),
            "operator-other-audience": sa_token(core, namespace, "operator", ["something-else"]),
            "other": sa_token(core, namespace, "other", [AUDIENCE]),
        }
        now = time.time_ns()
        frames = [Record.at(timestamp_ns=now - i * NS, data=udp(dport=5555, marker=i)) for i in range(5)]
        config = SamplerServiceConfig(
            node_name="node-1",
            sampler=SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20),
            client=allowed_user,
            host="127.0.0.1",
            port=0,
        )
        with SamplerService(
            config=config, source=MemorySource(frames=frames), authoriser=authoriser
        ) as service:
            wait_for(lambda: service.ring.stats().offered == 5, timeout=10, what="frames offered")
            yield Cluster(service=service, authoriser=authoriser, tokens=tokens, allowed_user=allowed_user)
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


@pytest.mark.e2e
def test_tokenreview_with_audiences_on_the_apiserver(reviewed_service: Cluster, local_cluster: Any) -> None:
    """What the apiserver answers a TokenReview with spec.audiences (the sampler relies on it)."""
    api = client.AuthenticationV1Api(local_cluster.api_client())

    def review(token: str) -> Any:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[AUDIENCE]))
        return api.create_token_review(body).status

    good = review(reviewed_service.tokens["operator"])
    assert good.authenticated is True
    assert good.audiences == [AUDIENCE]
    assert good.user.username == reviewed_service.allowed_user
    other_audience = review(reviewed_service.tokens["operator-apiserver-audience"])
    assert not other_audience.authenticated
    assert other_audience.error


@pytest.mark.e2e
def test_only_the_allowed_client_with_the_sampler_audience_gets_samples(
    reviewed_service: Cluster, tmp_path: Path
) -> None:
    service, tokens = reviewed_service.service, reviewed_service.tokens
    allowed = query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=2**62, token=tokens["operator"])
    assert allowed.status == 200, allowed.body
    assert len(pcap_records(allowed.body, tmp_path)) == 5

    for name in ("operator-apiserver-audience", "operator-other-audience"):
        wrong_audience = query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens[name])
        assert wrong_audience.status == 401, (name, wrong_audience.body)
        assert "audience 'kpcap-sampler'" in wrong_audience.json()["error"]

    other = query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens["other"])
    assert other.status == 403, other.body
    assert "other may not query the sampler" in other.json()["error"]

    body = json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1}).encode()
    assert request(service, "POST", "/v1/samples", body=body).status == 401
    forged = tokens["operator"][:-8] + ("A" * 8 if not tokens["operator"].endswith("A" * 8) else "B" * 8)
    assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=forged).status == 401
    assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token="not-a-jwt").status == 401


@pytest.mark.e2e
def test_allowed_tokens_are_cached_and_refusals_are_not(reviewed_service: Cluster) -> None:
    service, authoriser, tokens = (
        reviewed_service.service,
        reviewed_service.authoriser,
        reviewed_service.tokens,
    )
    before = authoriser.reviews_made
    for _ in range(3):
        assert (
            query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens["operator"]).status == 200
        )
    assert authoriser.reviews_made - before <= 1
    before = authoriser.reviews_made
    for _ in range(2):
        assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens["other"]).status == 403
    assert authoriser.reviews_made - before == 2
