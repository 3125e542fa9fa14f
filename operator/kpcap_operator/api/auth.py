"""Who is calling, and may they: TokenReview, then SubjectAccessReview, both asked of the apiserver.

Design choice: the API authenticates the caller's bearer token with a **TokenReview** and asks a
**SubjectAccessReview** whether that user may do the matching verb on ``packetcaptures.kpcap.io`` in
the account's namespace; the work itself is then done with the operator's own identity. The other
option, making each Kubernetes call with the caller's token, was not taken because:

* Not every call of the API is a call on the caller's objects. Bucket ownership records are the
  operator's own (they decide where the operator writes with its storage credentials, so they live in
  its namespace, out of reach of a namespace's ``edit`` users: see ownership.py), and downloads read
  buckets with the operator's credentials. With the caller's token those steps would still need a
  separate authorisation decision; here every endpoint has one, of the same kind.
* Users need RBAC on ``packetcaptures`` only: no ConfigMap or Secret rights to make ownership work.
* 401 and 403 are told apart without guessing from an apiserver answer: TokenReview says whether
  the token is anybody (else 401); SubjectAccessReview says whether that somebody may (else 403).
  Any authenticator the apiserver has (ServiceAccount tokens, OIDC, webhook) works unchanged.

The cost: the operator's ServiceAccount needs ``create`` on ``tokenreviews`` and
``subjectaccessreviews`` (the ``system:auth-delegator`` ClusterRole) and ``create``/``patch`` on
``packetcaptures`` in the namespaces it serves. Every action is preceded by a SubjectAccessReview for
the caller with the exact verb and namespace, and created objects record the caller in the
annotation ``kpcap.io/created-by``. Positive TokenReview answers are cached for a few seconds (by
the token's SHA-256, never the token itself); authorisation is never cached, so a RoleBinding
removed takes effect on the next call.

Verbs (what a Role must grant on ``packetcaptures`` in group ``kpcap.io``):

========================================  ======================================================
list captures, list ownerships            ``list``
get a capture, download it                ``get``
create a capture; create, validate or     ``create`` (whoever may create full captures may prove
delete a bucket ownership                 that a bucket is theirs)
stop a capture                            ``patch``
========================================  ======================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from kubernetes import client

from kpcap.kubeapi import GROUP, PLURAL
from kpcap.tokenreview import Identity, ReviewUnavailable, TokenRefused, TokenReviewer
from kpcap_operator.api.mapping import ApiError, ErrorCode

RESOURCE: Final = PLURAL
TOKEN_CACHE_SECONDS: Final = 10.0
_MAX_TOKEN_LENGTH: Final = 16 * 1024

Caller = Identity
"""An authenticated user, as TokenReview describes them (what SubjectAccessReview needs)."""


def unauthenticated(detail: str) -> ApiError:
    return ApiError.one(401, ErrorCode.AUTHENTICATION, f"Authentication error: {detail}")


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; ApiError(401) otherwise."""
    if not header:
        raise unauthenticated("missing 'Authorization: Bearer <token>' header")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthenticated("the Authorization header must be 'Bearer <token>'")
    if len(token) > _MAX_TOKEN_LENGTH or not token.isascii() or any(ch.isspace() for ch in token):
        raise unauthenticated("the bearer token is malformed")
    return token


def forbidden(caller: Caller, *, verb: str, namespace: str, reason: str = "") -> ApiError:
    why = f" ({reason})" if reason else ""
    return ApiError.one(
        403,
        ErrorCode.FORBIDDEN,
        f"Forbidden: {caller.username} may not {verb} {RESOURCE}.{GROUP} in account (namespace) "
        f"{namespace!r}{why}",
    )


class Authorizer:
    """TokenReview (kpcap.tokenreview) and SubjectAccessReview through the operator's API client
    (blocking calls)."""

    def __init__(self, api: client.ApiClient, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._authn = TokenReviewer(api_client=api, cache_seconds=TOKEN_CACHE_SECONDS, clock=clock)
        self._authz = client.AuthorizationV1Api(api)

    def authenticate(self, token: str) -> Caller:
        try:
            return self._authn.authenticate(token)
        except TokenRefused as refused:
            raise unauthenticated(
                f"invalid or expired token ({refused.reason or 'the token was not accepted'})"
            ) from None
        except ReviewUnavailable as unavailable:
            what = f"{unavailable.status} {unavailable.reason}" if unavailable.status else str(unavailable)
            raise ApiError.one(
                503, ErrorCode.BACKEND_UNAVAILABLE, f"the Kubernetes API failed: {what}"
            ) from None

    def authorize(self, caller: Caller, *, verb: str, namespace: str) -> None:
        body: dict[str, Any] = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": caller.username,
                "uid": caller.uid or None,
                "groups": list(caller.groups),
                "extra": {k: list(v) for k, v in caller.extra.items()},
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": GROUP,
                    "resource": RESOURCE,
                },
            },
        }
        review = self._authz.create_subject_access_review(body)
        status = review.status
        if status is None or not status.allowed or status.denied:
            raise forbidden(
                caller, verb=verb, namespace=namespace, reason=str(status.reason or "") if status else ""
            )
