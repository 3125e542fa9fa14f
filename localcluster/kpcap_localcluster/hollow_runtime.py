"""What the hollow nodes' process shares: one connection pool, one bounded thread pool, one timer.

Thousands of simulated nodes and light agents must not cost a thread, a connection pool or a
client each: every API call goes through one ``kubernetes`` ApiClient (its urllib3 pool sized for
the workers), each caller authenticating with its own token through a cheap view of it
(``token_view``); every call runs on a bounded pool; every wait is an entry in one timer heap.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client

log = logging.getLogger("hollow")

Json = dict[str, Any]
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def shared_client(*, server: str, ca_file: str, pool_size: int) -> client.ApiClient:
    """The one ApiClient (and connection pool) of the process; it carries no credentials itself."""
    configuration = client.Configuration()
    configuration.host = server
    configuration.ssl_ca_cert = ca_file
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def token_view(shared: client.ApiClient, token: str) -> client.ApiClient:
    """An ApiClient that sends ``token`` but shares ``shared``'s connection pool (a shallow copy:
    only the configuration's credentials differ)."""
    view = copy.copy(shared)
    configuration = copy.copy(shared.configuration)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    configuration.api_key_prefix = {}
    view.configuration = configuration
    return view


class Timers:
    """Run callables on a bounded pool, now or after a delay; a delayed one can be cancelled."""

    def __init__(self, *, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hollow")
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="timers", daemon=True)
        self._thread.start()

    def submit(self, action: Callable[[], None], *, what: str = "") -> None:
        if not self._closed:
            self.pool.submit(self._guarded, action, what or getattr(action, "__name__", "task"))

    def after(self, delay: float, action: Callable[[], None], *, what: str = "") -> Timer:
        timer = Timer(action=action, what=what or getattr(action, "__name__", "timer"))
        with self._wake:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._order), timer))
            self._wake.notify()
        return timer

    def _loop(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, timer = heapq.heappop(self._heap)
                    if not timer.cancelled:
                        self.submit(timer.action, what=timer.what)
                self._wake.wait(timeout=(self._heap[0][0] - now) if self._heap else None)

    @staticmethod
    def _guarded(action: Callable[[], None], what: str) -> None:
        try:
            action()
        except Exception:
            log.exception("%s failed", what)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self.pool.shutdown(wait=False, cancel_futures=True)


class Timer:
    __slots__ = ("action", "cancelled", "what")

    def __init__(self, *, action: Callable[[], None], what: str) -> None:
        self.action, self.what, self.cancelled = action, what, False

    def cancel(self) -> None:
        self.cancelled = True
