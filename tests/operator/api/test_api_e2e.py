"""The REST API served by the operator process, on the local cluster, with real auth and real buckets.

Callers are ServiceAccounts with tokens from the TokenRequest API and Roles/RoleBindings made here;
the clients are the official ``cloudflare`` SDK (unchanged, ``base_url`` pointed at us), curl as in
the upstream docs, and a hypothesis property test that throws random requests at the API.
"""

from __future__ import annotations

import io
import json
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudflare
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client
from scapy.utils import PcapNgReader, PcapReader

from kpcap.pcap import PcapRecords
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.install import Samplers
from kpcap_localcluster.ports import free_port
from tests.support.api_tls import api_tls, tls_dir, tls_env
from tests.support.captures import Captures
from tests.support.kpcap_install import CREDENTIALS_SECRET, OPERATOR_NAMESPACE
from tests.support.operator import RunningOperator, operator_fixture
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

AGENT_IMAGE = "registry.example/kpcap/kpcap-agent:test"
MERGECAP = "/usr/bin/mergecap"
WRITER_VERBS = ["get", "list", "watch", "create", "patch"]
READER_VERBS = ["get", "list", "watch"]


API_PORT = free_port()
BASE_URL = f"https://127.0.0.1:{API_PORT}/client/v4"
TLS_DIR = tls_dir(API_PORT)
"""The API's pair (signed by the chart's CA) and that CA: written by the operator fixture."""
CA_FILE = TLS_DIR / "ca.crt"
READINESS_PORT, HEALTH_PORT = free_port(), free_port()


_api_operator = operator_fixture(
    webhook=False,
    agent_image=AGENT_IMAGE,
    extra_env={
        "KPCAP_AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
        "KPCAP_API_PORT": str(API_PORT),
        "KPCAP_API_HOST": "127.0.0.1",
        **tls_env(TLS_DIR),
        "KPCAP_LOG_FORMAT": "json",
        "KPCAP_READINESS_PORT": str(READINESS_PORT),
        "KPCAP_LIVENESS_ENDPOINT": f"http://127.0.0.1:{HEALTH_PORT}/healthz",
        # The operator's own storage credentials (challenge files, downloads): the standard chain.
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    },
)


@pytest.fixture(scope="module")
def operator(
    storage_credentials: LocalCluster, samplers: Samplers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    del samplers  # running on every node: simple captures answer from past traffic
    api_tls(TLS_DIR)
    try:
        for running in _api_operator(storage_credentials, tmp_path_factory):
            wait_for(lambda: _answers(f"{BASE_URL}/openapi.json"), timeout=30, what="the API to listen")
            yield running
    finally:
        shutil.rmtree(TLS_DIR, ignore_errors=True)


def verify() -> ssl.SSLContext:
    """Clients verify the API with the chart's CA."""
    return ssl.create_default_context(cafile=str(CA_FILE))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, verify=verify()).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Account:
    """A namespace with a writer and a read-only ServiceAccount (tokens from the TokenRequest API)."""

    name: str
    writer: str
    reader: str


def _token(core: client.CoreV1Api, namespace: str, name: str) -> str:
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    return str(core.create_namespaced_service_account_token(name, namespace, request).status.token)


def _grant(cluster: LocalCluster, namespace: str, sa: str, verbs: list[str]) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api_client())
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": sa},
            "rules": [{"apiGroups": ["kpcap.io"], "resources": ["packetcaptures"], "verbs": verbs}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    )


@pytest.fixture
def account(operator: RunningOperator, namespace: str, core: client.CoreV1Api) -> Account:
    writer, reader = _token(core, namespace, "writer"), _token(core, namespace, "reader")
    _grant(operator.cluster, namespace, "writer", WRITER_VERBS)
    _grant(operator.cluster, namespace, "reader", READER_VERBS)
    return Account(namespace, writer, reader)


