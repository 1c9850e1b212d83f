"""Schedule snapshots from the booking-api, with concurrent fetches coalesced."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import httpx
import orjson
import stamina

from slotstream_contracts.entities import ScheduleSnapshot


class SnapshotNotFound(LookupError):
    """The booking-api does not know the instructor."""


class SnapshotUnavailable(RuntimeError):
    """The booking-api could not be reached or answered with an error."""


RETRYABLE: Final = (httpx.TransportError, OSError, SnapshotUnavailable)
FIRST_RETRY_PAUSE_SECONDS: Final = 0.1
#: unknown instructors remembered at most (the oldest is forgotten first)
MAX_UNKNOWN: Final = 100_000
#: booking-api requests in flight at once (and the connections kept, see ``app.py``): 8 keep
#: a local booking-api busy; the rest wait here, where waiting costs nothing
MAX_FETCHES_IN_FLIGHT: Final = 8


class SnapshotSource(Protocol):
    async def fetch(self, instructor_id: str) -> ScheduleSnapshot: ...


class HttpAnswer(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...


class HttpGetter(Protocol):
    """What :class:`HttpSnapshotSource` needs of an HTTP client: the gateway's
    :class:`~push_gateway.adapters.keepalive.KeepAliveClient`, or an ``httpx.AsyncClient``
    (tests). Transport failures raise ``OSError`` or ``httpx.TransportError``."""

    async def get(self, url: str) -> HttpAnswer: ...


class HttpSnapshotSource:
    """``GET {booking_api}/api/instructors/{id}/schedule`` → ScheduleSnapshot.

    At most ``max_in_flight`` requests at once; the rest wait here, not in a connection
    pool's queue (httpcore's is rescanned against every connection for each request it
    assigns: ~1 ms of CPU per request when a connect storm queued 500)."""

    def __init__(self, client: HttpGetter, max_in_flight: int = MAX_FETCHES_IN_FLIGHT) -> None:
        self._client = client
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def fetch(self, instructor_id: str) -> ScheduleSnapshot:
        # The first attempt runs outside the retry machinery: a stamina (tenacity) retry
        # context leaves ~50 objects in reference cycles per call, which only a full GC
        # frees — measured +0.4 kB RSS per connection after 500 fetches for 10,000 streams.
        try:
            return await self._fetch_once(instructor_id)
        except RETRYABLE:
            await asyncio.sleep(FIRST_RETRY_PAUSE_SECONDS)
        try:
            async for attempt in stamina.retry_context(on=RETRYABLE, attempts=2, timeout=10.0):
                with attempt:
                    return await self._fetch_once(instructor_id)
        except (httpx.TransportError, OSError) as exc:
            raise SnapshotUnavailable(f"booking-api unreachable: {exc!r}") from exc
        raise SnapshotUnavailable("booking-api gave no snapshot")  # pragma: no cover

    async def _fetch_once(self, instructor_id: str) -> ScheduleSnapshot:
        async with self._in_flight:
            response = await self._client.get(f"/api/instructors/{instructor_id}/schedule")
        if response.status_code == 404:
            raise SnapshotNotFound(instructor_id)
        if response.status_code != 200:
            raise SnapshotUnavailable(f"booking-api answered {response.status_code}")
        return ScheduleSnapshot.model_validate_json(response.content)


class FakeSnapshotSource:
    """In-memory snapshots; records every fetch; ``gate`` lets tests hold fetches open."""

    def __init__(self, snapshots: dict[str, ScheduleSnapshot] | None = None) -> None:
        self.snapshots = dict(snapshots or {})
        self.fetches: list[str] = []
        self.gate: asyncio.Event | None = None

    async def fetch(self, instructor_id: str) -> ScheduleSnapshot:
        self.fetches.append(instructor_id)
        if self.gate is not None:
            await self.gate.wait()
        snapshot = self.snapshots.get(instructor_id)
        if snapshot is None:
            raise SnapshotNotFound(instructor_id)
        return snapshot


@dataclass(frozen=True)
class TakenSnapshot:
    """A snapshot and the hub's position on its partition when the fetch began: every
    record up to ``since`` is reflected in it; later ones may or may not be."""

    snapshot: ScheduleSnapshot
    since: int
    taken_at: float
    #: the snapshot's JSON, encoded once for every connection that receives it
    encoded: bytes = b""
    #: slot id → version, for merging buffered deltas
    versions: dict[str, int] = field(default_factory=dict)
    #: (channel name, frame id) → the complete snapshot frame (see ``snapshot_frame``)
    frames: dict[tuple[str, bytes | None], bytes] = field(default_factory=dict, compare=False)


def exact_bytes(encoded: bytes) -> bytes:
    """A copy of ``encoded`` in memory of its own size. orjson's result keeps the buffer it
    was written into (4 kB at least, whatever the length): a snapshot is kept for reuse,
    one per instructor, so ~4 kB each (measured with tracemalloc; 0.4 kB per connection at
    1 k connections over 100 instructors) where ~0.2 kB holds the JSON."""
    return memoryview(encoded).tobytes()


class CoalescingSnapshots:
    """Snapshots shared between connections, so a wave of (re)connects costs the booking-api
    about one request per instructor rather than one per client.

    Concurrent requests share one in-flight fetch, and a snapshot is reused for
    ``reuse_seconds`` after it arrived. Sharing is safe because each snapshot carries the
    position its fetch started at: a connection that subscribed later replays the records
    in between from the ring buffer (filtered by version), as it would its own buffer.
    """

    def __init__(
        self, source: SnapshotSource, reuse_seconds: float = 5.0, unknown_ttl_seconds: float = 30.0
    ) -> None:
        self._source = source
        self._reuse = reuse_seconds
        self._unknown_ttl = unknown_ttl_seconds
        self._in_flight: dict[str, asyncio.Future[TakenSnapshot]] = {}
        self._recent: dict[str, TakenSnapshot] = {}
        #: instructor id → monotonic expiry of the booking-api's 404, oldest first
        self._unknown: dict[str, float] = {}
        self.fetches = 0

    async def fetch(
        self, instructor_id: str, position: Callable[[], int], fresh_after: int | None = None
    ) -> TakenSnapshot:
        """A snapshot for ``instructor_id``; ``position()`` reads the hub's current position
        on the instructor's partition. With ``fresh_after``, only a snapshot taken at or
        after that position will do. An instructor the booking-api did not know raises
        :class:`SnapshotNotFound` without asking again for ``unknown_ttl_seconds``."""
        if self._unknown and self._known_unknown(instructor_id):
            raise SnapshotNotFound(instructor_id)
        recent = self.recent(instructor_id)
        if recent is not None and (fresh_after is None or recent.since >= fresh_after):
            return recent
        future = self.start(instructor_id, position)
        # shield: one waiter giving up (client gone) must not cancel the others' fetch
        taken = await asyncio.shield(future)
        if fresh_after is not None and taken.since < fresh_after:
            self.fetches += 1
            taken = await self._fetch(instructor_id, position())
        return taken

    def start(
        self, instructor_id: str, position: Callable[[], int]
    ) -> "asyncio.Future[TakenSnapshot]":
        """The fetch under way for the instructor, started now (without waiting for it) if
        none is; its result is kept for reuse as :meth:`fetch`'s is."""
        future = self._in_flight.get(instructor_id)
        if future is None:
            self.fetches += 1
            future = asyncio.ensure_future(self._fetch(instructor_id, position()))
            self._in_flight[instructor_id] = future
            future.add_done_callback(lambda done: self._settle(instructor_id, done))
        return future

    def known_unknown(self, instructor_id: str) -> bool:
        """Whether the booking-api answered 404 for the instructor within the TTL."""
        return bool(self._unknown) and self._known_unknown(instructor_id)

    def in_flight(self, instructor_id: str) -> "asyncio.Future[TakenSnapshot] | None":
        """The fetch under way for the instructor, if any (streams may wait on it)."""
        return self._in_flight.get(instructor_id)

    def recent(self, instructor_id: str) -> TakenSnapshot | None:
        """The snapshot :meth:`fetch` would reuse at once (without ``fresh_after``), if any."""
        if self._unknown and self._known_unknown(instructor_id):
            return None
        recent = self._recent.get(instructor_id)
        if recent is None or time.monotonic() - recent.taken_at > self._reuse:
            return None
        return recent

    def _known_unknown(self, instructor_id: str) -> bool:
        now = time.monotonic()
        unknown = self._unknown
        while unknown:  # entries expire in insertion order (one TTL for all)
            oldest = next(iter(unknown))
            if unknown[oldest] > now:
                break
            del unknown[oldest]
        return instructor_id in unknown

    async def _fetch(self, instructor_id: str, since: int) -> TakenSnapshot:
        try:
            snapshot = await self._source.fetch(instructor_id)
        except SnapshotNotFound:
            if self._unknown_ttl > 0:
                self._unknown.pop(instructor_id, None)
                self._unknown[instructor_id] = time.monotonic() + self._unknown_ttl
                if len(self._unknown) > MAX_UNKNOWN:
                    del self._unknown[next(iter(self._unknown))]
            raise
        taken = TakenSnapshot(
            snapshot,
            since,
            time.monotonic(),
            encoded=exact_bytes(orjson.dumps(snapshot.model_dump(mode="json"))),
            versions={slot.id: slot.version for slot in snapshot.slots},
        )
        self._recent[instructor_id] = taken
        return taken

    def _settle(self, instructor_id: str, done: "asyncio.Future[TakenSnapshot]") -> None:
        self._in_flight.pop(instructor_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here so an unawaited failure is not reported as lost
        if len(self._recent) > 10_000:
            cutoff = time.monotonic() - self._reuse
            for key in [k for k, v in self._recent.items() if v.taken_at < cutoff]:
                del self._recent[key]
