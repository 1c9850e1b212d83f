"""An in-memory change stream with MongoDB's semantics, for the memory storage backend.

Every write the memory backend makes is recorded here as a ``ChangeEvent``, in commit
order, with a strictly increasing resume token, like the oplog behind a real change
stream. Readers resume after a token; a token older than what is retained raises
``ChangeHistoryLost``, as Mongo does when the oplog has rolled over.

What Mongo really does, and so does this log:

- ``fullDocument: updateLookup``: given a ``lookup``, the document of an update event is
  looked up when the event is *read*: a later version than the update wrote, or ``None``
  when the document was deleted since.
- The changes of one transaction (``transaction()``) share one cluster time; each keeps its
  own token.
- Dropping the database (``record_drop_database``) records ``drop`` per collection,
  ``dropDatabase`` and ``invalidate`` (neither with a collection): a stream ends there and
  is reopened after the invalidate's token (``startAfter``).

Each log is one *run* (the log lives as long as the process that keeps it): its tokens
carry a random run id before the sequence number. A token of another run, such as the
checkpoint of a publisher that read the booking-api before it restarted, raises
``ChangeHistoryLost``: its history is gone with that process, and resuming by sequence
number alone would skip the new run's first changes and hand out event ids (derived from
the token) that the old run already used.
"""

import asyncio
import bisect
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from slotstream_contracts.changes import (
    ChangeEvent,
    ClusterTime,
    Namespace,
    OperationType,
    ResumeToken,
    UpdateDescription,
)


class ChangeHistoryLost(Exception):
    """The resume point is older than the retained history (ChangeStreamHistoryLost)."""


class InvalidResumeToken(Exception):
    """The token was not issued by this change log."""


#: ``_data`` = the run id (16 hex digits) then the sequence number (16 hex digits).
_TOKEN_DATA: Final = re.compile(r"([0-9A-F]{16})([0-9A-F]{16})")


def _token(run: str, seq: int) -> ResumeToken:
    return {"_data": f"{run}{seq:016X}"}


def _time_key(event: ChangeEvent) -> tuple[int, int]:
    return (event.cluster_time.t, event.cluster_time.i)


#: (collection, document id) → the document as stored now, or None when it is gone
Lookup = Callable[[str, str], dict[str, Any] | None]


