"""The in-process fan-out: Kafka records in, one shared SSE frame out to every subscriber.

This is the gateway's hot path, so it is written for the interpreter rather than for
elegance:

* a record is routed by a dictionary lookup on its key bytes (``topic → key → subscribers``);
  a record nobody here subscribes to costs that lookup and a ring-buffer append, and its
  value is never decoded;
* a record with subscribers is framed once (``event:`` from the ``ce_type`` header, ``data:``
  = the raw value bytes; once more as a WebSocket frame when WebSocket clients subscribe)
  and the same bytes object is handed to every live subscriber's
  writer by the injected ``deliver`` loop — in the gateway a compiled loop that sends it on
  the connection's socket (``adapters/_sockets.pyx``): no task wake-up, queue, ASGI
  ``send`` or interpreter step per delivery;
* subscribers still catching up (snapshot or resume in flight) get the record buffered
  instead, so nothing falls between "subscribed" and "live";
* a private channel's subscribers are grouped by the roles they read it in (a student and
  an instructor may share an id: ``users/{id}/notifications`` is theirs both), and a
  record goes to the groups of the audience its value names; only a record with local
  subscribers is read for it, in the parse that checks it can be framed.

The hub never waits on a client; bounding each client's unsent output is the transport's
job (see ``api/stream.py``).
"""

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from math import inf
from time import monotonic as _monotonic
from typing import Any, Final, Protocol

from aiokafka.partitioner import murmur2

from push_gateway.domain.frames import FAMILY_OF_TYPE, event_body, framable, json_object
from push_gateway.domain.positions import (
    NOTIFICATIONS_LETTER,
    SCHEDULE_LETTER,
    PartitionKey,
)
from push_gateway.domain.ws_protocol import event_frame
from slotstream_contracts.channels import EVENT_TYPES, Channel, ChannelKind
from slotstream_contracts.entities import Audience
from slotstream_contracts.topics import CONTROL_KEY

CONTROL_KEY_BYTES: Final = CONTROL_KEY.encode()
_join: Final = b"".join
#: Event ids remembered per channel to drop re-sent copies of the same change.
RECENT_IDS: Final = 256
#: The ``audience`` :meth:`ChannelHub._dispatch` is given for a record of a public channel
#: (whose value it has not parsed yet; a private record's it has).
PUBLIC: Final = object()

Writer = Callable[[bytes], object]
#: writes one frame with every writer of a group (subscriber → writer); the composition root
#: passes the compiled loop (``adapters/_sockets.pyx``), which sends on sockets directly
Deliver = Callable[[dict[Any, Writer], bytes], None]


def write_each(writers: dict[Any, Writer], frame: bytes) -> None:
    """The interpreted :data:`Deliver`."""
    for write in writers.values():
        write(frame)


LETTER_OF_KIND: Final = {
    ChannelKind.SCHEDULE: SCHEDULE_LETTER,
    ChannelKind.NOTIFICATIONS: NOTIFICATIONS_LETTER,
}
#: Topic letter → the ``ce_type`` values framed for its channels: a ``booking.*`` record on
#: the schedule topic (written before bookings became private) names a student, and is
#: never framed for a public channel — live, from the ring or from Kafka.
CE_TYPES_OF_LETTER: Final = {
    LETTER_OF_KIND[kind]: frozenset(t.value.encode() for t in types)
    for kind, types in EVENT_TYPES.items()
}
#: Topic letter → framable ``ce_type`` → what follows the id in its SSE frame, up to the
#: payload (``\nevent: <family>\ndata: ``): one lookup decides both whether a record is
#: framed here and how.
HEADS_OF_LETTER: Final = {
    letter: {
        t: b"\nevent: " + FAMILY_OF_TYPE[t] + b"\ndata: " for t in types if t in FAMILY_OF_TYPE
    }
    for letter, types in CE_TYPES_OF_LETTER.items()
}


