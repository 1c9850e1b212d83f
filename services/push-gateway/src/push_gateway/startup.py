"""Starting the gateway's Kafka clients when Kafka answers, not before.

Compose and Kubernetes do not order start-ups: a gateway may start seconds before the
broker listens (a refused connection) or while something in front of it accepts and drops
connections. The HTTP server serves from the first moment — ``/healthz`` 200, ``/readyz``
and every stream 503 "starting" — while :class:`KafkaStartup` tries the clients' start
again and again (``slotstream_contracts.startup.StartRetries``), with the fetch loop's
capped back-off (0.1 s doubling to 5 s) and jitter, one log line per attempt. The ingest
starts from the positions it would have used had Kafka answered at once: a ring buffer's
length before the ends it then finds, so nothing written meanwhile is missed.
"""

import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

from push_gateway.adapters.fetch import BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS
from push_gateway.adapters.kafka import TopicMissing
from push_gateway.config import GatewayKafkaSettings
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE
from slotstream_contracts.startup import (
    AIOKAFKA_LOGGER,
    GiveUp,
    StartRetries,
    attempt_reason,
    held_back,
)

#: a client's start, given the ``time.monotonic()`` at which the start timeout ends (None
#: without one), and its close
Start = tuple[Callable[[float | None], Awaitable[None]], Callable[[], Awaitable[None]]]


class KafkaStartup(StartRetries):
    """Runs ``starts`` in order until all succeed; after a failure each gets its ``close``
    (they clean up after themselves; closing is for what started before the one that
    failed) and the whole sequence is tried again (``StartRetries``). With
    ``settings.start_timeout_seconds`` it gives up once the next attempt would come after
    the bound, and at once when a data topic is missing (waited for within the bound): one
    error line and :attr:`gave_up` (the server then exits with
    ``KAFKA_UNREACHABLE_EXIT_CODE``)."""

    def __init__(self, settings: GatewayKafkaSettings, starts: Sequence[Start]) -> None:
        super().__init__(
            "kafka",
            {"bootstrap_servers": settings.bootstrap_servers},
            timeout_seconds=settings.start_timeout_seconds,
            exit_code=KAFKA_UNREACHABLE_EXIT_CODE,
            first_backoff_seconds=BACKOFF_FIRST_SECONDS,
            max_backoff_seconds=BACKOFF_MAX_SECONDS,
        )
        self._starts = tuple(starts)
        self.connected = False

    async def run(self) -> None:
        """Until started (or given up); cancelled by a shutdown meanwhile."""
        self.connected = await self.retry(self._attempt)

    async def _attempt(self, left: float | None) -> str | None:
        deadline = None if left is None else time.monotonic() + left
        with held_back(AIOKAFKA_LOGGER) as held:
            try:
                await self._start_all(deadline)
            except TopicMissing as exc:  # Kafka answers; the topic was waited for
                raise GiveUp("data topic missing: giving up", str(exc)) from exc
            except Exception as exc:  # noqa: BLE001 - any failure: closed, retried
                return attempt_reason(held, exc)
        return None

    async def _start_all(self, deadline: float | None) -> None:
        started: list[Callable[[], Awaitable[None]]] = []
        try:
            for start, close in self._starts:
                await start(deadline)
                started.append(close)
        except BaseException:
            for close in reversed(started):
                with contextlib.suppress(Exception):
                    await close()
            raise
