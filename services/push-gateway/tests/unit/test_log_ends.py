"""The broker's log ends for resume points past a gateway's own view: asked on behalf of
anonymous clients, so one request per partition at a time, spaced, shared by the callers,
and each caller answered by a request sent after it asked."""

import asyncio
import time

import pytest

from push_gateway.adapters.log_ends import CoalescingLogEnds


class Broker:
    """Answers ListOffsets with ``ends`` after ``delay``; records when each request was
    sent and how many were in flight at once."""

    def __init__(self, delay: float = 0.02) -> None:
        self.ends: dict[tuple[str, int], int] = {("s", 0): 10, ("s", 1): 20}
        self.delay = delay
        self.sent: list[tuple[tuple[str, int], float]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def latest(self, topic: str, partition: int) -> int:
        self.sent.append(((topic, partition), time.monotonic()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        end = self.ends[(topic, partition)]  # as the request reaches the broker
        try:
            await asyncio.sleep(self.delay)
            return end
        finally:
            self.in_flight -= 1


async def test_concurrent_resumes_share_one_request_per_partition() -> None:
    broker = Broker()
    ends = CoalescingLogEnds(broker.latest, timeout_seconds=1)
    found = await asyncio.gather(*(ends.end("s", p % 2) for p in range(50)))
    assert found == [10, 20] * 25
    assert sorted(key for key, _ in broker.sent) == [("s", 0), ("s", 1)]
    assert ends.lookups == 2


async def test_a_resume_that_asks_during_a_request_gets_the_next_ones_answer() -> None:
    """The request under way may have been sent before the record its id names was
    written: it waits for the next, which is sent once that one is answered."""
    broker = Broker()
    ends = CoalescingLogEnds(broker.latest, timeout_seconds=1, spacing_seconds=0)
    first = asyncio.create_task(ends.end("s", 0))
    await asyncio.sleep(0.005)  # sent, not answered
    broker.ends[("s", 0)] = 12  # another gateway's records reach the log
    late = [asyncio.create_task(ends.end("s", 0)) for _ in range(5)]
    assert await first == 10
    assert [await t for t in late] == [12] * 5
    assert len(broker.sent) == 2
    assert broker.most_in_flight == 1


async def test_clients_asking_all_the_time_get_one_request_per_spacing() -> None:
    broker = Broker(delay=0.001)
    ends = CoalescingLogEnds(broker.latest, timeout_seconds=1, spacing_seconds=0.1)
    asked = 0
    stop = time.monotonic() + 0.45
    while time.monotonic() < stop:
        await asyncio.gather(*(ends.end("s", 0) for _ in range(20)))
        asked += 20
    times = [at for _, at in broker.sent]
    assert 3 <= len(times) <= 6 < asked
    assert all(b - a >= 0.1 - 0.005 for a, b in zip(times, times[1:], strict=False))


async def test_a_broker_that_does_not_answer_in_time_is_an_unknown_end() -> None:
    broker = Broker(delay=5)
    ends = CoalescingLogEnds(broker.latest, timeout_seconds=0.05)
    started = time.monotonic()
    assert await ends.end("s", 0) is None
    assert time.monotonic() - started < 1
    broker.delay = 0
    assert await ends.end("s", 0) == 10  # asked again, not the failure remembered


async def test_a_resume_that_goes_away_leaves_the_request_to_the_others() -> None:
    broker = Broker()
    ends = CoalescingLogEnds(broker.latest, timeout_seconds=1)
    leaving = asyncio.create_task(ends.end("s", 0))
    staying = asyncio.create_task(ends.end("s", 0))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == 10
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_close_answers_the_waiting_resumes_unknown() -> None:
    broker = Broker(delay=5)
    ends = CoalescingLogEnds(broker.latest, timeout_seconds=10)
    waiting = asyncio.create_task(ends.end("s", 0))
    await asyncio.sleep(0.01)
    await ends.close()
    assert await waiting is None
