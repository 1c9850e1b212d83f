"""The end of a partition's log as the broker has it now, asked only for resume points past
this gateway's own view of it (``CatchUp.checked_resume``): another gateway may have
delivered records this one has not fetched yet.

A client chooses its resume point, so the lookups are bounded here, not per client: one
request per partition at a time, shared by every resume that asked before it was sent (an
answer from before a resume arrived may predate the record its id names), and at most one
per partition every ``spacing_seconds``, however many clients ask."""

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: the least time between two lookups of one partition: the most a resume waits for its turn
END_LOOKUP_SPACING_SECONDS: Final = 0.1

Key = tuple[str, int]


class CoalescingLogEnds:
    """High watermarks from ``ask`` (topic, partition → the broker's latest offset),
    coalesced and spaced per partition; ``None`` when the broker did not answer within
    ``timeout_seconds``. Counts the requests sent in ``lookups``."""

    def __init__(
        self,
        ask: Callable[[str, int], Awaitable[int]],
        *,
        timeout_seconds: float,
        spacing_seconds: float = END_LOOKUP_SPACING_SECONDS,
    ) -> None:
        self._ask = ask
        self._timeout = timeout_seconds
        self._spacing = spacing_seconds
        #: per partition: the answer of the request not sent yet, which new callers share
        self._next: dict[Key, asyncio.Future[int | None]] = {}
        self._sent: dict[Key, float] = {}
        self._one_at_a_time: dict[Key, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.lookups = 0

    async def end(self, topic: str, partition: int) -> int | None:
        """The partition's high watermark from a request sent after this call."""
        key = (topic, partition)
        answer = self._next.get(key)
        if answer is None:
            answer = asyncio.get_running_loop().create_future()
            self._next[key] = answer
            task = asyncio.create_task(self._lookup(key, answer), name="log-end-lookup")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # a caller that goes away (its stream closed) leaves the lookup to the others
        return await asyncio.shield(answer)

    async def _lookup(self, key: Key, answer: asyncio.Future[int | None]) -> None:
        end: int | None = None
        try:
            async with self._one_at_a_time.setdefault(key, asyncio.Lock()):
                wait = self._sent.get(key, -math.inf) + self._spacing - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                del self._next[key]  # callers from now on wait for the request after this one
                self._sent[key] = time.monotonic()
                self.lookups += 1
                try:
                    async with asyncio.timeout(self._timeout):
                        end = await self._ask(*key)
                except Exception as exc:  # noqa: BLE001 - an unknown end: the resume is refused
                    log.warning(
                        "log end lookup failed", topic=key[0], partition=key[1], error=repr(exc)
                    )
        finally:
            if self._next.get(key) is answer:  # cancelled before it was sent
                del self._next[key]
            if not answer.done():
                answer.set_result(end)

    async def close(self) -> None:
        """Cancel the lookups under way (their callers get ``None``)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
