"""One SSE connection after the HTTP request was accepted: an asyncio Protocol on the raw
transport. The hub writes frames with the connection's writer (``send(2)`` on its socket,
see ``adapters/_sockets.pyx``; ``transport.write`` for TLS); this class only handles the
edges (slow client, client gone, closing)."""

import asyncio
from collections.abc import Callable
from enum import Enum
from functools import lru_cache
from typing import Final

from push_gateway.adapters.sockets import release_writer, stream_writer
from push_gateway.domain.frames import ByeReason, json_frame
from push_gateway.domain.hub import NO_READERS, Readers, Record, Writer
from push_gateway.domain.positions import PartitionKey
from push_gateway.timing import next_on_grid
from slotstream_contracts.channels import Channel

#: How long a closing connection may take to flush its last bytes before it is aborted.
CLOSE_GRACE_SECONDS: Final = 5.0


NO_RESYNC: Final[frozenset[PartitionKey]] = frozenset()
#: the records buffered by a stream that has none (shared: a live stream buffers nothing)
NO_PENDING: Final[tuple[()]] = ()

#: a channel set's layout: partitions (sorted), (letter, record key) → channel, partition →
#: record keys replayed from it; shared read-only by every stream with the same channels
Layout = tuple[
    tuple[PartitionKey, ...],
    dict[tuple[str, bytes], Channel],
    dict[PartitionKey, frozenset[bytes]],
]


def write_catch_up(
    transport: asyncio.Transport,
    write: Writer,
    data: bytes,
    limit: int,
    on_end: Callable[[], None] | None = None,
) -> None:
    """Write a stream's catch-up (head, snapshots, replay: ~1.9 MB for a month of 5-minute
    slots) with ``write`` on ``transport``, whose high-water mark ``limit``
    (``GATEWAY_MAX_PENDING_BYTES``) cuts off slow consumers. Most of a large catch-up
    waits in the transport however fast the client reads, so the mark is raised by the
    catch-up's size: only unsent bytes beyond it count. It is set back to ``limit`` once
    the unsent output is within ``limit`` again (checked on the timer grid, not per write),
    and then ``on_end`` is called: every allowance on ``transport`` has ended.
    A client that never reads is cut off once ``limit`` more bytes than its catch-up wait."""
    high = transport.get_write_buffer_limits()[1]
    transport.set_write_buffer_limits(high=high + len(data))
    write(data)
    _end_allowance(transport, limit, on_end)


def _end_allowance(
    transport: asyncio.Transport, limit: int, on_end: Callable[[], None] | None
) -> None:
    if transport.is_closing():
        return
    if transport.get_write_buffer_size() <= limit:
        transport.set_write_buffer_limits(high=limit)
        if on_end is not None:
            on_end()
        return
    loop = asyncio.get_running_loop()
    loop.call_at(next_on_grid(loop.time()), _end_allowance, transport, limit, on_end)


@lru_cache(maxsize=4096)
def _layout(partitions: tuple[tuple[Channel, PartitionKey], ...]) -> Layout:
    """Built once per channel set, not per stream: thousands of streams of one channel
    share these (~0.7 kB each otherwise; RSS per connection is a goal, issue 14).

    The record keys replayed from a partition are those of every channel of the stream on
    its topic, not only of the channels that hash to it now: after partitions were added,
    a channel's records before the change are on the partition it hashed to then
    (``CatchUp.checked_resume``). Other channels' keys never occur on it otherwise."""
    keys: dict[str, set[bytes]] = {}
    for channel, key in partitions:
        keys.setdefault(key[0], set()).add(channel.record_key)
    of_topic = {letter: frozenset(found) for letter, found in keys.items()}
    return (
        tuple(sorted({key for _, key in partitions})),
        {(key[0], channel.record_key): channel for channel, key in partitions},
        {key: of_topic[key[0]] for _, key in partitions},
    )


class StreamState(Enum):
    CATCHING_UP = "catching-up"
    LIVE = "live"
    CLOSED = "closed"


