"""Record batch v2 decoding for the ingest consumer, straight from a fetch response's bytes.

The compiled twin ``_batches.pyx`` is what runs (built by ``make venv`` and the image);
this module is the same algorithm in Python, used only where the extension could not be
built, and tested against it and against aiokafka's own decoder on the same bytes
(``tests/unit/test_batches.py``). Both give, per data record at or after the fetch
offset, ``record_type(offset, key, value, ce_type, ce_id, timestamp)`` with the values
of the only two headers the hub reads (the last of each name; None where a record has
none), and the offset to fetch next: past control batches (transaction markers) and past
the last offset of each batch, records removed by compaction included.

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

import sys
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


def _nullable_bytes(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes | None, int]:
    """A varint length and that many bytes (a negative length: None)."""
    size, pos = _varint(buf, pos, end)
    if size < 0:
        return None, pos
    _span(pos, size, end)
    return bytes(buf[pos : pos + size]), pos + size


class BatchReader:
    """The data records of one fetched partition's record batches, decoded a few hundred at
    a time by :meth:`take`, so that the hub routes them while they are still in the CPU's
    caches (a whole fetch is thousands of records, megabytes of objects).

    Building one only looks at the batch headers and never raises (aiokafka builds it in
    its fetch task): ``legacy`` says a batch is of an older format (then aiokafka decodes
    the fetch). ``take`` raises ``CorruptRecordException`` for a bad CRC or malformed bytes,
    and after it — or any exception — the reader is ``done``; records decoded before the
    error in the same call are returned first, the error raised by the next call (so the
    consumer's position moves past them, as with aiokafka's records). ``next_offset``: where
    to fetch next once ``done``.

    ``contiguous``: the topic's offsets have no holes (``cleanup.policy=delete``: the data
    topics), so a batch that starts past the offset after the batches before it means the
    broker answered without one it has given offsets to (Tansu stores a produce request's
    batch after raising the high watermark: another producer's later batch can be there
    first). The records then end before that batch, and ``hole_end`` is where it starts
    (-1: no hole); ``scan_next`` is the hole's first offset, fetched again.
    """

    def __init__(
        self,
        data: bytes,
        fetch_offset: int,
        check_crcs: bool,
        record_type: Any,
        start: int = 0,
        end: int = -1,
        contiguous: bool = False,
    ) -> None:
        self.data = data
        self.fetch_offset = fetch_offset
        self.next_offset = fetch_offset
        self.check_crcs = check_crcs
        self.record_type = record_type
        self.done = False
        self.legacy = False
        #: the batches are ``data[start:end]`` (a fetch response's record set, not copied)
        self._end = len(data) if end < 0 else min(end, len(data))
        self._pos = start
        self._buf: bytes | memoryview = b""
        self._rpos = self._rend = self._left = 0
        self._base_offset = self._first_timestamp = self._max_timestamp = self._batch_next = 0
        self._log_append_time = False
        self._error: Exception | None = None
        #: from the batch headers alone: the offset after the last whole batch (where the
        #: next fetch starts when every batch decodes), and the records of the data batches
        self.scan_next = fetch_offset
        self.scan_records = 0
        self.hole_end = -1
        pos, size = start, self._end
        while size - pos >= LOG_OVERHEAD:
            length = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True)
            end_at = pos + LOG_OVERHEAD + length
            if length < RECORD_OVERHEAD_V0 or end_at > size:
                break
            if data[pos + 16] != 2:
                self.legacy = True
                break
            if end_at - pos >= HEADER_SIZE:
                base = int.from_bytes(data[pos : pos + 8], "big", signed=True)
                if contiguous and base > self.scan_next:
                    self.hole_end = base
                    self._end = pos
                    break
                last_delta = int.from_bytes(data[pos + 23 : pos + 27], "big", signed=True)
                self.scan_next = max(self.scan_next, base + last_delta + 1)
                if not data[pos + 22] & 0x20:
                    self.scan_records += max(
                        0, int.from_bytes(data[pos + 57 : pos + 61], "big", signed=True)
                    )
            pos = end_at

    def take(self, max_records: int) -> list[Any]:
        """Up to ``max_records`` more data records; afterwards either ``done`` or more
        records are left to take."""
        out: list[Any] = []
        try:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._left == 0:
                self._advance()
            while len(out) < max_records and not self.done:
                record = self._record()
                if record is not None:
                    out.append(record)
                if self._left == 0:
                    try:
                        self._close()
                        self._advance()
                    except Exception as exc:
                        if not out:
                            raise
                        self._error = exc  # the records before it first, then the error
                        break
        except BaseException:
            self.done = True
            self._left = 0
            raise
        return out

    def _close(self) -> None:
        if self._rpos != self._rend:
            raise CorruptRecordException(
                f"{self._rend - self._rpos} unconsumed bytes after all records consumed"
            )
        self.next_offset = max(self.next_offset, self._batch_next)

    def _advance(self) -> None:
        """Open the next batch with records in it, or set ``done``."""
        data, size = self.data, self._end
        while self._left == 0 and not self.done:
            pos = self._pos
            if size - pos < LOG_OVERHEAD:
                self.done = True
                break
            length = int.from_bytes(data[pos + 8 : pos + 12], "big", signed=True)
            if length < RECORD_OVERHEAD_V0:
                raise CorruptRecordException(
                    f"Record size is less than the minimum record overhead ({RECORD_OVERHEAD_V0})"
                )
            end = pos + LOG_OVERHEAD + length
            if end > size:
                self.done = True  # a partial batch at the end of a fetch: fetched again
                break
            if end - pos < HEADER_SIZE:
                raise CorruptRecordException(f"record batch of {end - pos} bytes")
            if self.check_crcs:
                crc = int.from_bytes(data[pos + 17 : pos + 21], "big")
                if calc_crc32c(memoryview(data)[pos + 21 : end]) != crc:
                    raise CorruptRecordException("Invalid CRC")
            self._pos = end
            self._base_offset = int.from_bytes(data[pos : pos + 8], "big", signed=True)
            attributes = int.from_bytes(data[pos + 21 : pos + 23], "big", signed=True)
            last_delta = int.from_bytes(data[pos + 23 : pos + 27], "big", signed=True)
            self._batch_next = self._base_offset + last_delta + 1
            if attributes & 0x20:  # control batch (transaction marker): no data records
                self.next_offset = max(self.next_offset, self._batch_next)
                continue
            self._first_timestamp = int.from_bytes(data[pos + 27 : pos + 35], "big", signed=True)
            self._max_timestamp = int.from_bytes(data[pos + 35 : pos + 43], "big", signed=True)
            self._log_append_time = bool(attributes & 0x08)
            codec = attributes & 0x07
            if codec:
                decoder = CODECS.get(codec)
                if decoder is None:
                    raise CorruptRecordException(f"unknown compression codec {codec}")
                self._buf = bytes(decoder(memoryview(data)[pos + HEADER_SIZE : end]))
                self._rpos, self._rend = 0, len(self._buf)
            else:
                self._buf, self._rpos, self._rend = data, pos + HEADER_SIZE, end
            self._left = max(0, int.from_bytes(data[pos + 57 : pos + 61], "big", signed=True))
            if self._left == 0:
                self._close()

    def _record(self) -> Any:
        """Decode the open batch's next record: the record, or None before the fetch offset."""
        buf, pos, end = self._buf, self._rpos, self._rend
        self._left -= 1
        length, pos = _varint(buf, pos, end)
        start = pos
        _attributes, pos = _varint(buf, pos, end)
        ts_delta, pos = _varint(buf, pos, end)
        offset_delta, pos = _varint(buf, pos, end)
        key, pos = _nullable_bytes(buf, pos, end)
        value, pos = _nullable_bytes(buf, pos, end)
        n_headers, pos = _varint(buf, pos, end)
        if n_headers < 0:
            raise CorruptRecordException(f"invalid number of record headers {n_headers}")
        ce_type = ce_id = None
        for _ in range(n_headers):
            name, pos = _nullable_bytes(buf, pos, end)
            if name is None:
                raise CorruptRecordException("invalid negative header key size")
            header, pos = _nullable_bytes(buf, pos, end)
            if name == b"ce_type":
                ce_type = header
            elif name == b"ce_id":
                ce_id = header
        if pos - start != length:
            raise CorruptRecordException(
                f"invalid record size: expected {length} bytes, read {pos - start}"
            )
        self._rpos = pos
        offset = self._base_offset + offset_delta
        if offset < self.fetch_offset:
            return None
        if self._log_append_time:
            timestamp = self._max_timestamp
        else:
            timestamp = self._first_timestamp + ts_delta
        return self.record_type(offset, key, value, ce_type, ce_id, timestamp)


