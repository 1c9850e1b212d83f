"""The record-batch decoder of the ingest consumer: compiled (``_batches``) and pure-Python
(``batches``) give the same records and next offset as aiokafka's own decoder for the same
bytes — compressed or not, control batches, compaction gaps, log-append time, a partial
batch at the end of a fetch — and the same error on corrupt bytes."""

from __future__ import annotations

import gc
import itertools
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from push_gateway.adapters import _batches, batches, records
from push_gateway.adapters.records import (
    FetchedRecords,
    IngestRecord,
    LeanPartitionRecords,
    _StockPartitionRecords,
)
from push_gateway.testing import header_values
from slotstream_testkit.record_batches import BatchRecord, record_batch

TP = TopicPartition("t", 0)
CODECS = (0, 1, 2, 3, 4)  # none, gzip, snappy, lz4, zstd
DECODERS = {"compiled": _batches.decode_batches, "python": batches.decode_batches}
READERS: dict[str, Any] = {"compiled": _batches.BatchReader, "python": batches.BatchReader}

header_names = st.sampled_from(["ce_type", "ce_id", "ce_subject", "content-type"]) | st.text(
    max_size=8
)
maybe_bytes = st.none() | st.binary(max_size=40)
records_strategy = st.lists(
    st.tuples(
        maybe_bytes,  # key
        maybe_bytes | st.binary(min_size=200, max_size=600),  # value
        st.lists(st.tuples(header_names, maybe_bytes), max_size=5),  # headers
        st.integers(min_value=0, max_value=3),  # offset gap before it (compaction)
        st.integers(min_value=0, max_value=10_000),  # timestamp delta
    ),
    min_size=1,
    max_size=12,
)


@dataclass(frozen=True)
class Batch:
    codec: int
    control: bool
    log_append_time: bool
    records: list[tuple[Any, ...]]


batch_strategy = st.builds(
    Batch,
    codec=st.sampled_from(CODECS),
    control=st.booleans(),
    log_append_time=st.booleans(),
    records=records_strategy,
)


def build(base: int, spec: Batch) -> tuple[bytes, int]:
    """The batch's bytes at ``base``, and the offset after it."""
    records = []
    delta = -1
    for key, value, headers, gap, ts in spec.records:
        delta += 1 + gap
        records.append(BatchRecord(delta, 1_700_000_000_000 + ts, key, value, headers))
    raw = record_batch(
        base,
        records,
        control=spec.control,
        log_append_time=spec.log_append_time,
        codec=spec.codec,
    )
    return raw, base + delta + 1


def fetch(specs: list[Batch], first: int = 0) -> bytes:
    data = b""
    base = first
    for spec in specs:
        raw, base = build(base, spec)
        data += raw
    return data


def aiokafka_decoded(data: bytes, fetch_offset: int) -> tuple[list[tuple[Any, ...]], int]:
    stock = _StockPartitionRecords(TP, MemoryRecords(data), [], fetch_offset, None, None, True, 0)
    found = [
        (
            r.offset,
            r.key,
            r.value,
            *header_values(r.headers),
            -1 if r.timestamp is None else r.timestamp,
        )
        for r in stock
    ]
    return found, stock.next_fetch_offset


def as_tuples(decoded: tuple[list[IngestRecord], int] | None) -> tuple[list[tuple[Any, ...]], int]:
    assert decoded is not None
    found, end = decoded
    assert all(type(r) is IngestRecord for r in found)
    return [tuple(r) for r in found], end


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(batch_strategy, min_size=1, max_size=4),
    first=st.integers(min_value=0, max_value=2**40),
    skip=st.integers(min_value=0, max_value=30),
    partial=st.integers(min_value=0, max_value=80),
)
def test_both_decoders_agree_with_aiokafka(
    specs: list[Batch], first: int, skip: int, partial: int
) -> None:
    data = fetch(specs, first)
    # the start of one more batch, cut off by the fetch size: left for the next fetch
    data += fetch([specs[0]], first + 10_000)[:partial]
    # a broker answers from the batch holding the fetch offset (aiokafka, given an offset
    # past a batch, would move its position back to that batch's end; the decoders never
    # move it back)
    _, first_end = build(first, specs[0])
    fetch_offset = first + skip % (first_end - first)
    expected = aiokafka_decoded(data, fetch_offset)
    for decode in DECODERS.values():
        assert as_tuples(decode(data, fetch_offset, True, IngestRecord)) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(batch_strategy, min_size=1, max_size=3),
    steps=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10),
)
def test_taking_in_steps_gives_the_same_records(specs: list[Batch], steps: list[int]) -> None:
    data = fetch(specs)
    expected = as_tuples(_batches.decode_batches(data, 0, True, IngestRecord))
    for reader_type in READERS.values():
        reader = reader_type(data, 0, True, IngestRecord)
        assert not reader.legacy
        found: list[tuple[Any, ...]] = []
        for step in itertools.islice(itertools.cycle(steps), 100):  # ≤ 48 records
            taken = reader.take(step)
            assert len(taken) <= step
            assert reader.done or len(taken) == step  # short only at the end
            found.extend(tuple(r) for r in taken)
            if reader.done:
                break
        assert reader.done
        assert reader.take(5) == []
        assert (found, reader.next_offset) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(batch_strategy, min_size=2, max_size=4),
    at=st.integers(min_value=1, max_value=3),
    hole=st.integers(min_value=1, max_value=50),
)
def test_a_contiguous_reader_stops_at_a_hole_between_batches(
    specs: list[Batch], at: int, hole: int
) -> None:
    """A batch starting past the end of the one before (a broker that answered without a
    batch it gave offsets to): read as contiguous, the records end before it, the next
    fetch is the hole's first offset and ``hole_end`` where the stored batch starts; read
    as a compacted topic's, every record (both readers alike)."""
    at = min(at, len(specs) - 1)
    before = fetch(specs[:at])
    hole_start = 0
    for spec in specs[:at]:
        _, hole_start = build(hole_start, spec)
    after = fetch(specs[at:], hole_start + hole)
    expected_before = as_tuples(_batches.decode_batches(before, 0, True, IngestRecord))
    expected_all = as_tuples(_batches.decode_batches(before + after, 0, True, IngestRecord))
    for reader_type in READERS.values():
        reader = reader_type(before + after, 0, True, IngestRecord, contiguous=True)
        found = [tuple(r) for r in reader.take(1000)]
        assert reader.done
        assert (found, reader.next_offset) == expected_before
        assert (reader.scan_next, reader.hole_end) == (hole_start, hole_start + hole)
        loose = reader_type(before + after, 0, True, IngestRecord)
        assert ([tuple(r) for r in loose.take(1000)], loose.next_offset) == expected_all
        assert loose.hole_end == -1


