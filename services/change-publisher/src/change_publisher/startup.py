"""Starting the producer when Kafka answers, not before.

Compose and Kubernetes do not order start-ups: the publisher may start before the broker
listens. Its ops port serves from the first moment (``/healthz`` 200, ``/readyz`` 503, role
``starting``) while :class:`ProducerStartup` runs the producer's start again and again
(``slotstream_contracts.startup.StartRetries``, as the gateway's ``KafkaStartup`` and the
booking-api's ``MongoStartup``) with the publisher's back-off (``BACKOFF_INITIAL`` doubling
to ``BACKOFF_MAX``, jittered): one line per failed attempt naming the bootstrap address and
the reason, aiokafka's own ``Unable connect to …`` folded into it.

After an outage the publisher probes the running producer the same way (``run(probe)``,
``say_started=False``: the publisher says ``kafka reachable again: resuming`` itself).
"""

from collections.abc import Awaitable, Callable

from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE
from slotstream_contracts.startup import (
    AIOKAFKA_LOGGER,
    StartRetries,
    attempt_reason,
    held_back,
)


class ProducerStartup(StartRetries):
    """Runs ``start`` until it succeeds (it cleans up after itself when it fails); with
    ``timeout_seconds`` it gives up once the next attempt would begin after the bound: one
    error line and :attr:`gave_up` (the process then exits with
    ``KAFKA_UNREACHABLE_EXIT_CODE``)."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        timeout_seconds: float | None,
        first_backoff_seconds: float,
        max_backoff_seconds: float,
        say_started: bool = True,
    ) -> None:
        super().__init__(
            "kafka",
            {"bootstrap_servers": bootstrap_servers},
            timeout_seconds=timeout_seconds,
            exit_code=KAFKA_UNREACHABLE_EXIT_CODE,
            first_backoff_seconds=first_backoff_seconds,
            max_backoff_seconds=max_backoff_seconds,
            say_started=say_started,
        )

    async def run(self, start: Callable[[], Awaitable[None]]) -> bool:
        """True once started, False when given up; cancelled by a stop meanwhile.

        aiokafka is held back between attempts too: a running producer's client refreshes
        its metadata in the background and says the same ``Unable connect to …`` there."""
        with held_back(AIOKAFKA_LOGGER) as held:

            async def attempt(_left: float | None) -> str | None:
                held.clear()  # what it said while waiting: the last attempt's reason again
                try:
                    await start()
                except Exception as exc:  # noqa: BLE001 - any failure: said, tried again
                    return attempt_reason(held, exc)
                return None

            return await self.retry(attempt)
