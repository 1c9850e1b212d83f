"""Record batch v2 decoding for the ingest consumer, straight from a fetch response's bytes.

The compiled twin ``_batches.pyx`` is what runs (built by ``make venv`` and the image);
this module is the same algorithm in Python, used only where the extension could not be
built, and tested against it and against aiokafka's own decoder on the same bytes
(``tests/unit/test_batches.py``). Both return, per data record at or after the fetch
offset, ``record_type(offset, key, value, headers, timestamp)`` where ``headers`` keeps
only the two the hub reads, ``ce_type`` and ``ce_id`` (in record order, duplicates kept),
and the offset to fetch next: past control batches (transaction markers) and past the last
offset of each batch, records removed by compaction included.

Format (Kafka's ``DefaultRecordBatch``): a 61-byte batch header (base offset, length,
leader epoch, magic 2, CRC-32C of everything after the CRC, attributes, last offset delta,
first and max timestamp, producer id/epoch, base sequence, record count), then records of
zigzag varints: length, attributes, timestamp delta, offset delta, key, value, headers.
Attributes: codec (bits 0-2, decompressed with aiokafka's own codec functions), log-append
time (bit 3), transactional (bit 4), control (bit 5). The next offset never goes back
below the fetch offset. A batch of another format (magic 0/1)
makes the whole fetch go through aiokafka's decoder instead (``None``).

Read-uncommitted only: records of aborted transactions are returned like aiokafka returns
them at that isolation level (the ingest consumer's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import CorruptRecordException
from aiokafka.record.util import calc_crc32c

LOG_OVERHEAD: Final = 12
RECORD_OVERHEAD_V0: Final = 14
HEADER_SIZE: Final = 61
CODECS: Final[dict[int, Callable[[Any], bytes]]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


def _varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise CorruptRecordException("record ends inside a varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise CorruptRecordException("varint longer than 10 bytes")
    value &= (1 << 64) - 1
    return (value >> 1) ^ -(value & 1), pos


def _span(pos: int, size: int, end: int) -> None:
    if size > end - pos:
        raise CorruptRecordException(f"can't read {size} bytes at {pos}")


def _records(
    buf: bytes | memoryview,
    pos: int,
    end: int,
    count: int,
    base_offset: int,
    first_timestamp: int,
    max_timestamp: int,
    log_append_time: bool,
    fetch_offset: int,
    record_type: Any,
    out: list[Any],
) -> int:
    for _ in range(count):
        length, pos = _varint(buf, pos, end)
        start = pos
        _attributes, pos = _varint(buf, pos, end)
        ts_delta, pos = _varint(buf, pos, end)
        offset_delta, pos = _varint(buf, pos, end)
        key_len, pos = _varint(buf, pos, end)
        key = None
        if key_len >= 0:
            _span(pos, key_len, end)
            key = bytes(buf[pos : pos + key_len])
            pos += key_len
        value_len, pos = _varint(buf, pos, end)
        value = None
        if value_len >= 0:
            _span(pos, value_len, end)
            value = bytes(buf[pos : pos + value_len])
            pos += value_len
        n_headers, pos = _varint(buf, pos, end)
        if n_headers < 0:
            raise CorruptRecordException(f"invalid number of record headers {n_headers}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(n_headers):
            name_len, pos = _varint(buf, pos, end)
            if name_len < 0:
                raise CorruptRecordException(f"invalid negative header key size {name_len}")
            _span(pos, name_len, end)
            name = bytes(buf[pos : pos + name_len])
            pos += name_len
            header_len, pos = _varint(buf, pos, end)
            header = None
            if header_len >= 0:
                _span(pos, header_len, end)
                header = bytes(buf[pos : pos + header_len])
                pos += header_len
            if name in (b"ce_type", b"ce_id"):
                headers.append((name.decode(), header))
        if pos - start != length:
            raise CorruptRecordException(
                f"invalid record size: expected {length} bytes, read {pos - start}"
            )
        offset = base_offset + offset_delta
        if offset < fetch_offset:
            continue
        timestamp = max_timestamp if log_append_time else first_timestamp + ts_delta
        out.append(record_type(offset, key, value, tuple(headers), timestamp))
    return pos


def decode_batches(
    data: bytes, fetch_offset: int, check_crcs: bool, record_type: Any
) -> tuple[list[Any], int] | None:
    """Data records at or after ``fetch_offset`` and the offset to fetch next; ``None``
    where a batch is not of format v2 (see the module docstring)."""
    size = len(data)
    pos = 0
    next_offset = fetch_offset
    out: list[Any] = []
    while size - pos >= LOG_OVERHEAD:
        length = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True)
        if length < RECORD_OVERHEAD_V0:
            raise CorruptRecordException(
                f"Record size is less than the minimum record overhead ({RECORD_OVERHEAD_V0})"
            )
        batch_end = pos + LOG_OVERHEAD + length
        if batch_end > size:
            break  # a partial batch at the end of a fetch response: fetched again next time
        if data[pos + 16] != 2:
            return None
        if batch_end - pos < HEADER_SIZE:
            raise CorruptRecordException(f"record batch of {batch_end - pos} bytes")
        if check_crcs:
            crc = int.from_bytes(data[pos + 17 : pos + 21], "big")
            if calc_crc32c(memoryview(data)[pos + 21 : batch_end]) != crc:
                raise CorruptRecordException("Invalid CRC")
        base_offset = int.from_bytes(data[pos : pos + 8], "big", signed=True)
        attributes = int.from_bytes(data[pos + 21 : pos + 23], "big", signed=True)
        last_delta = int.from_bytes(data[pos + 23 : pos + 27], "big", signed=True)
        batch_next = base_offset + last_delta + 1
        if attributes & 0x20:  # control batch (transaction marker): no data records
            next_offset = max(next_offset, batch_next)
            pos = batch_end
            continue
        first_timestamp = int.from_bytes(data[pos + 27 : pos + 35], "big", signed=True)
        max_timestamp = int.from_bytes(data[pos + 35 : pos + 43], "big", signed=True)
        count = int.from_bytes(data[pos + 57 : pos + 61], "big", signed=True)
        codec = attributes & 0x07
        buf: bytes | memoryview = data
        start, end = pos + HEADER_SIZE, batch_end
        if codec:
            decoder = CODECS.get(codec)
            if decoder is None:
                raise CorruptRecordException(f"unknown compression codec {codec}")
            buf = memoryview(decoder(memoryview(data)[start:end]))
            start, end = 0, len(buf)
        stop = _records(
            buf,
            start,
            end,
            count,
            base_offset,
            first_timestamp,
            max_timestamp,
            bool(attributes & 0x08),
            fetch_offset,
            record_type,
            out,
        )
        if stop != end:
            raise CorruptRecordException(
                f"{end - stop} unconsumed bytes after all records consumed"
            )
        next_offset = max(next_offset, batch_next)
        pos = batch_end
    return out, next_offset
