"""A start retried until the server it needs answers (``StartRetries``): what the
gateway's Kafka start and the booking-api's MongoDB start share."""

import logging
import time
from collections.abc import Iterator

from structlog.testing import capture_logs

from slotstream_contracts.startup import HELD_MESSAGES, GiveUp, StartRetries, held_back

#: how late a loaded host may wake a sleeping task (CI saw 0.6 ms past the bound)
SCHEDULING_SLACK = 0.1


def retries(timeout: float | None = None) -> StartRetries:
    return StartRetries(
        "kafka",
        {"bootstrap_servers": "k1:9092"},
        timeout_seconds=timeout,
        exit_code=69,
        first_backoff_seconds=0.01,
        max_backoff_seconds=0.02,
    )


async def test_failed_attempts_are_said_once_each_and_the_start_goes_on() -> None:
    outcomes = iter(["refused", "reset", None])
    start = retries()
    with capture_logs() as logs:
        assert await start.retry(lambda _left: _next(outcomes)) is True
    assert start.attempts == 3
    assert not start.gave_up
    assert [(e["event"], e.get("error"), e.get("attempt")) for e in logs] == [
        ("kafka not reachable: retrying", "refused", 1),
        ("kafka not reachable: retrying", "reset", 2),
        ("kafka reachable: started", None, None),
    ]
    assert all(e["bootstrap_servers"] == "k1:9092" for e in logs)


async def test_past_its_bound_it_gives_up_with_one_error_line() -> None:
    start = retries(timeout=0.2)
    began = time.monotonic()
    lefts: list[float] = []

    async def refused(left: float | None) -> str:
        assert left is not None  # a bound was set
        lefts.append(left)
        return "refused"

    with capture_logs() as logs:
        assert await start.retry(refused) is False
    # it gives up rather than sleep past the bound (a loaded host's timers may add a little)
    assert time.monotonic() - began < 0.2 + SCHEDULING_SLACK
    assert start.gave_up
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"] == "kafka not reachable: giving up"
    assert (errors[0]["exit_code"], errors[0]["attempts"]) == (69, start.attempts)
    assert lefts == sorted(lefts, reverse=True)  # what is left of the bound shrinks


async def test_an_attempt_that_cannot_be_mended_gives_up_at_once() -> None:
    async def topic_missing(_left: float | None) -> str | None:
        raise GiveUp("data topic missing: giving up", "topic s has no partitions")

    start = retries()
    with capture_logs() as logs:
        assert await start.retry(topic_missing) is False
    assert start.attempts == 1
    assert [(e["event"], e["error"]) for e in logs] == [
        ("data topic missing: giving up", "topic s has no partitions")
    ]


async def _next(outcomes: Iterator[str | None]) -> str | None:
    return next(outcomes)


def test_an_attempt_held_back_inside_an_outage_reasons_with_its_own_lines_only() -> None:
    """The publisher holds aiokafka's lines back for a whole outage (its client complains
    ~10 times a second in the background) and each probe's line gives the ones said during
    that probe: not every line since the outage began, which grew each probe's line and the
    held list for as long as Kafka was away."""
    library = logging.getLogger("tests.held_back.library")
    with held_back(library.name) as outage:
        for n in range(500):
            library.error("Unable to update metadata from [%d]", n)
        with held_back(library.name) as attempt:
            library.error('Unable connect to "127.0.0.1:9": refused')
        assert attempt == ['Unable connect to "127.0.0.1:9": refused']
        assert len(outage) <= HELD_MESSAGES
