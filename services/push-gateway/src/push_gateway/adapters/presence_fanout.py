"""Presence: publish this instance's subscriber counts per schedule channel (the presence
bus sums every instance's), and tell each channel's subscribers the cluster-wide count
when it changed (``presence`` events, with ``presence_events``)."""

import asyncio
from typing import Final

import structlog

from push_gateway.adapters.presence import PresenceBus
from push_gateway.domain.frames import json_frame
from push_gateway.domain.hub import ChannelHub, Writer
from push_gateway.domain.ws_protocol import sse_to_ws
from push_gateway.timing import sleep_to_grid
from slotstream_contracts.channels import Channel, ChannelKind

log = structlog.get_logger(__name__)

#: presence writes between yields to the event loop (~2 ms of writes)
WRITES_PER_STEP: Final = 256


class PresenceFanOut:
    def __init__(
        self,
        hub: ChannelHub,
        bus: PresenceBus,
        *,
        interval_seconds: float,
        send_events: bool,
    ) -> None:
        self.hub = hub
        self.bus = bus
        self.interval_seconds = interval_seconds
        self.send_events = send_events
        self._last_presence: dict[str, int] = {}
        #: per channel, the writers that were sent its last presence count
        self._told: dict[str, set[Writer]] = {}

    async def run(self) -> None:
        """Each ``interval_seconds`` (on the timer grid): publish, then fan out."""
        while True:
            try:
                local = {
                    c.name: n
                    for c, n in self.hub.subscriber_counts().items()
                    if c.kind is ChannelKind.SCHEDULE and n > 0
                }
                await self.bus.publish(local)
                if self.send_events:
                    await self.send()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence update failed", error=repr(exc))
            await sleep_to_grid(self.interval_seconds)

    async def send(self) -> None:
        """A ``presence`` event to the live subscribers of each schedule channel whose
        cluster-wide count changed, and to those that joined since it was last sent."""
        totals = self.bus.cluster_counts()
        written = 0
        for channel in self.hub.subscriber_counts():
            if channel.kind is not ChannelKind.SCHEDULE:
                continue
            count = totals.get(channel.name, 0)
            writers = self.hub.live_subscribers(channel)
            ws_writers = self.hub.live_ws_subscribers(channel)
            everyone = {*writers, *ws_writers}
            if self._last_presence.get(channel.name) == count:
                # Unchanged: only subscribers that joined since the last send (a reload or
                # a reconnect that took another's place) still need to hear it.
                told = self._told.get(channel.name, set())
                writers = [w for w in writers if w not in told]
                ws_writers = [w for w in ws_writers if w not in told]
                if not writers and not ws_writers:
                    continue
            self._last_presence[channel.name] = count
            self._told[channel.name] = everyone
            frame = json_frame("presence", {"channel": channel.name, "count": count})
            for write in writers:
                write(frame)
            if ws_writers:
                ws_frame = sse_to_ws(frame)
                for write in ws_writers:
                    write(ws_frame)
            written += len(writers) + len(ws_writers)
            if written >= WRITES_PER_STEP:
                written = 0
                await asyncio.sleep(0)  # let live events through between channels
        live = {c.name for c in self.hub.subscriber_counts()}
        for name in list(self._last_presence):
            if name not in live:
                del self._last_presence[name]
                self._told.pop(name, None)

    def count(self, channel: Channel) -> int:
        """The cluster-wide subscriber count of ``channel`` (as last read from the bus)."""
        return self.bus.cluster_counts().get(channel.name, 0)