class Record(Protocol):
    """The parts of a Kafka record the hub reads: its offset, key and value, and the values
    of its ``ce_type`` and ``ce_id`` headers (None where it has none)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def ce_type(self) -> bytes | None: ...
    @property
    def ce_id(self) -> bytes | None: ...


#: The roles a stream reads private channels in (``domain.requests.readers_of``); a
#: stream without a principal reads none (records from before audiences only).
Readers = frozenset[Audience]
NO_READERS: Final[Readers] = frozenset()


def reads(readers: Readers, audience: object) -> bool:
    """Whether a stream reading as ``readers`` is shown a private record for ``audience``
    (the ``audience`` of its value; a record without one, written before audiences, is
    every role's)."""
    return audience is None or (type(audience) is str and audience in readers)


class Subscriber(Protocol):
    """One connection as the hub sees it."""

    @property
    def partitions(self) -> tuple[PartitionKey, ...]: ...
    @property
    def writer(self) -> Writer: ...
    @property
    def readers(self) -> Readers:
        """The roles whose records of its private channels it is shown; fixed while it
        is attached."""

    def buffer(self, key: PartitionKey, record: Record) -> None: ...
    def on_resync(self, key: PartitionKey) -> None: ...


class ChannelSubscribers:
    """Local subscribers of one channel, grouped by their partition set (which fixes the id)."""

    __slots__ = ("channel", "live", "ws_live", "pending", "recent_ids", "framed_at")

    def __init__(self, channel: Channel | None) -> None:
        self.channel = channel
        self.live: dict[tuple[PartitionKey, ...], dict[Subscriber, Writer]] = {}
        #: WebSocket subscriptions (one channel, hence one partition, each): they get the
        #: event as one shared WebSocket frame instead of an SSE frame
        self.ws_live: dict[Subscriber, Writer] = {}
        self.pending: dict[Subscriber, None] = {}
        #: ``ce_id`` of the records framed lately; of a private channel's, with the
        #: ``audience`` (``(ce_id, audience)``): its records of one change for other roles
        #: are other records, not copies (an admin reads both)
        self.recent_ids: dict[object, None] = {}
        #: ``time.monotonic()`` when a record was last framed for the channel (its streams
        #: were sent something then: the heartbeat skips them for a while)
        self.framed_at = -inf

    def __len__(self) -> int:
        return (
            len(self.pending) + len(self.ws_live) + sum(len(group) for group in self.live.values())
        )

    def drop_live(self, subscriber: Subscriber) -> None:
        """``subscriber`` no longer gets records written straight to it (if it did)."""
        self.ws_live.pop(subscriber, None)
        live = self.live.get(subscriber.partitions)
        if live is not None:
            live.pop(subscriber, None)
            if not live:
                del self.live[subscriber.partitions]


class PrivateSubscribers:
    """Local subscribers of one user's private channel, one :class:`ChannelSubscribers`
    per set of roles its streams read it in (students, instructors, admins: both)."""

    __slots__ = ("channel", "groups")

    def __init__(self, channel: Channel | None) -> None:
        self.channel = channel
        self.groups: dict[Readers, ChannelSubscribers] = {}


@dataclass
class HubStats:
    records: int = 0
    deliveries: int = 0
    framed: int = 0
    duplicates: int = 0
    malformed: int = 0
    resyncs: int = 0


@dataclass
class PartitionState:
    #: the partition's latest records as the ingest handed them over, for resumes served from
    #: memory. The compiled decoder's records are tuples the cyclic GC never tracks, so
    #: thousands of them cost its full collections nothing (the pure-Python twin's, where
    #: nothing could compile, are tracked: a full collection visits them), and keeping the
    #: record itself (not a copy of its parts) costs the ingest no allocation per record.
    ring: deque[Record]
    start_offset: int
    position: int
    id_prefix: bytes = field(default=b"")
    #: ``id: <letter><partition>:``, the start of every single-partition id line
    id_line: bytes = field(default=b"id: ")
    #: framable ``ce_type`` of the topic → ``\nevent: <family>\ndata: ``
    heads: dict[bytes, bytes] = field(default_factory=dict)


def frame_body(record: Record, letter: str, readers: Readers) -> tuple[bytes, object] | None:
    """The shared ``event:``/``data:`` bytes of a data record of the topic ``letter``, for
    a stream reading private channels as ``readers``, with the audience it names (a
    public record: :data:`PUBLIC`), which tells its copies apart as live delivery does;
    None when it cannot be framed (:func:`~push_gateway.domain.frames.framable`), does
    not belong on that topic's channels, or is a private record for a role the stream
    does not read. For what a catch-up writes; live records are checked in
    :meth:`ChannelHub._dispatch`."""
    ce_type = record.ce_type
    family = FAMILY_OF_TYPE.get(ce_type) if ce_type in CE_TYPES_OF_LETTER[letter] else None
    value = record.value
    if family is None or value is None:
        return None
    event = json_object(value)
    if event is None:
        return None
    audience = PUBLIC
    if letter == NOTIFICATIONS_LETTER:
        audience = event.get("audience")
        if not reads(readers, audience):
            return None
    return event_body(family, value), audience


class ChannelHub:
    """Routes records of the data topics to local subscribers."""

    def __init__(
        self, topics: dict[ChannelKind, str], ring_size: int, deliver: Deliver = write_each
    ) -> None:
        self._kind_topic = dict(topics)
        self._deliver = deliver
        letters = {topic: LETTER_OF_KIND[kind] for kind, topic in topics.items()}
        self._letters = letters
        self._topics = {letter: topic for topic, letter in letters.items()}
        self._ring_size = ring_size
        #: record key → subscribers, of the public (schedule) and the private topic; the
        #: control key's entry stands for every subscriber of the partition (a resync)
        self._public: dict[bytes | None, ChannelSubscribers] = {
            CONTROL_KEY_BYTES: ChannelSubscribers(None)
        }
        self._private: dict[bytes | None, PrivateSubscribers] = {
            CONTROL_KEY_BYTES: PrivateSubscribers(None)
        }
        self._partitions: dict[PartitionKey, PartitionState] = {}
        self._partition_count: dict[str, int] = {}
        self._partition_cache: dict[Channel, PartitionKey] = {}
        self._subscribers: dict[Subscriber, tuple[Channel, ...]] = {}
        self.stats = HubStats()
        self._progress_listeners: list[Callable[[PartitionKey, int], None]] = []
        self._restart_listeners: list[Callable[[PartitionKey], None]] = []
        #: :meth:`restart` calls per partition (none: absent), for :meth:`restarts`
        self._restarts: dict[PartitionKey, int] = {}

    # -- partitions --------------------------------------------------------------------
    def assign(self, topic: str, partition: int, next_offset: int, partition_count: int) -> None:
        """Start tracking a partition whose next record will be at ``next_offset``."""
        key = (self._letters[topic], partition)
        self._partitions[key] = PartitionState(
            ring=deque(maxlen=self._ring_size),
            start_offset=next_offset,
            position=next_offset - 1,
            id_prefix=f"{key[0]}{partition}:".encode(),
            id_line=f"id: {key[0]}{partition}:".encode(),
            heads=HEADS_OF_LETTER[key[0]],
        )
        self._partition_count[topic] = partition_count

    def restart(self, topic: str, partition: int, next_offset: int) -> None:
        """The partition's records before ``next_offset`` could not be read (lost or deleted):
        its ring starts again there, so no resume is served across the hole from memory, and
        its subscribers start over, as on a control record's ``resync``."""
        key = (self._letters[topic], partition)
        self._restarts[key] = self._restarts.get(key, 0) + 1
        self.assign(topic, partition, next_offset, self._partition_count[topic])
        self._resync(key)
        for listener in self._restart_listeners:
            listener(key)

    @property
    def assigned(self) -> bool:
        return bool(self._partitions) and set(self._partition_count) == set(self._letters)

    def partition_key(self, channel: Channel) -> PartitionKey:
        """Where the channel's records live: Kafka's default partitioner on its key."""
        key = self._partition_cache.get(channel)
        if key is None:
            topic = self._kind_topic[channel.kind]
            count = self._partition_count[topic]
            key = (self._letters[topic], (murmur2(channel.record_key) & 0x7FFFFFFF) % count)
            if len(self._partition_cache) > 100_000:
                self._partition_cache.clear()
            self._partition_cache[channel] = key
        return key

    def position(self, key: PartitionKey) -> int:
        return self._partitions[key].position

    def positions(self) -> dict[PartitionKey, int]:
        return {key: state.position for key, state in self._partitions.items()}

    def topic_of(self, key: PartitionKey) -> str:
        return self._topics[key[0]]

    def letter_of(self, topic: str) -> str:
        return self._letters[topic]

    def on_progress(self, listener: Callable[[PartitionKey, int], None]) -> None:
        """Call ``listener(partition, position)`` after each ingested batch (not per
        record: it must stay cheap for a batch that concerns it not)."""
        self._progress_listeners.append(listener)

    def restarts(self, key: PartitionKey) -> int:
        """How many times the partition was :meth:`restart`-ed: an offset read before a
        change of it may name another record after (for checks across an ``await``)."""
        return self._restarts.get(key, 0)

    def on_restart(self, listener: Callable[[PartitionKey], None]) -> None:
        """Call ``listener(partition)`` after :meth:`restart`: its offsets up to the
        position may now name other records than before."""
        self._restart_listeners.append(listener)

    # -- ingest (hot path) ---------------------------------------------------------------
    def ingest(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        """Route a batch of consecutive records of one partition."""
        if not records:
            return
        key = (self._letters[topic], partition)
        state = self._partitions[key]
        ring_append = state.ring.append
        if key[0] == NOTIFICATIONS_LETTER:
            private = self._private.get
            for record in records:
                ring_append(record)
                entry = private(record.key)
                if entry is not None:
                    self._dispatch_private(entry, key, state, record)
        else:
            lookup = self._public.get
            for record in records:
                ring_append(record)
                subscribers = lookup(record.key)
                if subscribers is not None:
                    self._dispatch(subscribers, key, state, record)
        position = state.position = records[-1].offset
        self.stats.records += len(records)
        for listener in self._progress_listeners:
            listener(key, position)

    def _dispatch_private(
        self,
        entry: PrivateSubscribers,
        key: PartitionKey,
        state: PartitionState,
        record: Record,
    ) -> None:
        """A record of a private channel with local subscribers goes to the groups that
        read its audience. Its value is parsed here, once (what :func:`framable` would do
        in :meth:`_dispatch`), for the ``audience`` it names."""
        if entry.channel is None:
            self._resync(key)
            return
        value = record.value
        event = None if value is None else json_object(value)
        if event is None:
            self.stats.malformed += 1
            return
        audience = event.get("audience")
        for readers, group in entry.groups.items():
            if reads(readers, audience):
                self._dispatch(group, key, state, record, audience)

    def _dispatch(
        self,
        subscribers: ChannelSubscribers,
        key: PartitionKey,
        state: PartitionState,
        record: Record,
        audience: object = PUBLIC,
    ) -> None:
        """``audience``: a private record's (its value parsed, and found framable, by
        :meth:`_dispatch_private`). A copy of a record framed lately for the channel is
        dropped: one with its ``ce_id`` and, if private, its audience (a change's records
        for two roles are two records: an admin reads both; catch-ups the same)."""
        if subscribers.channel is None:
            self._resync(key)
            return
        # everything below runs once per record with subscribers; the last loop once per
        # delivery: locals, no helper calls there, one join per frame (a frame is ~400
        # bytes, and each ``+`` copied it again)
        ce_type = record.ce_type
        ce_id = record.ce_id
        head = state.heads.get(ce_type) if ce_type is not None else None
        value = record.value
        stats = self.stats
        if head is None or value is None:
            # Unframable, or a type that does not belong on this topic's channels.
            stats.malformed += 1
            return
        if ce_id is not None:
            recent = subscribers.recent_ids
            seen_as = ce_id if audience is PUBLIC else (ce_id, audience)
            if seen_as in recent:
                stats.duplicates += 1
                return
            recent[seen_as] = None
            if len(recent) > RECENT_IDS:
                del recent[next(iter(recent))]
        # one UTF-8 JSON object on one line, as every client parses
        if audience is PUBLIC and not framable(value):
            stats.malformed += 1
            return
        stats.framed += 1
        subscribers.framed_at = _monotonic()
        if subscribers.pending:
            for pending in subscribers.pending:
                pending.buffer(key, record)
        offset = record.offset
        delivered = 0
        deliver = self._deliver
        for partitions, writers in subscribers.live.items():
            if len(partitions) == 1:
                frame = _join((state.id_line, str(offset).encode(), head, value, b"\n\n"))
            else:
                vector = self._vector_id(partitions, key, offset)
                frame = _join((b"id: ", vector, head, value, b"\n\n"))
            deliver(writers, frame)
            delivered += len(writers)
        ws_live = subscribers.ws_live
        if ws_live:
            assert ce_type is not None
            frame = event_frame(
                FAMILY_OF_TYPE[ce_type], value, state.id_prefix + str(offset).encode()
            )
            deliver(ws_live, frame)
            delivered += len(ws_live)
        stats.deliveries += delivered

    def _vector_id(
        self, partitions: tuple[PartitionKey, ...], key: PartitionKey, offset: int
    ) -> bytes:
        states = self._partitions
        return ".".join(
            f"{letter}{part}:{offset if (letter, part) == key else states[(letter, part)].position}"
            for letter, part in partitions
        ).encode()

    def _resync(self, key: PartitionKey) -> None:
        self.stats.resyncs += 1
        for subscriber in list(self._subscribers):
            if key in subscriber.partitions:
                subscriber.on_resync(key)

    # -- subscriptions -------------------------------------------------------------------
    def _group(self, subscriber: Subscriber, channel: Channel) -> ChannelSubscribers | None:
        """Where ``subscriber`` is kept for ``channel``: the channel's entry, or for a
        private channel its group of the roles ``subscriber`` reads."""
        if channel.kind is ChannelKind.SCHEDULE:
            return self._public.get(channel.record_key)
        entry = self._private.get(channel.record_key)
        return None if entry is None else entry.groups.get(subscriber.readers)

    def _groups(self, channel: Channel) -> list[ChannelSubscribers]:
        """Every group of ``channel``'s subscribers."""
        if channel.kind is ChannelKind.SCHEDULE:
            found = self._public.get(channel.record_key)
            return [] if found is None else [found]
        entry = self._private.get(channel.record_key)
        return [] if entry is None else list(entry.groups.values())

    def attach(
        self, subscriber: Subscriber, channels: Iterable[Channel]
    ) -> dict[PartitionKey, int]:
        """Subscribe as pending (records are buffered); returns the positions it starts from."""
        chosen = tuple(channels)
        self._subscribers[subscriber] = chosen
        for channel in chosen:
            key = channel.record_key
            if channel.kind is ChannelKind.SCHEDULE:
                group = self._public.get(key)
                if group is None:
                    group = self._public[key] = ChannelSubscribers(channel)
            else:
                entry = self._private.get(key)
                if entry is None:
                    entry = self._private[key] = PrivateSubscribers(channel)
                group = entry.groups.get(subscriber.readers)
                if group is None:
                    group = entry.groups[subscriber.readers] = ChannelSubscribers(channel)
            group.pending[subscriber] = None
        return {key: self._partitions[key].position for key in subscriber.partitions}

    def go_live(self, subscriber: Subscriber) -> None:
        """From now on records are written straight to the subscriber's writer."""
        websocket = getattr(subscriber, "websocket", False)
        for channel in self._subscribers.get(subscriber, ()):
            group = self._group(subscriber, channel)
            assert group is not None
            group.pending.pop(subscriber, None)
            if websocket:
                group.ws_live[subscriber] = subscriber.writer
            else:
                group.live.setdefault(subscriber.partitions, {})[subscriber] = subscriber.writer

    def to_pending(self, subscriber: Subscriber) -> None:
        """Buffer again (a resync is being served)."""
        for channel in self._subscribers.get(subscriber, ()):
            group = self._group(subscriber, channel)
            assert group is not None
            group.drop_live(subscriber)
            group.pending[subscriber] = None

    def detach(self, subscriber: Subscriber) -> None:
        for channel in self._subscribers.pop(subscriber, ()):
            group = self._group(subscriber, channel)
            if group is None:
                continue
            group.pending.pop(subscriber, None)
            group.drop_live(subscriber)
            if group.pending or group.live or group.ws_live:
                continue
            key = channel.record_key
            if channel.kind is ChannelKind.SCHEDULE:
                del self._public[key]
                continue
            entry = self._private[key]
            del entry.groups[subscriber.readers]
            if not entry.groups:
                del self._private[key]

    def ring_since(
        self, key: PartitionKey, after_offset: int, record_keys: AbstractSet[bytes]
    ) -> list[Record] | None:
        """Records of ``record_keys`` after ``after_offset`` from the ring (control records
        included); None when the ring no longer reaches back that far."""
        if after_offset + 1 < self.ring_floor(key):
            return None
        wanted = record_keys | {CONTROL_KEY_BYTES}
        return [
            r for r in self._partitions[key].ring if r.offset > after_offset and r.key in wanted
        ]

    def ring_floor(self, key: PartitionKey) -> int:
        """The oldest offset the ring answers for: its oldest record once it is full, else
        where the partition's tracking started."""
        state = self._partitions[key]
        return state.ring[0].offset if len(state.ring) == state.ring.maxlen else state.start_offset

    # -- introspection -------------------------------------------------------------------
    def subscriber_counts(self) -> dict[Channel, int]:
        counts: dict[Channel, int] = {}
        for entry in self._public.values():
            if entry.channel is not None:
                counts[entry.channel] = len(entry)
        for private in self._private.values():
            if private.channel is not None:
                counts[private.channel] = sum(len(g) for g in private.groups.values())
        return counts

    def framed_since(self, subscriber: Subscriber, since: float) -> bool:
        """Whether a record was framed for one of the subscriber's channels at or after
        ``since`` (``time.monotonic()``): it was sent that frame, or will be as its catch-up
        ends."""
        for channel in self._subscribers.get(subscriber, ()):
            group = self._group(subscriber, channel)
            if group is not None and group.framed_at >= since:
                return True
        return False

    def live_subscribers(self, channel: Channel) -> list[Writer]:
        return [
            w
            for group in self._groups(channel)
            for live in group.live.values()
            for w in live.values()
        ]

    def live_ws_subscribers(self, channel: Channel) -> list[Writer]:
        """Writers of the channel's live WebSocket subscriptions (they take WebSocket frames)."""
        return [w for group in self._groups(channel) for w in group.ws_live.values()]

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers)
