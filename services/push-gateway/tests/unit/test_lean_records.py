"""Lean ingest records: the same records and positions as aiokafka's own, without a
``ConsumerRecord`` per record."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer.fetcher import FetchResult
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from push_gateway.adapters.records import (
    FetchedRecords,
    IngestRecord,
    LeanPartitionRecords,
    _getall,
    _stock_getall,
    _StockPartitionRecords,
    decode,
    install_lean_records,
)
from slotstream_testkit.record_batches import BatchRecord, record_batch

TP = TopicPartition("t", 0)
HEADERS = [("ce_type", b"slot.updated"), ("ce_id", b"e-1"), ("content-type", b"x")]


def batch(base: int, count: int, *, control: bool = False, gap: int = 0) -> bytes:
    """``count`` records, offsets ``gap`` apart; the second without a key, the third
    without a value (a tombstone)."""
    records = [
        BatchRecord(
            i * (1 + gap),
            1_000 + i,
            None if i == 1 else f"k{i}".encode(),
            None if i == 2 else b'{"n":%d}' % i,
            HEADERS,
        )
        for i in range(count)
    ]
    return record_batch(base, records, control=control)


def stock(raw: bytes, fetch_offset: int) -> list[Any]:
    return list(
        _StockPartitionRecords(TP, MemoryRecords(raw), [], fetch_offset, None, None, False, 0)
    )


def test_decodes_what_aiokafka_decodes() -> None:
    raw = batch(0, 5) + batch(5, 4)
    lean, end = decode(MemoryRecords(raw), 0, check_crcs=True)
    expected = stock(raw, 0)
    # the values of the two headers the hub reads
    assert [(r.offset, r.key, r.value, b"slot.updated", b"e-1", r.timestamp) for r in expected] == [
        (r.offset, r.key, r.value, r.ce_type, r.ce_id, r.timestamp) for r in lean
    ]
    assert end == 9
    assert all(type(r) is IngestRecord for r in lean)


def test_skips_records_before_the_fetch_offset() -> None:
    lean, end = decode(MemoryRecords(batch(10, 5)), 12, check_crcs=False)
    assert [r.offset for r in lean] == [12, 13, 14]
    assert end == 15


def test_positions_follow_what_was_taken() -> None:
    raw = batch(0, 3, gap=1)  # offsets 0, 2, 4 (compacted), batch ends at 5
    records = LeanPartitionRecords(MemoryRecords(raw), 0, check_crcs=False)
    assert records.next_fetch_offset == 0
    assert next(records).offset == 0
    assert records.next_fetch_offset == 1
    assert next(records).offset == 2
    assert records.next_fetch_offset == 3
    assert next(records).offset == 4
    assert records.next_fetch_offset == 5


class _State:
    paused = False

    def __init__(self) -> None:
        self.position = 0

    def consumed_to(self, position: int) -> None:
        self.position = position


class _Assignment:
    active = True

    def __init__(self) -> None:
        self.state = _State()

    def state_value(self, _tp: TopicPartition) -> _State:
        return self.state


#: aiokafka's own ``FetchResult.getall`` (one record at a time through ``__next__``) and the
#: one ``install_lean_records`` sets (one list slice), on the same lean records
GETALLS = {"aiokafka": _stock_getall, "lean": _getall}


@pytest.fixture(autouse=True)
def _lean_records_installed() -> None:
    install_lean_records()


def fetch_result(assignment: _Assignment, records: LeanPartitionRecords) -> FetchResult:
    return FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)


@pytest.mark.parametrize("getall", GETALLS.values(), ids=GETALLS.keys())
def test_fetch_result_hands_out_in_max_records_steps(getall: Any) -> None:
    assignment = _Assignment()
    result = fetch_result(assignment, LeanPartitionRecords(FetchedRecords(batch(0, 5)), 0, False))
    first = getall(result, max_records=2)
    assert [r.offset for r in first] == [0, 1]
    assert assignment.state.position == 2
    rest = getall(result, max_records=10)
    assert [r.offset for r in rest] == [2, 3, 4]
    assert assignment.state.position == 5
    assert not result.has_more()


@pytest.mark.parametrize("getall", GETALLS.values(), ids=GETALLS.keys())
def test_all_records_taken_in_exact_steps_end_at_the_batch_end(getall: Any) -> None:
    assignment = _Assignment()
    raw = batch(0, 4, gap=1)  # offsets 0, 2, 4, 6, the batch ends at 7
    result = fetch_result(assignment, LeanPartitionRecords(FetchedRecords(raw), 0, False))
    assert [r.offset for r in getall(result, max_records=2)] == [0, 2]
    assert assignment.state.position == 3
    assert [r.offset for r in getall(result, max_records=2)] == [4, 6]
    assert assignment.state.position == 7
    if result.has_more():  # aiokafka's generator sees its end one call later
        assert getall(result, max_records=2) == []
    assert assignment.state.position == 7
    assert not result.has_more()


@pytest.mark.parametrize("getall", GETALLS.values(), ids=GETALLS.keys())
def test_a_moved_position_gets_nothing(getall: Any) -> None:
    assignment = _Assignment()
    result = fetch_result(assignment, LeanPartitionRecords(FetchedRecords(batch(0, 3)), 0, False))
    assignment.state.position = 10  # a seek since the fetch
    assert getall(result, max_records=10) == []
    assert assignment.state.position == 10


def test_other_consumers_records_keep_aiokafkas_getall() -> None:
    assignment = _Assignment()
    stock_records = _StockPartitionRecords(
        TP, MemoryRecords(batch(0, 3)), [], 0, None, None, False, 0
    )
    result = fetch_result(assignment, stock_records)
    found = result.getall(max_records=10)
    assert [type(r).__name__ for r in found] == ["ConsumerRecord"] * 3
    assert assignment.state.position == 3


@pytest.mark.parametrize("getall", GETALLS.values(), ids=GETALLS.keys())
def test_control_batches_only_move_the_position(getall: Any) -> None:
    assignment = _Assignment()
    assignment.state.position = 3
    raw = batch(3, 1, control=True)
    result = fetch_result(assignment, LeanPartitionRecords(FetchedRecords(raw), 3, False))
    assert getall(result, max_records=10) == []
    assert assignment.state.position == 4


def test_a_corrupt_batch_raises_from_getall_and_is_fetched_again() -> None:
    """Decoded in the consumer's task, not aiokafka's fetch task (an exception there ends
    the fetch task for good): getmany raises, then the partition is fetched again from the
    same position, as with aiokafka's own records."""
    raw = bytearray(batch(0, 3))
    raw[-1] ^= 0xFF  # the CRC no longer matches
    assignment = _Assignment()
    records = LeanPartitionRecords(FetchedRecords(bytes(raw)), 0, check_crcs=True)
    result = fetch_result(assignment, records)  # what the fetch task does: no decoding yet
    with pytest.raises(CorruptRecordException):
        _getall(result, max_records=10)
    assert assignment.state.position == 0
    assert _getall(result, max_records=10) == []
    assert assignment.state.position == 0
    assert not result.has_more()  # the fetcher drops it and fetches offset 0 again


def test_a_corrupt_batch_after_records_handed_out_keeps_their_position() -> None:
    raw = bytearray(batch(0, 3) + batch(3, 3))
    raw[-1] ^= 0xFF  # the second batch's CRC no longer matches
    assignment = _Assignment()
    result = fetch_result(assignment, LeanPartitionRecords(FetchedRecords(bytes(raw)), 0, True))
    assert [r.offset for r in _getall(result, max_records=3)] == [0, 1, 2]
    assert assignment.state.position == 3
    with pytest.raises(CorruptRecordException):
        _getall(result, max_records=3)
    assert _getall(result, max_records=3) == []
    assert assignment.state.position == 3  # fetched again from the corrupt batch
    assert not result.has_more()
