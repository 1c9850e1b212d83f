"""Starting the gateway's Kafka clients when Kafka answers, not before.

Compose and Kubernetes do not order start-ups: a gateway may start seconds before the
broker listens (a refused connection) or while something in front of it accepts and drops
connections. The HTTP server serves from the first moment — ``/healthz`` 200, ``/readyz``
and every stream 503 "starting" — while :class:`KafkaStartup` tries the clients' start
again and again, with the fetch loop's capped back-off (``fetch.next_backoff``, 0.1 s
doubling to 5 s) and jitter, one log line per attempt. The ingest starts from the
positions it would have used had Kafka answered at once: a ring buffer's length before the
ends it then finds, so nothing written meanwhile is missed.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final

import structlog

from push_gateway.adapters.fetch import next_backoff
from push_gateway.adapters.kafka import TopicMissing
from push_gateway.config import GatewayKafkaSettings
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE

log = structlog.get_logger(__name__)

#: aiokafka's own logger: it says "Unable connect to <address>: <error>" for each failed
#: bootstrap, which is folded into the attempt's one line
AIOKAFKA_LOGGER: Final = "aiokafka"


class _HoldBack(logging.Filter):
    """Keeps aiokafka's warnings and errors of one start attempt (their messages) instead
    of letting them out: the attempt's own line carries them."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.messages.append(record.getMessage())
        return False


@contextlib.contextmanager
def _aiokafka_errors() -> Iterator[list[str]]:
    held = _HoldBack()
    logger = logging.getLogger(AIOKAFKA_LOGGER)
    logger.addFilter(held)
    try:
        yield held.messages
    finally:
        logger.removeFilter(held)


class KafkaStartup:
    """Runs ``starts`` in order until all succeed; after a failure each gets its ``close``
    (they clean up after themselves; closing is for what started before the one that
    failed) and the whole sequence is tried again. With ``settings.start_timeout_seconds``
    it gives up once the next attempt would come after the bound: one error line and
    :attr:`gave_up` (the server then exits with ``KAFKA_UNREACHABLE_EXIT_CODE``)."""

    def __init__(
        self,
        settings: GatewayKafkaSettings,
        starts: Sequence[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]],
    ) -> None:
        self._settings = settings
        self._starts = tuple(starts)
        self.connected = False
        self.gave_up = False
        self.attempts = 0

    async def run(self) -> None:
        """Until started (or given up); cancelled by a shutdown meanwhile."""
        timeout = self._settings.start_timeout_seconds
        began = time.monotonic()
        backoff = 0.0
        while True:
            self.attempts += 1
            with _aiokafka_errors() as held:
                try:
                    await self._start_all()
                except TopicMissing as exc:  # Kafka answers; the topic was waited for
                    self._give_up(began, str(exc), "data topic missing: giving up")
                    return
                except Exception as exc:  # noqa: BLE001 - any failure: closed, retried
                    error = "; ".join(held) or f"{type(exc).__name__}: {exc}"
                else:
                    break
            backoff = next_backoff(backoff)
            delay = random.uniform(backoff / 2, backoff)
            if timeout is not None and time.monotonic() + delay - began > timeout:
                self._give_up(began, error, "kafka not reachable: giving up")
                return
            log.warning(
                "kafka not reachable: retrying",
                bootstrap_servers=self._settings.bootstrap_servers,
                attempt=self.attempts,
                retry_in=round(delay, 2),
                error=error,
            )
            await asyncio.sleep(delay)
        if self.attempts > 1:
            log.info(
                "kafka reachable: started",
                bootstrap_servers=self._settings.bootstrap_servers,
                attempts=self.attempts,
                waited_seconds=round(time.monotonic() - began, 1),
            )
        self.connected = True

    async def _start_all(self) -> None:
        started: list[Callable[[], Awaitable[None]]] = []
        try:
            for start, close in self._starts:
                await start()
                started.append(close)
        except BaseException:
            for close in reversed(started):
                with contextlib.suppress(Exception):
                    await close()
            raise

    def _give_up(self, began: float, error: str, event: str) -> None:
        self.gave_up = True
        log.error(
            event,
            bootstrap_servers=self._settings.bootstrap_servers,
            attempts=self.attempts,
            waited_seconds=round(time.monotonic() - began, 1),
            start_timeout_seconds=self._settings.start_timeout_seconds,
            error=error,
            exit_code=KAFKA_UNREACHABLE_EXIT_CODE,
        )
