"""Keep-alive for SSE streams: a ``heartbeat`` event to each stream that has been quiet,
spread over the period on the shared timer grid (no timer per connection)."""

import time
from collections.abc import Collection, Sequence
from typing import Final

from push_gateway.domain.frames import HEARTBEAT
from push_gateway.domain.hub import ChannelHub
from push_gateway.stream import SseConnection, StreamState
from push_gateway.timing import sleep_to_grid

#: heartbeats go out in this many steps per period (10,000 streams: ~170 writes a step)
HEARTBEAT_STEPS: Final = 60


class Heartbeats:
    def __init__(self, hub: ChannelHub, heartbeat_seconds: float) -> None:
        self.hub = hub
        self.heartbeat_seconds = heartbeat_seconds

    async def run(self, streams: Collection[SseConnection]) -> None:
        """A ``heartbeat`` event (one shared frame, see ``HEARTBEAT``) each
        ``heartbeat_seconds`` to every stream of ``streams`` (a live set, read each period)
        that needs one (:meth:`send`), spread over the period in ``HEARTBEAT_STEPS`` small
        steps: 10,000 writes at once held the loop ~100 ms, and everything fetched meanwhile
        waited. A new stream gets its first within two periods."""
        pause = self.heartbeat_seconds / HEARTBEAT_STEPS
        while True:
            connections = list(streams)
            share = -(-len(connections) // HEARTBEAT_STEPS)  # ceiling
            for step in range(HEARTBEAT_STEPS):
                await sleep_to_grid(pause)  # with the other periodic timers: one wake-up
                self.send(connections[step * share : (step + 1) * share], time.monotonic())

    def send(self, connections: Sequence[SseConnection], now: float) -> int:
        """Write the heartbeat to those of ``connections`` that were sent no event in the
        half period before ``now`` (``time.monotonic()``); returns how many got one.

        A live stream whose channels had an event framed since then is skipped: that event
        already told its client's watchdog (any frame resets it) and the proxies in between
        (any byte) that the stream is alive, and a heartbeat costs a system call, as much
        as a delivery. So a busy stream gets none, and no stream is silent for more than
        1.5 periods."""
        recent = now - self.heartbeat_seconds / 2
        framed_since = self.hub.framed_since
        sent = 0
        for connection in connections:
            state = connection.state
            if not connection.headers_sent or state is StreamState.CLOSED:
                continue
            if state is StreamState.LIVE and framed_since(connection, recent):
                continue
            connection.output(HEARTBEAT)
            sent += 1
        return sent
