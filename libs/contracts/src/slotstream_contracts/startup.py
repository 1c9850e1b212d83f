"""Starting a service's clients once the server they need answers, not before.

Compose and Kubernetes do not order start-ups: a service may start seconds before Kafka or
MongoDB listens. Its HTTP server serves from the first moment (live, unready, 503 with
``Retry-After``) while :class:`StartRetries` runs the start again and again with capped,
jittered back-off: one warning per failed attempt (``<server> not reachable: retrying``,
with the caller's fields naming the address, and the attempt's reason), one info line when
it started after failures. With a bound it gives up once the next attempt would begin
after it: one error line and :attr:`StartRetries.gave_up`; the service then exits with the
status it was given (``KAFKA_UNREACHABLE_EXIT_CODE``, ``MONGO_UNREACHABLE_EXIT_CODE``).
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: aiokafka's own logger: it says ``Unable connect to "<address>": <reason>`` for each
#: failed bootstrap, which becomes the attempt's reason (:func:`attempt_reason`)
AIOKAFKA_LOGGER: Final = "aiokafka"
#: the most recent lines a hold keeps (a library retrying in the background says ~10 a
#: second for as long as its server is away)
HELD_MESSAGES = 20


class _HoldBack(logging.Filter):
    """Keeps a logger's warnings and errors (their messages) instead of letting them out."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.messages.append(record.getMessage())
        if len(self.messages) > HELD_MESSAGES:
            del self.messages[0]
        return False


@contextlib.contextmanager
def held_back(logger: str) -> Iterator[list[str]]:
    """The warnings and errors ``logger`` (itself, not its children) says meanwhile, kept
    out of the log: a client library's own complaint about one start attempt (aiokafka's
    ``Unable connect to "<address>": <reason>``) becomes the reason on the attempt's line
    instead of a second line per attempt. Inside another ``held_back`` of the same logger
    it shares that one's list (a logger's first refusing filter is the only one to see a
    record), from its beginning on."""
    target = logging.getLogger(logger)
    outer = next((f for f in target.filters if isinstance(f, _HoldBack)), None)
    if outer is not None:
        outer.messages.clear()
        yield outer.messages
        return
    held = _HoldBack()
    target.addFilter(held)
    try:
        yield held.messages
    finally:
        target.removeFilter(held)


def attempt_reason(held: Iterable[str], error: BaseException) -> str:
    """A failed attempt's reason for its one line: what the held-back library said during
    it (each line once), else the error itself."""
    return "; ".join(dict.fromkeys(held)) or f"{type(error).__name__}: {error}"


class GiveUp(Exception):
    """Raised by an attempt whose failure another attempt cannot mend (a data topic that
    does not exist): the start gives up at once, logged as ``event``."""

    def __init__(self, event: str, reason: str) -> None:
        super().__init__(reason)
        self.event = event
        self.reason = reason


class StartRetries:
    """Retries one start (:meth:`retry`); see the module docstring. ``server`` names what is
    waited for in the log events (``kafka``, ``mongodb``), ``fields`` where it is (never
    credentials). The services' start-ups are subclasses that say what one attempt is.
    ``say_started=False`` leaves the line once started to the caller (the publisher says
    ``kafka reachable again: resuming`` after an outage instead)."""

    def __init__(
        self,
        server: str,
        fields: Mapping[str, object],
        *,
        timeout_seconds: float | None,
        exit_code: int,
        first_backoff_seconds: float,
        max_backoff_seconds: float,
        say_started: bool = True,
    ) -> None:
        self._server = server
        self._fields = dict(fields)
        self._timeout = timeout_seconds
        self._exit_code = exit_code
        self._first_backoff = first_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._say_started = say_started
        self.attempts = 0
        self.gave_up = False

    async def retry(self, attempt: Callable[[float | None], Awaitable[str | None]]) -> bool:
        """True once an attempt started everything, False when given up; cancelled by a
        shutdown meanwhile. ``attempt(left)`` (``left``: seconds left of the bound, None
        without one) returns None when it started, else why it failed, in one line."""
        began = time.monotonic()
        backoff = 0.0
        while True:
            self.attempts += 1
            left = None if self._timeout is None else self._timeout - (time.monotonic() - began)
            try:
                error = await attempt(left)
            except GiveUp as exc:
                self._give_up(began, exc.event, exc.reason)
                return False
            if error is None:
                break
            backoff = self._first_backoff if backoff <= 0 else min(self._max_backoff, backoff * 2)
            delay = random.uniform(backoff / 2, backoff)
            if self._timeout is not None and time.monotonic() + delay - began > self._timeout:
                self._give_up(began, f"{self._server} not reachable: giving up", error)
                return False
            log.warning(
                f"{self._server} not reachable: retrying",
                **self._fields,
                attempt=self.attempts,
                retry_in=round(delay, 2),
                error=error,
            )
            await asyncio.sleep(delay)
        if self.attempts > 1 and self._say_started:
            log.info(
                f"{self._server} reachable: started",
                **self._fields,
                attempts=self.attempts,
                waited_seconds=round(time.monotonic() - began, 1),
            )
        return True

    def _give_up(self, began: float, event: str, error: str) -> None:
        self.gave_up = True
        log.error(
            event,
            **self._fields,
            attempts=self.attempts,
            waited_seconds=round(time.monotonic() - began, 1),
            start_timeout_seconds=self._timeout,
            error=error,
            exit_code=self._exit_code,
        )
