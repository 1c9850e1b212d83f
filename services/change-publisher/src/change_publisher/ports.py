"""The publisher's outbound ports. Each has a real adapter and an in-memory fake."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from change_publisher.domain.lease import Lease
from change_publisher.domain.records import OutgoingRecord
from slotstream_contracts.changes import ChangeEvent, ClusterTime, ResumeToken


class HistoryLost(Exception):
    """The resume point is no longer in the source's history (or not one of its tokens)."""


class SourceUnavailable(Exception):
    """The change source cannot be reached right now; retry from the last safe position."""


class KafkaUnavailable(Exception):
    """A send failed after the producer's own retries; retry from the last safe position."""


class Fenced(Exception):
    """A newer leader (higher lease epoch) has written the checkpoint: stop producing."""


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a change stream starts: after a token, at an operation time, or (neither) now."""

    after: ResumeToken | None = None
    at: ClusterTime | None = None

    def describe(self) -> str:
        if self.after is not None:
            return f"after {self.after.get('_data', self.after)}"
        if self.at is not None:
            return f"at {self.at.t}.{self.at.i}"
        return "latest"


_STREAM_WIDE_OPS = frozenset({"invalidate", "dropDatabase"})


def watched(change: ChangeEvent, collections: frozenset[str] | None) -> bool:
    """The filter every source applies (Mongo's ``$match``): changes of the configured
    collections, a ``rename`` onto one of them (a reload replacing it), plus the
    stream-wide ``invalidate`` and ``dropDatabase``."""
    if collections is None or change.operation_type.value in _STREAM_WIDE_OPS:
        return True
    to = change.to
    return change.ns.coll in collections or (
        to is not None and to.db == change.ns.db and to.coll in collections
    )


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    changes: Sequence[ChangeEvent]
    #: The stream's position after this batch (Mongo's ``postBatchResumeToken``): lets an
    #: idle stream checkpoint progress. None when the source has not told one yet.
    resume_token: ResumeToken | None


@dataclass(frozen=True, slots=True)
class SnapshotPart:
    """One collection's copy, and an operation time captured before the copy started."""

    operation_time: ClusterTime
    documents: AsyncIterator[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The resume point: a token, or (right after a snapshot) an operation time."""

    token: ResumeToken | None
    at: ClusterTime | None
    epoch: int
    saved_at: datetime

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(after=self.token, at=None if self.token else self.at)


class ChangeStream(Protocol):
    #: The concrete position the stream opened at, when the source tells it (for a
    #: ``latest`` start: so a failure before the first change cannot skip changes).
    start_token: ResumeToken | None

    async def next_batch(self) -> ChangeBatch:
        """The next changes (possibly none after a wait). Raises HistoryLost or
        SourceUnavailable."""
        ...

    async def aclose(self) -> None: ...


class ChangeSource(Protocol):
    async def open(self, position: StreamPosition) -> ChangeStream: ...

    async def snapshot(self, collection: str) -> SnapshotPart: ...

    async def close(self) -> None: ...


class CheckpointStore(Protocol):
    async def load(self, name: str) -> Checkpoint | None: ...

    async def save(self, name: str, checkpoint: Checkpoint) -> None:
        """Store durably; raise Fenced if a newer epoch has written already."""
        ...

    async def close(self) -> None: ...


class LeaseStore(Protocol):
    async def acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take (or keep) the lease; None when another holder's lease is still valid."""
        ...

    async def renew(self, lease: Lease, ttl: float) -> Lease | None:
        """Extend the lease; None when it was lost (another holder or epoch)."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """Records handed to Kafka as one produce batch: ``future`` resolves when Kafka
    acknowledged them all (``acks=all``) and fails when the producer gave up."""

    future: "asyncio.Future[Any]"
    #: Positions, in the sequence given to ``send_many``, of the records in this batch.
    indices: Sequence[int]


class EventProducer(Protocol):
    async def start(self) -> None: ...

    async def stop(self, drain_seconds: float) -> None:
        """Wait at most ``drain_seconds`` for what is pending to be acknowledged, give
        up the rest (its futures fail) and close: nothing more is sent."""
        ...

    async def send_many(self, records: Sequence[OutgoingRecord]) -> list[PendingBatch]:
        """Hand records to the producer in order (per partition order is kept) without
        waiting for acknowledgements; waits only while the producer's queue is full."""
        ...

    async def partitions(self, topic: str) -> list[int]: ...

    async def probe(self) -> None:
        """Return when the cluster answers a metadata request; raise otherwise."""
        ...
