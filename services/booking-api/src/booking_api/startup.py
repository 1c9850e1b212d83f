"""Opening the MongoDB store when MongoDB answers, not before.

Compose and Kubernetes do not order start-ups: the API may start before MongoDB listens,
before the replica set has a primary, or before its user exists. The HTTP server serves
from the first moment — ``/healthz`` 200, ``/readyz`` and every API request 503 with
``Retry-After`` — while :class:`MongoStartup` runs the store's start (its indexes) again
and again with capped, jittered back-off, one log line per attempt naming the hosts of the
connection string (never its credentials) and the driver's reason: the loop is
``slotstream_contracts.startup.StartRetries``, as the gateway's ``KafkaStartup``'s.
"""

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import pymongo

from slotstream_contracts.settings import MONGO_UNREACHABLE_EXIT_CODE
from slotstream_contracts.startup import StartRetries

#: the pause after the first failed attempt; it doubles after each further one
BACKOFF_FIRST_SECONDS: Final = 0.25
#: the longest pause between attempts (before jitter)
BACKOFF_MAX_SECONDS: Final = 5.0


def mongo_hosts(url: str) -> str:
    """The ``host:port`` list of a connection string, as the driver splits it: without the
    user and password before the last ``@``, the database and the options; safe to log."""
    scheme_free = url.partition("://")[2]
    host_part = scheme_free.partition("?")[0].partition("/")[0]
    return host_part.rpartition("@")[2]


def _reason(exc: Exception) -> str:
    """The driver's reason in one line: a server selection error's message ends with the
    whole topology description (``, Timeout: …s, Topology Description: <…>``), which
    repeats the address and the error already said."""
    return f"{type(exc).__name__}: {str(exc).split(', Timeout: ', 1)[0]}"


class MongoStartup(StartRetries):
    """Runs ``starts`` in order until all succeed in one attempt (each is idempotent;
    ``StartRetries``). An attempt fails within the driver's own timeouts
    (``driver_timeout_seconds``: server selection, every operation). With
    ``start_timeout_seconds`` it gives up once the next attempt would begin after the
    bound, and an attempt that could run past it is cut at it: one error line and
    :attr:`gave_up` (the server then exits with ``MONGO_UNREACHABLE_EXIT_CODE``)."""

    def __init__(
        self, hosts: str, start_timeout_seconds: float | None, driver_timeout_seconds: float
    ) -> None:
        super().__init__(
            "mongodb",
            {"hosts": hosts},
            timeout_seconds=start_timeout_seconds,
            exit_code=MONGO_UNREACHABLE_EXIT_CODE,
            first_backoff_seconds=BACKOFF_FIRST_SECONDS,
            max_backoff_seconds=BACKOFF_MAX_SECONDS,
        )
        self.hosts = hosts
        self._driver_timeout = driver_timeout_seconds

    async def run(self, starts: Sequence[Callable[[], Awaitable[None]]]) -> bool:
        """True once started; False when given up. Cancelled by a shutdown meanwhile."""

        async def attempt(left: float | None) -> str | None:
            try:
                with self._bounded(left):
                    for start in starts:
                        await start()
            except Exception as exc:  # noqa: BLE001 - any failure: said, then tried again
                return _reason(exc)
            return None

        return await self.retry(attempt)

    def _bounded(self, left: float | None) -> contextlib.AbstractContextManager[None]:
        """A deadline for the attempt, as the driver's own (so it fails with its reason,
        which a cancellation would not give), when less than one driver timeout is left of
        the start timeout. Not otherwise: a ``pymongo.timeout`` replaces the server
        selection timeout, so one attempt would wait all that is left, saying nothing."""
        if left is None or left >= self._driver_timeout:
            return contextlib.nullcontext()
        return pymongo.timeout(max(0.0, left))