class SseConnection(asyncio.Protocol):
    __slots__ = (
        "transport",
        "channels",
        "partitions",
        "channel_of_key",
        "keys_of_partition",
        "writer",
        "output",
        "pending",
        "resync_requested",
        "state",
        "headers_sent",
        "origin",
        "expiry",
        "client_ip",
        "user",
        "readers",
        "_on_close",
        "_on_resync",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        channels: tuple[Channel, ...],
        partitions: dict[Channel, PartitionKey],
        on_close: Callable[["SseConnection", ByeReason | None], None],
        on_resync: Callable[["SseConnection"], None],
        max_pending_bytes: int,
        origin: str | None,
    ) -> None:
        self.transport = transport
        self.channels = channels
        self.partitions, self.channel_of_key, self.keys_of_partition = _layout(
            tuple(partitions.items())
        )
        #: what the hub calls with each live frame; every other byte of the stream (head,
        #: catch-up, heartbeats, bye) goes through :attr:`output` — for an SSE stream the
        #: same writer, which keeps them in order (``adapters/_sockets.pyx``)
        self.writer: Writer = stream_writer(transport)
        self.output: Writer = self.writer
        #: records the hub buffered while catching up; replaced, never emptied in place
        self.pending: list[tuple[PartitionKey, Record]] | tuple[()] = NO_PENDING
        #: replaced, never mutated (an empty one is shared by every stream)
        self.resync_requested: frozenset[PartitionKey] = NO_RESYNC
        self.state = StreamState.CATCHING_UP
        self.headers_sent = False
        self.origin = origin
        #: ends a private stream when its token expires (set by the gateway)
        self.expiry: asyncio.TimerHandle | None = None
        #: whom the stream counts against (per-IP / per-user limits; set by the gateway)
        self.client_ip = ""
        self.user: str | None = None
        #: the roles whose records of its private channels it is shown (set by the
        #: gateway from the verified principal before the hub attaches it)
        self.readers: Readers = NO_READERS
        self._on_close = on_close
        self._on_resync = on_resync
        # the transport calls pause_writing() once this much output is unsent
        transport.set_write_buffer_limits(high=max_pending_bytes)

    # hub callbacks
    def buffer(self, key: PartitionKey, record: Record) -> None:
        if self.pending:
            self.pending.append((key, record))
        else:
            self.pending = [(key, record)]

    def on_resync(self, key: PartitionKey) -> None:
        self.resync_requested |= {key}
        if self.state is StreamState.LIVE:
            self._on_resync(self)

    # asyncio.Protocol
    @staticmethod
    def data_received(data: bytes) -> None:  # noqa: ARG004 - ignored
        """An SSE client sends nothing after its request; whatever comes is ignored. A
        static method: uvloop keeps ``protocol.data_received`` per transport, and a plain
        method would be a bound-method object per stream (64 bytes each)."""

    def eof_received(self) -> bool | None:
        return None  # client half-closed: close our side too

    def pause_writing(self) -> None:
        # called from inside transport.write(), possibly mid fan-out: act on the next tick
        asyncio.get_running_loop().call_soon(self.close, "slow-consumer")

    def resume_writing(self) -> None:
        """Nothing to resume: a client that fell behind is disconnected, not waited for."""

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - any cause
        release_writer(self.writer)
        if self.state is not StreamState.CLOSED:
            self.state = StreamState.CLOSED
            self._on_close(self, None)

    def output_catch_up(self, data: bytes, max_pending_bytes: int) -> None:
        """Write the catch-up: the slow-consumer limit counts only what waits beyond it
        (:func:`write_catch_up`)."""
        write_catch_up(self.transport, self.output, data, max_pending_bytes)

    def close(self, reason: ByeReason | None, retry_ms: int | None = None) -> None:
        """Say why (when a reason is given) and close; the connection leaves the hub first."""
        if self.state is StreamState.CLOSED:
            return
        self.state = StreamState.CLOSED
        self._on_close(self, reason)
        if reason is not None and self.headers_sent and not self.transport.is_closing():
            tail = b"" if retry_ms is None else b"retry: " + str(retry_ms).encode() + b"\n\n"
            self.output(tail + json_frame("bye", {"reason": reason}))
        release_writer(self.writer)
        self.transport.close()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()
