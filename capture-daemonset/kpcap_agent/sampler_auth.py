"""Who may query the sampler: a token for the sampler's audience, held by the one allowed client.

Each query's token is checked with a TokenReview for the audience ``KPCAP_SAMPLER_AUDIENCE``
(:class:`kpcap.tokenreview.TokenReviewer`); it passes only when authenticated, issued for that
audience and its user is exactly ``KPCAP_SAMPLER_CLIENT``. Successes are cached for 30 s (at most
1024 tokens), so repeated queries cost no apiserver round trip; refusals are never cached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from kubernetes import client

from kpcap.kubeapi import load_api_client
from kpcap.tokenreview import ReviewUnavailable, TokenRefused, TokenReviewer

log = logging.getLogger(__name__)

AUTH_CACHE_SECONDS: Final = 30.0
AUTH_CACHE_ENTRIES: Final = 1024
TOKEN_REVIEW_TIMEOUT_SECONDS: Final = 5.0
MAX_CONCURRENT_REVIEWS: Final = 4


class Refused(Exception):  # noqa: N818 -- the name reads as the verdict
    """A request refused with an HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class Authoriser(Protocol):
    def authorise(self, token: str) -> str:
        """The username of the allowed client holding ``token``; raises :class:`Refused` otherwise
        (401 not authenticated or wrong audience, 403 someone else, 503 cannot tell)."""
        ...


class TokenReviewAuthoriser:
    """Checks tokens with TokenReviews for ``audience``; only ``allowed_user`` passes (module doc)."""

    def __init__(
        self,
        *,
        api_client: client.ApiClient,  # with the sampler's own credentials
        audience: str,
        allowed_user: str,
        cache_seconds: float = AUTH_CACHE_SECONDS,
        cache_entries: int = AUTH_CACHE_ENTRIES,
        timeout_seconds: float = TOKEN_REVIEW_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audience = audience
        self.allowed_user = allowed_user
        self._reviewer = TokenReviewer(
            api_client=api_client,
            audience=audience,
            cache_seconds=cache_seconds,
            cache_entries=cache_entries,
            timeout=timeout_seconds,
            max_concurrent=MAX_CONCURRENT_REVIEWS,
            cache_when=lambda identity: identity.username == allowed_user,
            clock=clock,
        )

    @property
    def reviews_made(self) -> int:
        return self._reviewer.reviews_made

    @classmethod
    def in_cluster(cls, *, audience: str, allowed_user: str) -> TokenReviewAuthoriser:
        """With the pod's ServiceAccount (or the local kubeconfig outside a cluster)."""
        return cls(api_client=load_api_client(), audience=audience, allowed_user=allowed_user)

    def authorise(self, token: str) -> str:
        try:
            identity = self._reviewer.authenticate(token)
        except ReviewUnavailable as err:
            if err.busy:
                raise Refused(503, str(err)) from None
            raise Refused(503, f"cannot check the token: {err}") from None
        except TokenRefused as refused:
            if refused.wrong_audience:
                raise Refused(401, f"token not issued for audience {self.audience!r}") from None
            raise Refused(
                401,
                f"token not valid for audience {self.audience!r} (forged, expired, or issued for "
                "another audience)",
            ) from None
        if identity.username != self.allowed_user:
            log.warning(
                "refused a query from %s: only %s may query the sampler", identity.username, self.allowed_user
            )
            raise Refused(403, f"{identity.username} may not query the sampler")
        return identity.username
