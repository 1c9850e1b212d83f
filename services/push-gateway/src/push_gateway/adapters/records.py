"""Lean record decoding for the ingest consumer: a fetched partition's record batches
decoded in one compiled pass, without aiokafka's record objects.

aiokafka keeps the protocol, connections and fetch pipelining. What changes is how a
fetched partition's bytes become records: aiokafka builds a ``DefaultRecord`` (with a list
of header tuples) per record, then wraps each in a ``ConsumerRecord`` dataclass (11
fields, a Python ``__init__``) handed out one generator ``next()`` at a time; the hub reads
three of its fields and two header values. Here a :class:`BatchReader` (compiled:
``_batches.pyx``; ``batches.py`` is its pure-Python twin) decodes the fetched bytes
``max_poll_records`` at a time as ``getmany`` takes them, straight into flat
:class:`IngestRecord` tuples (offset, key, value, the values of the ``ce_type`` and
``ce_id`` headers, timestamp: no header tuples to allocate and free per record) that the
cyclic GC never tracks, checking CRCs and decompressing like aiokafka; ``getmany`` gets
them as one list. Batches of the old formats (magic 0/1) go through aiokafka's own batch
objects (:func:`decode`).

A consumer opts in by passing :func:`lean_keys` as its ``key_deserializer`` (an identity
function, recognised by the factory installed in aiokafka's fetcher module); every other
consumer in the process keeps aiokafka's own records.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, Final, NamedTuple

import aiokafka.consumer.fetcher as _fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords

try:
    from push_gateway.adapters._batches import BatchReader as BatchReader
except ImportError:  # no C compiler where the package was installed (see setup.py)
    from push_gateway.adapters.batches import BatchReader as BatchReader  # type: ignore[assignment]

#: whether the compiled decoder runs (``KafkaIngest`` logs which one at start)
COMPILED: Final = BatchReader.__module__ == "push_gateway.adapters._batches"

_StockPartitionRecords: Final[Any] = _fetcher.PartitionRecords
_stock_getall: Final[Any] = _fetcher.FetchResult.getall
_READ_UNCOMMITTED: Final = 0


class IngestRecord(NamedTuple):
    """What the hub reads of a record (see ``push_gateway.domain.hub.Record``)."""

    offset: int
    key: bytes | None
    value: bytes | None
    #: the values of the record's ``ce_type`` and ``ce_id`` headers (the last of each)
    ce_type: bytes | None
    ce_id: bytes | None
    timestamp: int


def lean_keys(key: bytes | None) -> bytes | None:
    """The key, unchanged: passed as ``key_deserializer`` it selects lean records."""
    return key


_new = tuple.__new__


class FetchedRecords(MemoryRecords):  # type: ignore[misc] # aiokafka marks it final
    """aiokafka's ``MemoryRecords`` that keeps the fetched bytes for :class:`BatchReader`
    (installed as the fetcher's ``MemoryRecords``; aiokafka's own records still read it)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


_KEPT_HEADERS: Final = frozenset({"ce_type", "ce_id"})


def decode(records: Any, fetch_offset: int, check_crcs: bool) -> tuple[list[IngestRecord], int]:
    """All data records of one fetched partition at or after ``fetch_offset``, and the offset
    to fetch next (past control batches and records removed by compaction), through
    aiokafka's batch objects: what :class:`BatchReader` leaves to aiokafka (old formats)."""
    out: list[IngestRecord] = []
    append = out.append
    next_offset = fetch_offset
    while records.has_next():
        batch = records.next_batch()
        if check_crcs and not batch.validate_crc():
            raise CorruptRecordException("Invalid CRC")
        if batch.is_control_batch:
            next_offset = batch.next_offset
            continue
        for record in batch:
            offset = record.offset
            if offset >= fetch_offset:
                kept = dict(h for h in record.headers if h[0] in _KEPT_HEADERS)
                append(
                    _new(
                        IngestRecord,
                        (
                            offset,
                            record.key,
                            record.value,
                            kept.get("ce_type"),
                            kept.get("ce_id"),
                            -1 if record.timestamp is None else record.timestamp,
                        ),
                    )
                )
        next_offset = max(next_offset, batch.next_offset)
    return out, next_offset


class _ListReader:
    """Records decoded in one go (through aiokafka's batch objects), handed out like a
    :class:`BatchReader`'s."""

    __slots__ = ("_records", "_taken", "done", "next_offset", "scan_records")

    def __init__(self, records: list[IngestRecord], next_offset: int) -> None:
        self._records = records
        self._taken = 0
        self.done = False
        self.next_offset = next_offset
        self.scan_records = len(records)

    def take(self, max_records: int) -> list[IngestRecord]:
        start = self._taken
        self._taken = min(len(self._records), start + max_records)
        self.done = self._taken == len(self._records)
        return self._records[start : self._taken]