def sdk(token: str) -> cloudflare.Cloudflare:
    # The SDK's own httpx client, told the chart's CA (its only TLS setting).
    http_client = cloudflare.DefaultHttpxClient(verify=verify())
    return cloudflare.Cloudflare(api_token=token, base_url=BASE_URL, max_retries=2, http_client=http_client)


def call(method: str, path: str, token: str | None, body: Any = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    headers.update(kwargs.pop("headers", {}))
    if body is not None and not isinstance(body, bytes | str):
        kwargs["json"] = body
    elif body is not None:
        kwargs["content"] = body
    return httpx.request(method, f"{BASE_URL}{path}", headers=headers, timeout=30, verify=verify(), **kwargs)


def assert_failure(response: httpx.Response, status: int, text: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    envelope: dict[str, Any] = response.json()
    assert envelope["success"] is False
    assert envelope["result"] is None
    assert envelope["messages"] == []
    assert envelope["errors"]
    assert all(e["code"] >= 1000 for e in envelope["errors"])
    assert any(text in e["message"] for e in envelope["errors"]), envelope
    return envelope


SIMPLE = {"type": "simple", "system": "magic-transit", "time_limit": 5, "packet_limit": 10}


# --- authentication and authorisation --------------------------------------------------------


def test_tokens_and_rbac_decide(account: Account, operator: RunningOperator, core: client.CoreV1Api) -> None:
    ns = account.name
    other = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": other}})
    try:
        assert_failure(call("GET", f"/accounts/{ns}/pcaps", None), 401, "Authentication error")
        assert_failure(
            call("GET", f"/accounts/{ns}/pcaps", "forged.token.value"), 401, "Authentication error"
        )
        assert_failure(
            call("GET", f"/accounts/{ns}/pcaps", None, headers={"Authorization": "Basic eDp5"}), 401, "Bearer"
        )
        # Allowed in its own namespace only.
        assert_failure(call("GET", f"/accounts/{other}/pcaps", account.writer), 403, "Forbidden")
        assert_failure(call("POST", f"/accounts/{other}/pcaps", account.writer, SIMPLE), 403, "Forbidden")
        listed = call("GET", f"/accounts/{ns}/pcaps", account.writer)
        assert listed.status_code == 200
        assert listed.json() == {
            "result": [],
            "success": True,
            "errors": [],
            "messages": [],
            "result_info": {"count": 0, "page": 1, "per_page": 50, "total_count": 0},
        }
        # Read-only: list and get yes, create/stop/ownership no.
        assert call("GET", f"/accounts/{ns}/pcaps", account.reader).status_code == 200
        assert_failure(call("POST", f"/accounts/{ns}/pcaps", account.reader, SIMPLE), 403, "may not create")
        created = call("POST", f"/accounts/{ns}/pcaps", account.writer, SIMPLE).json()["result"]
        got = call("GET", f"/accounts/{ns}/pcaps/{created['id']}", account.reader)
        assert got.json()["result"]["id"] == created["id"]
        assert_failure(
            call("PUT", f"/accounts/{ns}/pcaps/{created['id']}/stop", account.reader), 403, "may not patch"
        )
        assert_failure(
            call(
                "POST", f"/accounts/{ns}/pcaps/ownership", account.reader, {"destination_conf": "s3://bkt/x"}
            ),
            403,
            "Forbidden",
        )
        # A token of a ServiceAccount that was deleted is refused.
        core.delete_namespaced_service_account("reader", ns)
        time.sleep(11)  # past the API's TokenReview cache
        assert_failure(call("GET", f"/accounts/{ns}/pcaps", account.reader), 401, "Authentication error")
    finally:
        core.delete_namespace(other)


# --- the official SDK -------------------------------------------------------------------------


SNAP_LENGTH = 42 + 10


def test_sdk_simple_capture_flow(account: Account, operator: RunningOperator) -> None:
    cf = sdk(account.writer)
    ns = account.name
    cluster = operator.cluster
    target = cluster.node("kpcap-node-2").address
    marker = f"sdk-simple-{ns}"
    _send(cluster, src="kpcap-node-1", dst="kpcap-node-2", port=53, count=12, payload=marker)
    _send(cluster, src="kpcap-node-1", dst="kpcap-node-2", port=54, count=12, payload=f"{marker}-other")
    time.sleep(0.5)
    started = time.monotonic()
    created = cf.magic_transit.pcaps.create(
        account_id=ns,
        type="simple",
        system="magic-transit",
        time_limit=60,
        packet_limit=100,
        filter_v1={"destination_address": target, "protocol": 17, "destination_port": 53},
        # snap_length: kpcap's extension; Ethernet, IPv4 and UDP headers and 10 payload bytes.
        extra_body={"snap_length": SNAP_LENGTH},
    )
    pcap_id = created.id  # type: ignore[union-attr]
    assert len(pcap_id) == 32
    assert created.status in {"pending", "success"}  # type: ignore[union-attr]

    def finished() -> Any:
        got = cf.magic_transit.pcaps.get(pcap_id, account_id=ns)
        return got if got.status != "pending" else None  # type: ignore[union-attr]

    got = wait_for(finished, timeout=10, interval=0.05, what="the simple capture to finish")
    elapsed = time.monotonic() - started
    assert got.status == "success", got
    assert elapsed < 2.0, f"{elapsed:.2f} s from the create call to success"
    assert got.filter_v1.destination_port == 53
    assert got.model_dump()["snap_length"] == SNAP_LENGTH  # type: ignore[union-attr]
    listed = list(cf.magic_transit.pcaps.list(account_id=ns))
    assert [c.id for c in listed] == [pcap_id]
    cf.magic_transit.pcaps.stop(pcap_id, account_id=ns)  # 204 (already finished: nothing to do)
    downloaded = cf.magic_transit.pcaps.download.get(pcap_id, account_id=ns).read()
    # Sent by node 1 (sampled leaving) and received by node 2 (sampled arriving); nothing else.
    assert udp_payloads(downloaded) == [(53, marker.encode()[:10])] * 24
    wire_length = 42 + len(marker)
    assert {(r.captured_length, r.original_length) for r in PcapRecords([downloaded])} == {
        (SNAP_LENGTH, wire_length)
    }
    assert sdk(account.reader).magic_transit.pcaps.download.get(pcap_id, account_id=ns).read() == downloaded
    started = time.monotonic()
    with pytest.raises(cloudflare.RateLimitError, match="only one simple capture is allowed") as caught:
        cf.magic_transit.pcaps.create(
            account_id=ns, type="simple", system="magic-transit", time_limit=5, packet_limit=5
        )
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert time.monotonic() - started < 5, "the SDK must not retry a rule refusal"
    with pytest.raises(cloudflare.NotFoundError, match="pcap_id"):
        cf.magic_transit.pcaps.get("0" * 32, account_id=ns)
    with pytest.raises(
        cloudflare.BadRequestError, match="time_limit: must be an integer from 1 to 300, got 0"
    ):
        cf.magic_transit.pcaps.create(
            account_id=ns, type="simple", system="magic-transit", time_limit=0, packet_limit=5
        )
    with pytest.raises(cloudflare.AuthenticationError):
        sdk("not-a-token").magic_transit.pcaps.list(account_id=ns).result  # noqa: B018


def _s3(cluster: LocalCluster) -> Any:
    assert cluster.s3 is not None
    return cluster.s3.s3_client()


def _send(cluster: LocalCluster, *, src: str, dst: str, port: int, count: int, payload: str) -> None:
    argv = [sys.executable, "-m", "kpcap_localcluster.traffic", "send", "--dst", cluster.node(dst).address]
    argv += ["--port", str(port), "--count", str(count), "--payload", payload, "--interval", "0.002"]
    cluster.run_in_node(src, argv)


def test_sdk_ownership_full_capture_and_merged_download(
    account: Account, operator: RunningOperator, tmp_path: Path
) -> None:
    cluster = operator.cluster
    assert cluster.s3 is not None
    s3 = _s3(cluster)
    bucket = f"kpcap-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    destination = f"s3://{bucket}/captures?region=us-east-1&endpoint={cluster.s3.endpoint}"
    cf = sdk(account.writer)
    ns = account.name
    full = {
        "account_id": ns,
        "type": "full",
        "system": "magic-transit",
        "time_limit": 15,
        "packet_limit": 1000,
        "destination_conf": destination,
        "filter_v1": {"protocol": 17, "destination_port": 7777},
    }
    with pytest.raises(cloudflare.BadRequestError, match="is not validated for account"):
        cf.magic_transit.pcaps.create(**full, colo_name="colo-a")  # type: ignore[arg-type]
    assert list(cf.magic_transit.pcaps.list(account_id=ns)) == [], "nothing was created"

    # Ownership: the challenge file is in the bucket; a wrong answer is refused, the right one validates.
    owned = cf.magic_transit.pcaps.ownership.create(account_id=ns, destination_conf=destination)
    assert owned is not None
    assert owned.status == "pending"
    challenge = s3.get_object(Bucket=bucket, Key=f"captures/{owned.filename}")["Body"].read().decode()
    with pytest.raises(cloudflare.BadRequestError, match="ownership_challenge: does not match"):
        cf.magic_transit.pcaps.ownership.validate(
            account_id=ns, destination_conf=destination, ownership_challenge="wrong"
        )
    done = cf.magic_transit.pcaps.ownership.validate(
        account_id=ns, destination_conf=destination, ownership_challenge=challenge
    )
    assert done is not None
    assert done.status == "success"
    assert done.validated
    assert [o.id for o in cf.magic_transit.pcaps.ownership.get(account_id=ns)] == [owned.id]

    # A full capture on all three nodes (node_selector: kpcap's extension, via the SDK's extra_body).
    created = cf.magic_transit.pcaps.create(
        **full, extra_body={"node_selector": {"kubernetes.io/os": "linux"}}
    )  # type: ignore[arg-type]
    pcap_id = created.id  # type: ignore[union-attr]
    with pytest.raises(cloudflare.RateLimitError, match="only one pending or running full capture"):
        cf.magic_transit.pcaps.create(**full, colo_name="colo-a")  # type: ignore[arg-type]
    captures = Captures(cluster, ns)
    name = created.name  # type: ignore[union-attr]
    try:
        wait_for(
            lambda: len(captures.status(name).get("nodes") or {}) == 3,
            timeout=90,
            what="three agents to report",
        )
    except BaseException:
        print(captures.status(name))
        print(cluster.pod_logs(namespace=OPERATOR_NAMESPACE, pod="kpcap-capture-*"))
        raise
    marker = f"m-{secrets.token_hex(6)}"
    _send(cluster, src="kpcap-node-3", dst="kpcap-node-1", port=7777, count=20, payload=marker)
    _send(cluster, src="kpcap-node-1", dst="kpcap-node-2", port=7777, count=20, payload=marker)
    _send(cluster, src="kpcap-node-2", dst="kpcap-node-3", port=7777, count=20, payload=marker)

    def finished() -> Any:
        got = cf.magic_transit.pcaps.get(pcap_id, account_id=ns)
        return got if got.status in {"success", "failed"} else None  # type: ignore[union-attr]

    got = wait_for(finished, timeout=90, what="the full capture to finish")
    assert got.status == "success", got
    files = captures.status(name)["files"]
    assert len(files) == 3

    downloaded = cf.magic_transit.pcaps.download.get(pcap_id, account_id=ns).read()
    paths = []
    for index, uri in enumerate(files):
        key = uri.removeprefix(f"s3://{bucket}/")
        path = tmp_path / f"{index}.pcap"
        path.write_bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        paths.append(str(path))
    # The agents write nanosecond PCAPs, and so does the merge (mergecap's "nsecpcap").
    theirs = subprocess.run(
        [MERGECAP, "-F", "nsecpcap", "-w", "-", *paths], check=True, capture_output=True
    ).stdout
    assert downloaded == theirs
    # And the same packets as mergecap's default (pcapng) output, in timestamp order.
    default = subprocess.run([MERGECAP, "-w", "-", *paths], check=True, capture_output=True).stdout
    ours = [(p.time, bytes(p)) for p in PcapReader(io.BytesIO(downloaded))]
    assert ours == [(p.time, bytes(p)) for p in PcapNgReader(io.BytesIO(default))]
    assert len(ours) == got.packets_captured >= 60
    assert [t for t, _ in ours] == sorted(t for t, _ in ours)

    cf.magic_transit.pcaps.ownership.delete(owned.id, account_id=ns)
    assert list(cf.magic_transit.pcaps.ownership.get(account_id=ns)) == []
    with pytest.raises(cloudflare.NotFoundError, match="ownership_id"):
        cf.magic_transit.pcaps.ownership.delete(owned.id, account_id=ns)


# --- curl, as in the upstream docs ------------------------------------------------------------


def curl(*argv: str | Path) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "--silent", "--show-error", "--cacert", CA_FILE, "--write-out", "\n%{http_code}", *argv],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def test_curl_as_in_the_upstream_docs(account: Account, operator: RunningOperator, tmp_path: Path) -> None:
    ns, token = account.name, account.writer
    auth = f"Authorization: Bearer {token}"
    code, body = curl(
        f"{BASE_URL}/accounts/{ns}/pcaps",
        "--request",
        "POST",
        "--header",
        "Content-Type: application/json",
        "--header",
        auth,
        "--data",
        json.dumps(
            {
                "filter_v1": {
                    "source_address": "198.51.100.7",
                    "protocol": 6,
                    "destination_port": 80,
                },
                "time_limit": 300,
                "packet_limit": 10000,
                "type": "simple",
                "system": "magic-transit",
            }
        ),
    )
    assert code == 200, body
    created = json.loads(body)["result"]
    code, body = curl(f"{BASE_URL}/accounts/{ns}/pcaps/{created['id']}", "--header", auth)
    assert code == 200
    assert json.loads(body)["result"]["filter_v1"]["source_address"] == "198.51.100.7"
    code, body = curl(f"{BASE_URL}/accounts/{ns}/pcaps", "--header", auth)
    assert [c["id"] for c in json.loads(body)["result"]] == [created["id"]]
    code, body = curl(f"{BASE_URL}/accounts/{ns}/pcaps/ownership", "--header", auth)
    assert (code, json.loads(body)["result"]) == (200, [])
    code, _ = curl(
        f"{BASE_URL}/accounts/{ns}/pcaps/{created['id']}/stop", "--request", "PUT", "--header", auth
    )
    assert code == 204
    wait_for(
        lambda: (
            json.loads(curl(f"{BASE_URL}/accounts/{ns}/pcaps/{created['id']}", "--header", auth)[1])[
                "result"
            ]["status"]
            == "success"
        ),
        timeout=10,
        what="the simple capture to succeed",
    )
    # As upstream documents it: curl .../download --output download.pcap
    output = tmp_path / "download.pcap"
    code, _ = curl(
        f"{BASE_URL}/accounts/{ns}/pcaps/{created['id']}/download", "--header", auth, "--output", str(output)
    )
    assert code == 200
    assert list(PcapReader(str(output))) == [], "nothing matched that filter in this cluster"


# --- bad requests ---------------------------------------------------------------------------------


def test_bad_requests_get_4xx_naming_the_field_and_create_nothing(
    account: Account, operator: RunningOperator
) -> None:
    ns, token = account.name, account.writer
    path = f"/accounts/{ns}/pcaps"
    assert_failure(call("POST", path, token, "{not json"), 400, "malformed JSON")
    assert_failure(call("POST", path, token, ""), 400, "request body")
    assert_failure(call("POST", path, token, b"x" * (65 * 1024)), 413, "at most 65536 bytes")
    assert_failure(call("POST", path, token, "[" * 30000 + "]" * 30000), 400, "request body")
    for field, value, text in [
        ("time_limit", 301, "time_limit: must be an integer from 1 to 300"),
        ("time_limit", "10", "time_limit: must be an integer"),
        ("packet_limit", 0, "packet_limit: must be an integer from 1 to 10000"),
        ("packet_limit", True, "packet_limit: must be an integer"),
        ("byte_limit", 5, "byte_limit: only allowed when type is 'full'"),
        ("offset_time", "yesterday", "offset_time: must be an RFC 3339 timestamp"),
        ("filter_v1", {"protocol": 256}, "filter_v1.protocol: must be an integer from 0 to 255"),
        ("filter_v1", {"source_address": "10.0.0.300"}, "filter_v1.source_address: must be an IPv4"),
        ("colo_name", "", "colo_name: must be a label value"),
        ("surprise", 1, "surprise: unknown field"),
    ]:
        assert_failure(call("POST", path, token, {**SIMPLE, field: value}), 400, text)
    assert_failure(call("GET", f"{path}/{'a' * 32}", token), 404, "pcap_id: no capture with id")
    assert_failure(call("GET", f"{path}/nope", token), 404, "pcap_id: must be a capture id")
    assert_failure(call("GET", f"{path}/{'a' * 32}/download", token), 404, "pcap_id")
    assert_failure(call("PUT", f"{path}/{'a' * 32}/stop", token), 404, "pcap_id")
    assert_failure(call("DELETE", path, token), 405, "not allowed")
    assert_failure(call("GET", "/accounts/x/elsewhere", token), 404, "no such path")
    assert_failure(
        call("POST", f"{path}/ownership", token, {"destination_conf": "ftp://x"}), 400, "destination_conf"
    )
    assert_failure(call("POST", f"{path}/ownership", token, {"bucket": "x"}), 400, "bucket: unknown field")
    assert_failure(
        call(
            "POST",
            f"{path}/ownership/validate",
            token,
            {"destination_conf": "s3://bkt/x", "ownership_challenge": "x"},
        ),
        404,
        "no ownership challenge",
    )
    assert call("GET", path, token).json()["result"] == [], "nothing was created"


# --- property: no 5xx whatever is sent ------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_CREATE_FIELDS = ["type", "system", "time_limit", "packet_limit", "byte_limit", "colo_name", "colo"]
_CREATE_FIELDS += ["destination_conf", "offset_time", "filter_v1", "node_selector", "snap_length"]
_field_values = st.one_of(
    _json,
    # Destinations only at the test S3 server (a bucket that does not exist there: a 400), never at
    # real clouds: nothing may leave the machine, and an unreachable store is rightly a 503.
    st.sampled_from(["simple", "full", "magic-transit", "host-network", "colo-a", "{s3}"]),
    st.integers(-5, 400),
    st.fixed_dictionaries(
        {},
        optional={k: _json | st.integers(-1, 70000) for k in ["source_address", "source_port", "protocol"]},
    ),
)
_bodies = st.one_of(
    st.dictionaries(
        st.sampled_from([*_CREATE_FIELDS, "ownership_challenge", "x"]), _field_values, max_size=8
    ),
    _json,
    st.binary(max_size=200),
)
_ids = st.one_of(
    st.just("0" * 32), st.text("0123456789abcdef", min_size=32, max_size=32), st.text(max_size=40)
)
_accounts = st.one_of(
    st.just("{ns}"), st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=70)
)
_paths = st.sampled_from(
    [
        ("GET", "/accounts/{a}/pcaps"),
        ("POST", "/accounts/{a}/pcaps"),
        ("GET", "/accounts/{a}/pcaps/{i}"),
        ("GET", "/accounts/{a}/pcaps/{i}/download"),
        ("PUT", "/accounts/{a}/pcaps/{i}/stop"),
        ("GET", "/accounts/{a}/pcaps/ownership"),
        ("POST", "/accounts/{a}/pcaps/ownership"),
        ("POST", "/accounts/{a}/pcaps/ownership/validate"),
        ("DELETE", "/accounts/{a}/pcaps/ownership/{i}"),
        ("PATCH", "/accounts/{a}/pcaps/{i}"),
        ("POST", "/openapi.json"),
    ]
)