def decode_batches(
    data: bytes, fetch_offset: int, check_crcs: bool, record_type: Any
) -> tuple[list[Any], int] | None:
    """Every data record at or after ``fetch_offset`` and the offset to fetch next; ``None``
    where a batch is not of format v2 (:class:`BatchReader` in one go)."""
    reader = BatchReader(data, fetch_offset, check_crcs, record_type)
    if reader.legacy:
        return None
    records = reader.take(sys.maxsize)
    return records, reader.next_offset


#: the FetchResponse versions :func:`parse_fetch_response` reads (non-flexible, with the
#: record batches of format v2; Apache Kafka 4.x serves Fetch v4-v17)
FETCH_VERSIONS: Final = range(4, 12)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int) -> int:
        at = self.pos
        if size > len(self.data) - at:
            raise CorruptRecordException(
                f"fetch response ends at {len(self.data)}, need {at + size}"
            )
        self.pos = at + size
        return at

    def number(self, size: int) -> int:
        at = self.take(size)
        return int.from_bytes(self.data[at : at + size], "big", signed=True)


def parse_fetch_response(data: bytes, start: int, version: int) -> tuple[int, list[Any]]:
    """A FetchResponse body (``data[start:]``, after the correlation id) of ``version``:
    the top-level error code (v7+, else 0) and per partition, in response order,
    ``(topic, partition, error_code, high_watermark, log_start_offset, records_start,
    records_end)`` — the record set is ``data[records_start:records_end]`` (empty when the
    broker sent none), ``log_start_offset`` is -1 before v5. Aborted transactions are
    skipped (the ingest reads uncommitted), so is the preferred read replica (v11)."""
    if version not in FETCH_VERSIONS:
        raise ValueError(f"FetchResponse v{version} is not read here")
    reader = _Reader(data, start)
    reader.number(4)  # throttle_time_ms
    error_code = 0
    if version >= 7:
        error_code = reader.number(2)
        reader.number(4)  # session_id
    partitions: list[Any] = []
    for _ in range(max(0, reader.number(4))):
        name_size = max(0, reader.number(2))
        at = reader.take(name_size)
        topic = data[at : at + name_size].decode()
        for _ in range(max(0, reader.number(4))):
            partition = reader.number(4)
            code = reader.number(2)
            highwater = reader.number(8)
            reader.number(8)  # last_stable_offset
            log_start = reader.number(8) if version >= 5 else -1
            aborted = reader.number(4)
            if aborted > 0:
                reader.take(16 * aborted)
            if version >= 11:
                reader.number(4)  # preferred_read_replica
            size = reader.number(4)
            records_start = reader.take(max(0, size))
            partitions.append(
                (
                    topic,
                    partition,
                    code,
                    highwater,
                    log_start,
                    records_start,
                    records_start + max(0, size),
                )
            )
    return error_code, partitions