class MemoryChangeLog:
    def __init__(self, db: str, retain: int = 200_000, lookup: Lookup | None = None) -> None:
        self._db = db
        self._run = secrets.token_hex(8).upper()
        self._lookup = lookup
        self._transaction_time: ClusterTime | None = None
        self._in_transaction = False
        # A list rather than a bounded deque: readers slice it from the middle, which a
        # deque can only do item by item from one end. Exactly ``retain`` changes are
        # readable; the list itself is trimmed in chunks so appends stay amortised O(1).
        # ``_first_seq`` is the sequence number of ``_events[0]``.
        self._retain = retain
        self._events: list[ChangeEvent] = []
        self._first_seq = 1
        self._seq = 0
        self._last_time = ClusterTime(t=0, i=0)
        self._changed = asyncio.Event()
        self._released = False

    @property
    def latest_token(self) -> ResumeToken:
        """The token of the newest change (what a ``postBatchResumeToken`` would be)."""
        return _token(self._run, self._seq)

    def _seq_of(self, token: ResumeToken) -> int:
        data = token.get("_data")
        match = _TOKEN_DATA.fullmatch(data) if isinstance(data, str) else None
        if match is None:
            raise InvalidResumeToken(f"not a resume token of this change log: {token!r}")
        if match[1] != self._run:
            raise ChangeHistoryLost(
                f"resume token {token!r} is from another run of the change log "
                "(its process restarted since): its history is gone"
            )
        return int(match[2], 16)

    @property
    def _oldest_seq(self) -> int:
        """The sequence number of the oldest change still readable."""
        return max(self._first_seq, self._seq - self._retain + 1)

    @property
    def cluster_time(self) -> ClusterTime:
        """The cluster time now: changes recorded later have a larger one."""
        return self._last_time

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes recorded inside share one cluster time, as one transaction's do."""
        self._in_transaction = True
        try:
            yield
        finally:
            self._in_transaction = False
            self._transaction_time = None

    def _next_time(self) -> ClusterTime:
        if self._transaction_time is not None:
            return self._transaction_time
        now = int(time.time())
        last = self._last_time
        cluster_time = (
            ClusterTime(t=last.t, i=last.i + 1) if now <= last.t else ClusterTime(t=now, i=1)
        )
        self._last_time = cluster_time
        if self._in_transaction:
            self._transaction_time = cluster_time
        return cluster_time

    def record_drop_database(self, collections: Iterable[str]) -> ChangeEvent:
        """The database was dropped: ``drop`` per collection, ``dropDatabase``, then the
        ``invalidate`` that ends every database-level stream (returned)."""
        for collection in collections:
            self.record(OperationType.DROP, collection, None)
        self.record(OperationType.DROP_DATABASE, None, None)
        return self.record(OperationType.INVALIDATE, None, None)

    def record(
        self,
        operation: OperationType,
        collection: str | None,
        document_id: str | None,
        full_document: dict[str, Any] | None = None,
        before: dict[str, Any] | None = None,
        update: UpdateDescription | None = None,
        to: str | None = None,
    ) -> ChangeEvent:
        """Record one change; ``to`` is the new name of the collection a ``rename`` moved."""
        self._seq += 1
        cluster_time = self._next_time()
        event = ChangeEvent.model_validate(
            {
                "_id": _token(self._run, self._seq),
                "operationType": operation,
                "clusterTime": cluster_time,
                "ns": Namespace(db=self._db, coll=collection),
                "to": None if to is None else Namespace(db=self._db, coll=to),
                "documentKey": None if document_id is None else {"_id": document_id},
                "fullDocument": full_document,
                "fullDocumentBeforeChange": before,
                "updateDescription": update,
            }
        )
        self._events.append(event)
        if len(self._events) > self._retain + max(1, self._retain // 4):
            drop = len(self._events) - self._retain
            del self._events[:drop]
            self._first_seq += drop
        self._changed.set()
        return event

    def read_after(self, token: ResumeToken | None, limit: int = 1000) -> list[ChangeEvent]:
        """Changes after ``token`` (all retained ones when None), oldest first."""
        if token is None:
            start = 0
        else:
            seq = self._seq_of(token)
            if seq > self._seq:
                raise InvalidResumeToken(f"resume token {token!r} is from the future")
            if seq < self._oldest_seq - 1:
                raise ChangeHistoryLost(f"resume token {token!r} is older than the history")
            start = seq - self._first_seq + 1
        start = max(start, self._oldest_seq - self._first_seq)
        return self._as_read(self._events[start : start + limit])

    def read_from_time(self, at: ClusterTime, limit: int = 1000) -> list[ChangeEvent]:
        """Changes at or after a cluster time (``startAtOperationTime``)."""
        key = (at.t, at.i)
        oldest = self._oldest_seq - self._first_seq
        if self._seq > self._retain and _time_key(self._events[oldest]) > key:
            raise ChangeHistoryLost(f"operation time {at} is older than the history")
        start = bisect.bisect_left(self._events, key, lo=oldest, key=_time_key)
        return self._as_read(self._events[start : start + limit])

    def _as_read(self, events: list[ChangeEvent]) -> list[ChangeEvent]:
        """Update events with the document as it is now (``updateLookup``)."""
        lookup = self._lookup
        if lookup is None:
            return events
        return [
            event.model_copy(
                update={
                    "full_document": lookup(event.ns.coll or "", str(event.document_key["_id"]))
                }
            )
            if event.operation_type is OperationType.UPDATE and event.document_key
            else event
            for event in events
        ]

    def release_waiters(self) -> None:
        """Answer every waiting reader now and stop waiting from here on (server stopping)."""
        self._released = True
        self._changed.set()

    async def wait_after(
        self, token: ResumeToken | None, limit: int, max_wait: float
    ) -> list[ChangeEvent]:
        """Like ``read_after``, but waits up to ``max_wait`` seconds for a first change."""
        events = self.read_after(token, limit)
        if events or max_wait <= 0 or self._released:
            return events
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), max_wait)
        except TimeoutError:
            return []
        return self.read_after(token, limit)