def test_a_contiguous_reader_reads_a_first_batch_holding_the_fetch_offset() -> None:
    """A broker answers from the batch holding the fetch offset: it starts before the
    offset, which is no hole."""
    spec = Batch(0, False, False, [(b"k", b"v", [], 0, 0)] * 4)
    data = fetch([spec, spec], 10)
    for reader_type in READERS.values():
        reader = reader_type(data, 12, True, IngestRecord, contiguous=True)
        assert [r.offset for r in reader.take(100)] == [12, 13, 14, 15, 16, 17]
        assert (reader.scan_next, reader.hole_end) == (18, -1)


@settings(max_examples=200, deadline=None)
@given(
    spec=batch_strategy,
    where=st.integers(min_value=0, max_value=10**6),
    xor=st.integers(min_value=1, max_value=255),
    cut=st.integers(min_value=0, max_value=10**6),
)
def test_corrupt_bytes_give_the_same_answer_from_both(
    spec: Batch, where: int, xor: int, cut: int
) -> None:
    good = fetch([spec])
    bad = bytearray(good)
    bad[where % len(bad)] ^= xor
    bad = bad[: len(bad) - cut % 3]  # sometimes also one or two bytes short
    for check_crcs in (True, False):
        outcomes: list[tuple[str, object]] = []
        for decode in DECODERS.values():
            try:
                outcomes.append(("ok", as_tuples(decode(bytes(bad), 0, check_crcs, IngestRecord))))
            except Exception as exc:  # the same exception type from both is the contract
                outcomes.append(("error", type(exc)))
        assert outcomes[0] == outcomes[1]
        if check_crcs and len(bad) == len(good) and where % len(bad) >= 17:
            assert outcomes[0] == ("error", CorruptRecordException)  # the CRC catches it


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_crc32c_matches_aiokafka(data: bytes) -> None:
    expected = calc_crc32c(data)
    assert _batches.crc32c(data) == expected
    assert _batches.crc32c(data, table_only=True) == expected


def test_the_compiled_decoder_is_the_one_in_use() -> None:
    """``make venv`` and the image build the extension; a broken build fails here."""
    assert records.COMPILED
    assert records.BatchReader is _batches.BatchReader


def test_records_are_not_tracked_by_the_cyclic_gc() -> None:
    spec = Batch(0, False, False, [(b"k", b"v", [("ce_type", b"t"), ("ce_id", b"i")], 0, 0)])
    decoded = _batches.decode_batches(fetch([spec]), 0, True, IngestRecord)
    assert decoded is not None
    [record] = decoded[0]
    assert (record.ce_type, record.ce_id) == (b"t", b"i")
    assert not gc.is_tracked(record)


def test_old_formats_are_left_to_aiokafka() -> None:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    builder.append(0, timestamp=1_000, key=b"k", value=b"v")
    builder.append(1, timestamp=1_001, key=b"k2", value=b"v2")
    data = bytes(builder.build())
    for decode in DECODERS.values():
        assert decode(data, 0, True, IngestRecord) is None
    lean = LeanPartitionRecords(FetchedRecords(data), 0, check_crcs=True)
    assert [(r.offset, r.key, r.value) for r in lean] == [(0, b"k", b"v"), (1, b"k2", b"v2")]
    assert lean.next_fetch_offset == 2


@pytest.mark.parametrize("codec", CODECS)
def test_lean_partition_records_decode_the_fetched_bytes(codec: int) -> None:
    headers = [("ce_subject", b"s"), ("ce_type", b"slot.updated"), ("ce_id", b"e-1")]
    spec = Batch(codec, False, False, [(b"k", b'{"n":1}', headers, 0, 5)] * 3)
    data = fetch([spec], 40)
    lean = LeanPartitionRecords(FetchedRecords(data), 41, check_crcs=True)
    assert [tuple(r) for r in lean] == [
        (
            offset,
            b"k",
            b'{"n":1}',
            b"slot.updated",
            b"e-1",
            1_700_000_000_005,
        )
        for offset in (41, 42)
    ]
    assert lean.next_fetch_offset == 43


def test_without_the_extension_the_python_twin_runs() -> None:
    """Where nothing could compile (setup.py builds the extension as optional)."""
    code = (
        "import sys\n"
        "sys.modules['push_gateway.adapters._batches'] = None  # as if never built\n"
        "from push_gateway.adapters import records\n"
        "assert not records.COMPILED\n"
        "assert records.BatchReader.__module__ == 'push_gateway.adapters.batches'\n"
        "print('python')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.stdout.strip() == "python", result.stderr