def test_openapi_document_lists_every_operation(operator: RunningOperator) -> None:
    document = httpx.get(f"{BASE_URL}/openapi.json", verify=verify()).json()
    operations = {
        op["operationId"]
        for path in document["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    }
    assert operations == {
        "pcaps.list",
        "pcaps.create",
        "pcaps.get",
        "pcaps.download.get",
        "pcaps.stop",
        "pcaps.ownership.get",
        "pcaps.ownership.create",
        "pcaps.ownership.validate",
        "pcaps.ownership.delete",
    }


def test_random_requests_never_get_a_5xx(account: Account, operator: RunningOperator) -> None:
    assert operator.cluster.s3 is not None
    endpoint = operator.cluster.s3.endpoint
    with httpx.Client(base_url=BASE_URL, timeout=30, verify=verify()) as http:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            route=_paths,
            account_id=_accounts,
            pcap_id=_ids,
            body=_bodies,
            token=st.sampled_from([account.writer, account.reader, "forged", None]),
        )
        def check(
            route: tuple[str, str], account_id: str, pcap_id: str, body: Any, token: str | None
        ) -> None:
            method, template = route
            target = template.format(a=account_id.replace("{ns}", account.name), i=pcap_id)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            if isinstance(body, bytes):
                content = body
            else:
                content = json.dumps(body).replace("{s3}", f"s3://no-bkt/x?endpoint={endpoint}").encode()
            try:
                response = http.request(method, target, headers=headers, content=content)
            except httpx.InvalidURL:
                return
            assert response.status_code < 500, (method, target, body, response.text)
            if response.status_code >= 400:
                envelope = response.json()
                assert envelope["success"] is False
                assert envelope["errors"]
                assert all(e["code"] >= 1000 for e in envelope["errors"])

        check()


# --- TLS and the operator's log lines ------------------------------------------------------------


def test_plain_http_is_refused_and_https_needs_the_charts_ca(operator: RunningOperator) -> None:
    plain = BASE_URL.replace("https://", "http://", 1)
    with pytest.raises(httpx.HTTPError):  # no HTTP answer: the handshake fails, the connection closes
        httpx.get(f"{plain}/openapi.json", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{BASE_URL}/openapi.json", timeout=5)  # the system's CAs do not know the chart's
    assert httpx.get(f"{BASE_URL}/openapi.json", timeout=5, verify=verify()).status_code == 200


def test_the_replica_is_ready_with_kopf_and_its_api_answering(operator: RunningOperator) -> None:
    # The wiring of python -m kpcap_operator; tests/operator/test_readiness.py covers the not-ready cases.
    ready = httpx.get(f"http://127.0.0.1:{READINESS_PORT}/readyz", timeout=10)
    assert (ready.status_code, ready.text) == (200, "ok\n")


def test_operator_logs_are_json_lines_naming_the_capture(account: Account, operator: RunningOperator) -> None:
    body = {
        "filter_v1": {"protocol": 17},
        "time_limit": 300,
        "packet_limit": 10,
        "type": "simple",
        "system": "magic-transit",
    }
    created = call("POST", f"/accounts/{account.name}/pcaps", account.writer, body).json()["result"]

    def about_it() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in operator.logs().splitlines() if line.strip()]
        return [line for line in lines if line.get("captureId") == created["id"]]

    wait_for(lambda: bool(about_it()), timeout=30, what="an operator log line naming the capture")
    every = [json.loads(line) for line in operator.logs().splitlines() if line.strip()]  # each line is JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in every)
    line = about_it()[0]
    assert (line["namespace"], line["captureId"]) == (account.name, created["id"])
    print(f"{len(every)} JSON lines, {len(about_it())} naming the capture, e.g. {line}")
