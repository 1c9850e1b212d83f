"""Resumes waiting for this gateway to read as far as another gateway already delivered.

They are woken by the hub's ingest, never by polling it: in a reconnect storm onto a
gateway that is behind, thousands of streams wait at once, and a poll each would spend
the CPU the gateway needs to catch up. Each partition keeps a heap of the positions its
waits want, so an ingested batch looks at the smallest one only: nothing for a batch that
lets no wait through, ``O(log n)`` per wait it does."""

import asyncio
import itertools
from heapq import heapify, heappop, heappush

from push_gateway.domain.hub import ChannelHub
from push_gateway.domain.positions import PartitionKey


class _Wait:
    __slots__ = ("future", "behind")

    def __init__(self, future: "asyncio.Future[bool]", behind: int) -> None:
        self.future = future
        #: partitions not read far enough yet
        self.behind = behind


class _Waiting:
    """The waits of one partition: a heap by wanted position (entries of waits that ended
    otherwise stay in it until popped or compacted) and the waits still in it."""

    __slots__ = ("heap", "waits")

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, _Wait]] = []
        self.waits: dict[_Wait, None] = {}


class PositionWaits:
    """Streams waiting for the hub to reach a position in each of some partitions."""

    def __init__(self, hub: ChannelHub) -> None:
        self._hub = hub
        self._partitions: dict[PartitionKey, _Waiting] = {}
        self._order = itertools.count()  # ties in a heap: waits do not compare
        self._count = 0
        hub.on_progress(self._progressed)
        hub.on_restart(self._restarted)

    def __len__(self) -> int:
        """Waits under way."""
        return self._count

    async def reached(self, wanted: dict[PartitionKey, int]) -> bool:
        """Once the hub has read every partition of ``wanted`` up to its position: True;
        False as soon as one of them restarts first (``hub.restart``: the positions may now
        name other records). The caller bounds the wait (``asyncio.timeout``)."""
        hub = self._hub
        behind = [(key, after) for key, after in wanted.items() if hub.position(key) < after]
        if not behind:
            return True
        wait = _Wait(asyncio.get_running_loop().create_future(), len(behind))
        for key, after in behind:
            waiting = self._partitions.get(key)
            if waiting is None:
                waiting = self._partitions[key] = _Waiting()
            heappush(waiting.heap, (after, next(self._order), wait))
            waiting.waits[wait] = None
        self._count += 1
        try:
            return await wait.future
        finally:
            self._count -= 1
            self._forget(wait, [key for key, _ in behind])

    def _forget(self, wait: _Wait, keys: list[PartitionKey]) -> None:
        """Takes an ended wait out of the partitions it is still in; a heap is rebuilt once
        more than half of it is ended waits (ends cost ``O(1)`` each, amortized)."""
        for key in keys:
            waiting = self._partitions.get(key)
            if waiting is None or wait not in waiting.waits:
                continue
            del waiting.waits[wait]
            if not waiting.waits:
                del self._partitions[key]
            elif len(waiting.heap) > 2 * len(waiting.waits):
                waits = waiting.waits
                waiting.heap = [entry for entry in waiting.heap if entry[2] in waits]
                heapify(waiting.heap)

    def _progressed(self, key: PartitionKey, position: int) -> None:
        """After each ingested batch (``ChannelHub.on_progress``)."""
        waiting = self._partitions.get(key)
        if waiting is None:
            return
        heap, waits = waiting.heap, waiting.waits
        while heap and heap[0][0] <= position:
            wait = heappop(heap)[2]
            if wait not in waits:
                continue  # ended already
            del waits[wait]
            wait.behind -= 1
            if not wait.behind and not wait.future.done():
                wait.future.set_result(True)
        if not waits:
            del self._partitions[key]

    def _restarted(self, key: PartitionKey) -> None:
        """``ChannelHub.on_restart``: the partition's waits give up."""
        waiting = self._partitions.pop(key, None)
        if waiting is None:
            return
        for wait in waiting.waits:
            if not wait.future.done():
                wait.future.set_result(False)