class LeanPartitionRecords:
    """Drop-in for aiokafka's ``PartitionRecords``: iteration, and ``next_fetch_offset``,
    which ``FetchResult`` checks against the consumer's position before handing records
    out and stores as the new position after (the fetch offset until a record is taken,
    then one past the last record taken, the end of the fetched batches once all are).

    Built in aiokafka's fetch task, decoded as the records are taken — ``getmany``'s
    ``max_poll_records`` at a time, in the consumer's task (as aiokafka's own records are):
    the hub routes them while they are still in the CPU's caches, and a corrupt batch
    raises from ``getmany`` and is fetched again from the position reached, instead of the
    exception ending aiokafka's fetch task for good."""

    __slots__ = ("_source", "_check_crcs", "_reader", "_fetch_offset", "_last", "_failed")

    def __init__(self, records: Any, fetch_offset: int, check_crcs: bool) -> None:
        self._source: Any = records
        self._check_crcs = check_crcs
        self._reader: BatchReader | _ListReader | None = None
        self._fetch_offset = fetch_offset
        self._last = -1  # the offset of the last record handed out
        self._failed = False

    def _opened(self) -> BatchReader | _ListReader:
        reader = self._reader
        if reader is None:
            source, self._source = self._source, None
            data = getattr(source, "data", None)
            if data is not None:
                reader = BatchReader(data, self._fetch_offset, self._check_crcs, IngestRecord)
            if reader is None or reader.legacy:  # old formats: aiokafka's batch objects
                reader = _ListReader(*decode(source, self._fetch_offset, self._check_crcs))
            self._reader = reader
        return reader

    def take(self, max_records: int | None) -> list[IngestRecord]:
        """The next ``max_records`` records (all that are left: ``None``)."""
        try:
            found: list[IngestRecord] = self._opened().take(
                sys.maxsize if max_records is None else max_records
            )
        except BaseException:
            # nothing more from this fetch: the position stays after the last record
            # handed out, where the partition is fetched again
            self._failed = True
            self._reader = _ListReader([], self._fetch_offset)
            raise
        if found:
            self._last = found[-1].offset
        return found

    @property
    def drained(self) -> bool:
        return self._reader is not None and self._reader.done

    def __iter__(self) -> Iterator[IngestRecord]:
        return self

    def __next__(self) -> IngestRecord:
        found = self.take(1)
        if not found:
            raise StopIteration
        return found[0]

    @property
    def next_fetch_offset(self) -> int:
        reader = self._reader
        if reader is not None and reader.done and not self._failed:
            return reader.next_offset
        return self._fetch_offset if self._last < 0 else self._last + 1


def _getall(result: Any, max_records: int | None = None) -> list[Any]:
    """``FetchResult.getall``: lean records are handed out as one list slice (aiokafka's
    own loop appends and counts per record), with the same position updates."""
    records = result._partition_records
    if type(records) is not LeanPartitionRecords:
        return _stock_getall(result, max_records)  # type: ignore[no-any-return]
    if not result.check_assignment(result._topic_partition):
        return []
    taken = records.take(max_records)
    result._update_position()
    if records.drained:
        result._partition_records = None
    return taken


def _partition_records(
    tp: Any,
    records: Any,
    aborted_transactions: Any,
    fetch_offset: int,
    key_deserializer: Any,
    value_deserializer: Any,
    check_crcs: bool,
    isolation_level: int,
) -> Any:
    if (
        key_deserializer is lean_keys
        and value_deserializer is None
        and isolation_level == _READ_UNCOMMITTED
    ):
        return LeanPartitionRecords(records, fetch_offset, check_crcs)
    return _StockPartitionRecords(
        tp,
        records,
        aborted_transactions,
        fetch_offset,
        key_deserializer,
        value_deserializer,
        check_crcs,
        isolation_level,
    )


def install_lean_records() -> None:
    """Let consumers created with ``key_deserializer=lean_keys`` get lean records
    (idempotent; aiokafka's fetcher looks ``MemoryRecords`` and ``PartitionRecords`` up at
    each fetch; ``FetchResult.getall`` keeps aiokafka's own for every other consumer)."""
    _fetcher.MemoryRecords = FetchedRecords
    _fetcher.PartitionRecords = _partition_records
    _fetcher.FetchResult.getall = _getall
