"""Who holds a bearer token: the apiserver's TokenReview, with a short cache of the answers.

The one authenticator of every kpcap server that takes Kubernetes tokens: the operator's REST API
(then a SubjectAccessReview decides what the caller may do: ``kpcap_operator.api.auth``) and the
node samplers (then only the operator's user may query: ``kpcap_agent.sampler_auth``). Authorisation
stays with each caller; this module only says who the token belongs to.

Answers are cached by the token's SHA-256 (never the token itself) for ``cache_seconds``, at most
``cache_entries`` of them (the least recently used go first), so repeated calls cost no apiserver
round trip; a refusal is never cached, nor an identity the caller's ``cache_when`` does not want
kept (the sampler keeps only its allowed client, so a stranger's token is reviewed every time).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

DEFAULT_CACHE_ENTRIES: Final = 1024


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user, as TokenReview describes them (what a SubjectAccessReview needs), and
    the audiences the token was accepted for."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    audiences: tuple[str, ...] = ()


class TokenRefused(Exception):  # noqa: N818 -- the name reads as the verdict
    """The token is nobody's: not authenticated (``reason``: the apiserver's error, if it gave one),
    or, with an audience, not issued for it (``wrong_audience``)."""

    def __init__(self, reason: str | None, *, wrong_audience: bool = False) -> None:
        self.reason = reason
        self.wrong_audience = wrong_audience
        super().__init__(reason or ("not issued for the audience" if wrong_audience else "not authenticated"))


class ReviewUnavailable(Exception):  # noqa: N818 -- the name reads as the verdict
    """The token could not be checked: the apiserver refused the review (``status``), could not be
    reached (``status`` None), or too many reviews are in flight. Never the token's fault."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str | None = None, busy: bool = False
    ) -> None:
        self.status = status
        self.reason = reason
        self.busy = busy  # too many reviews in flight (the apiserver was not asked)
        super().__init__(message)


class TokenReviewer:
    """Checks bearer tokens with TokenReviews through ``api_client`` (blocking calls, thread-safe).

    ``audience``: the audience a token must be issued for (None: the apiserver's own). ``timeout``
    bounds each review (None: the client's default). ``max_concurrent`` reviews at once (None:
    unbounded); a caller waits at most ``timeout`` for a turn, then :class:`ReviewUnavailable`.
    """

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        audience: str | None = None,
        cache_seconds: float,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        timeout: float | None = None,
        max_concurrent: int | None = None,
        cache_when: Callable[[Identity], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = client.AuthenticationV1Api(api_client)
        self.audience = audience
        self._cache_seconds = cache_seconds
        self._cache_entries = cache_entries
        self._timeout = timeout
        self._cache_when = cache_when
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()  # digest -> (expiry, who)
        self._lock = threading.Lock()
        self._turns = None if max_concurrent is None else threading.BoundedSemaphore(max_concurrent)
        self.reviews_made = 0

    def authenticate(self, token: str) -> Identity:
        """Who holds ``token``; raises :class:`TokenRefused` or :class:`ReviewUnavailable`."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(digest)
                return cached[1]
            self._cache.pop(digest, None)
        identity = self._review(token)
        if self._cache_when is None or self._cache_when(identity):
            with self._lock:
                self._cache[digest] = (now + self._cache_seconds, identity)
                self._cache.move_to_end(digest)
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return identity

    def _review(self, token: str) -> Identity:
        spec: dict[str, Any] = {"token": token}
        if self.audience is not None:
            spec["audiences"] = [self.audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        if self._turns is not None and not self._turns.acquire(timeout=self._timeout):
            raise ReviewUnavailable("too many token reviews in flight; retry shortly", busy=True)
        options: dict[str, Any] = {} if self._timeout is None else {"_request_timeout": self._timeout}
        try:
            self.reviews_made += 1
            review = self._api.create_token_review(body, **options)
        except ApiException as err:
            log.error("TokenReview refused by the apiserver: %s %s", err.status, err.reason)  # noqa: TRY400
            raise ReviewUnavailable(
                f"the apiserver answered the TokenReview with {err.status}",
                status=err.status,
                reason=err.reason,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            log.error("TokenReview failed: %s: %s", type(err).__name__, err)  # noqa: TRY400
            raise ReviewUnavailable("the apiserver is unreachable") from None
        finally:
            if self._turns is not None:
                self._turns.release()
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            reason = (status.error if status is not None else None) or None
            log.info("token refused by TokenReview: %s", reason or "not authenticated")
            raise TokenRefused(reason)
        audiences = tuple(status.audiences or ())
        if self.audience is not None and self.audience not in audiences:
            log.info("token authenticated for audiences %s, not %r", list(audiences), self.audience)
            raise TokenRefused(None, wrong_audience=True)
        user = status.user
        return Identity(
            username=str(user.username or ""),
            uid=str(user.uid or ""),
            groups=tuple(user.groups or ()),
            extra={str(k): tuple(v or ()) for k, v in (user.extra or {}).items()},
            audiences=audiences,
        )
