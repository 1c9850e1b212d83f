# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled record-batch decoder of the ingest consumer (see ``batches.py``, the
pure-Python twin it must agree with, byte for byte and record for record)."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp
from cpython.pyport cimport PY_SSIZE_T_MAX

from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.errors import CorruptRecordException

cdef extern from "Python.h":
    int PyGC_Enable()
    int PyGC_Disable()

cdef extern from "_crc32c.h":
    uint32_t slot_crc32c(const uint8_t* data, size_t length) nogil
    uint32_t slot_crc32c_table_only(const uint8_t* data, size_t length) nogil

cdef extern from *:
    """
    /* A record (a tuple subclass without __dict__) from its six parts, not tracked by
       the cyclic GC: it holds only ints, bytes and None, so it can never be part of a
       cycle. */
    static PyObject* slot_new_record(PyObject* type, PyObject* offset, PyObject* key,
                                     PyObject* value, PyObject* ce_type, PyObject* ce_id,
                                     PyObject* ts) {
        PyTypeObject* t = (PyTypeObject*)type;
        PyObject* r = t->tp_alloc(t, 6);
        if (r == NULL) return NULL;
        Py_INCREF(offset); PyTuple_SET_ITEM(r, 0, offset);
        Py_INCREF(key); PyTuple_SET_ITEM(r, 1, key);
        Py_INCREF(value); PyTuple_SET_ITEM(r, 2, value);
        Py_INCREF(ce_type); PyTuple_SET_ITEM(r, 3, ce_type);
        Py_INCREF(ce_id); PyTuple_SET_ITEM(r, 4, ce_id);
        Py_INCREF(ts); PyTuple_SET_ITEM(r, 5, ts);
        PyObject_GC_UnTrack(r);
        return r;
    }
    """
    object slot_new_record(object type, object offset, object key, object value,
                           object ce_type, object ce_id, object ts)

DEF LOG_OVERHEAD = 12
DEF RECORD_OVERHEAD_V0 = 14
DEF HEADER_SIZE = 61
DEF CE_TYPE_CACHE = 16


_CODECS = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}


cdef inline int64_t _int64(const uint8_t* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return <int64_t>v


cdef inline int32_t _int32(const uint8_t* p) noexcept nogil:
    return <int32_t>((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3])


cdef inline int _varint(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end, int64_t* out) except -1:
    """A zigzag varint (up to 10 bytes) at ``buf[pos]``, never reading at or past ``end``."""
    cdef uint64_t value = 0
    cdef int shift = 0
    cdef Py_ssize_t p = pos[0]
    cdef uint8_t b
    while True:
        if p >= end:
            raise CorruptRecordException("record ends inside a varint")
        b = buf[p]
        p += 1
        value |= <uint64_t>(b & 0x7F) << shift
        if not (b & 0x80):
            break
        shift += 7
        if shift > 63:
            raise CorruptRecordException("varint longer than 10 bytes")
    pos[0] = p
    out[0] = <int64_t>(value >> 1) ^ -(<int64_t>(value & 1))
    return 0


cdef inline int _span(Py_ssize_t pos, int64_t size, Py_ssize_t end) except -1:
    if size > end - pos:
        raise CorruptRecordException(f"can't read {size} bytes at {pos}")
    return 0


cdef class _CeTypes:
    """Shared ``ce_type`` values: a fetch carries a handful of event types."""

    cdef list values

    def __cinit__(self):
        self.values = []

    cdef object value(self, const uint8_t* data, Py_ssize_t size):
        cdef Py_ssize_t i
        cdef bytes known
        for i in range(len(self.values)):
            known = <bytes>self.values[i]
            if PyBytes_GET_SIZE(known) == size and memcmp(PyBytes_AS_STRING(known), data, size) == 0:
                return known
        value = PyBytes_FromStringAndSize(<const char*>data, size)
        if len(self.values) < CE_TYPE_CACHE:
            self.values.append(value)
        return value


def crc32c(data: bytes, bint table_only=False) -> int:
    """CRC-32C of ``data`` as the decoder computes it (``table_only``: without SSE 4.2)."""
    cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(data)
    if table_only:
        return slot_crc32c_table_only(buf, PyBytes_GET_SIZE(data))
    return slot_crc32c(buf, PyBytes_GET_SIZE(data))


cdef class BatchReader:
    """The data records of one fetched partition's record batches, decoded a few hundred at
    a time (see ``batches.BatchReader``, the same in Python, for the contract)."""

    cdef bytes data
    cdef Py_ssize_t pos  # the next batch header not opened yet
    cdef Py_ssize_t end  # the batches are data[start:end] (a fetch response's record set)
    cdef object plain  # the open batch's records: its decompressed bytes, or ``data``
    cdef const uint8_t* rbuf
    cdef Py_ssize_t rpos, rend
    cdef int32_t left  # records of the open batch not decoded yet (0: none open)
    cdef int64_t base_offset, first_timestamp, max_timestamp, batch_next, fetch_offset
    cdef int64_t last_timestamp
    cdef object ts
    cdef bint log_append_time, check_crcs
    cdef object record_type
    cdef object error
    cdef _CeTypes ce_types
    cdef readonly bint done, legacy
    cdef readonly int64_t next_offset, scan_next, scan_records, hole_end

    def __init__(
        self,
        bytes data,
        int64_t fetch_offset,
        bint check_crcs,
        object record_type,
        Py_ssize_t start=0,
        Py_ssize_t end=-1,
        bint contiguous=False,
    ):
        cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data), pos
        cdef int64_t length, batch_next, count, base
        if end < 0 or end > size:
            end = size
        if start < 0:
            start = 0
        size = end
        pos = start
        self.pos = start
        self.end = end
        self.scan_next = fetch_offset
        self.scan_records = 0
        self.hole_end = -1
        self.data = data
        self.fetch_offset = fetch_offset
        self.next_offset = fetch_offset
        self.check_crcs = check_crcs
        self.record_type = record_type
        self.ce_types = _CeTypes()
        self.plain = None
        self.ts = None
        self.error = None
        # Only a look at the batch headers (never an exception: this runs in aiokafka's
        # fetch task); what is wrong with a batch is raised by take().
        while size - pos >= LOG_OVERHEAD:
            length = _int32(&buf[pos + 8])
            end = pos + LOG_OVERHEAD + length
            if length < RECORD_OVERHEAD_V0 or end > size:
                break
            if buf[pos + 16] != 2:
                self.legacy = True
                break
            if end - pos >= HEADER_SIZE:
                base = _int64(&buf[pos])
                if contiguous and base > self.scan_next:
                    # a hole before this batch: the records end here (see batches.py)
                    self.hole_end = base
                    self.end = pos
                    break
                batch_next = base + _int32(&buf[pos + 23]) + 1
                if batch_next > self.scan_next:
                    self.scan_next = batch_next
                if not (buf[pos + 22] & 0x20):
                    count = _int32(&buf[pos + 57])
                    if count > 0:
                        self.scan_records += count
            pos = end

    def take(self, Py_ssize_t max_records):
        """Up to ``max_records`` more data records; afterwards either ``done`` or more
        records are left to take."""
        cdef list out = []
        cdef int collecting = PyGC_Disable()
        try:
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if self.left == 0:
                self._advance()
            while len(out) < max_records and not self.done:
                record = self._record()
                if record is not None:
                    out.append(record)
                if self.left == 0:
                    try:
                        self._close()
                        self._advance()
                    except Exception as exc:
                        if not out:
                            raise
                        self.error = exc  # the records before it first, then the error
                        break
        except BaseException:
            self.done = True
            self.left = 0
            raise
        finally:
            if collecting:
                PyGC_Enable()
        return out

    cdef int _close(self) except -1:
        if self.rpos != self.rend:
            raise CorruptRecordException(
                f"{self.rend - self.rpos} unconsumed bytes after all records consumed"
            )
        self.plain = None
        if self.batch_next > self.next_offset:
            self.next_offset = self.batch_next
        return 0

    cdef int _advance(self) except -1:
        """Open the next batch with records in it, or set ``done``."""
        cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(self.data)
        cdef Py_ssize_t size = self.end, pos, end
        cdef int64_t length
        cdef int16_t attributes
        cdef int codec
        while self.left == 0 and not self.done:
            pos = self.pos
            if size - pos < LOG_OVERHEAD:
                self.done = True
                break
            length = _int32(&buf[pos + 8])
            if length < RECORD_OVERHEAD_V0:
                raise CorruptRecordException(
                    "Record size is less than the minimum record overhead "
                    f"({RECORD_OVERHEAD_V0})"
                )
            end = pos + LOG_OVERHEAD + length
            if end > size:
                self.done = True  # a partial batch at the end of a fetch: fetched again
                break
            if end - pos < HEADER_SIZE:
                raise CorruptRecordException(f"record batch of {end - pos} bytes")
            if self.check_crcs:
                if slot_crc32c(&buf[pos + 21], end - pos - 21) != <uint32_t>_int32(&buf[pos + 17]):
                    raise CorruptRecordException("Invalid CRC")
            self.pos = end
            self.base_offset = _int64(&buf[pos])
            attributes = <int16_t>((buf[pos + 21] << 8) | buf[pos + 22])
            self.batch_next = self.base_offset + _int32(&buf[pos + 23]) + 1
            if attributes & 0x20:  # control batch (transaction marker): no data records
                if self.batch_next > self.next_offset:
                    self.next_offset = self.batch_next
                continue
            self.first_timestamp = _int64(&buf[pos + 27])
            self.max_timestamp = _int64(&buf[pos + 35])
            self.log_append_time = (attributes & 0x08) != 0
            codec = attributes & 0x07
            if codec:
                decoder = _CODECS.get(codec)
                if decoder is None:
                    raise CorruptRecordException(f"unknown compression codec {codec}")
                plain = decoder(memoryview(self.data)[pos + HEADER_SIZE : end])
                if type(plain) is not bytes:
                    plain = bytes(plain)
                self.plain = plain
                self.rbuf = <const uint8_t*>PyBytes_AS_STRING(plain)
                self.rpos = 0
                self.rend = PyBytes_GET_SIZE(plain)
            else:
                self.plain = self.data
                self.rbuf = buf
                self.rpos = pos + HEADER_SIZE
                self.rend = end
            self.left = _int32(&buf[pos + 57])
            if self.left <= 0:
                self.left = 0
                self._close()
        return 0

    cdef object _record(self):
        """Decode the open batch's next record: the record, or None before the fetch offset."""
        cdef const uint8_t* buf = self.rbuf
        cdef Py_ssize_t pos = self.rpos, end = self.rend, start, name_at
        cdef int64_t length, attributes, ts_delta, offset_delta, key_len, value_len, n_headers
        cdef int64_t name_len, header_len, timestamp, offset
        cdef object key, value, ce_type = None, ce_id = None
        self.left -= 1
        _varint(buf, &pos, end, &length)
        start = pos
        _varint(buf, &pos, end, &attributes)
        _varint(buf, &pos, end, &ts_delta)
        _varint(buf, &pos, end, &offset_delta)
        _varint(buf, &pos, end, &key_len)
        if key_len >= 0:
            _span(pos, key_len, end)
            key = PyBytes_FromStringAndSize(<const char*>&buf[pos], key_len)
            pos += key_len
        else:
            key = None
        _varint(buf, &pos, end, &value_len)
        if value_len >= 0:
            _span(pos, value_len, end)
            value = PyBytes_FromStringAndSize(<const char*>&buf[pos], value_len)
            pos += value_len
        else:
            value = None
        _varint(buf, &pos, end, &n_headers)
        if n_headers < 0:
            raise CorruptRecordException(f"invalid number of record headers {n_headers}")
        while n_headers > 0:
            _varint(buf, &pos, end, &name_len)
            if name_len < 0:
                raise CorruptRecordException(f"invalid negative header key size {name_len}")
            _span(pos, name_len, end)
            name_at = pos
            pos += name_len
            _varint(buf, &pos, end, &header_len)
            if header_len >= 0:
                _span(pos, header_len, end)
            # the last of each wins, as a reader of the whole header list would find it
            if name_len == 7 and memcmp(&buf[name_at], b"ce_type", 7) == 0:
                if header_len >= 0:
                    ce_type = self.ce_types.value(&buf[pos], header_len)
                else:
                    ce_type = None
            elif name_len == 5 and memcmp(&buf[name_at], b"ce_id", 5) == 0:
                if header_len >= 0:
                    ce_id = PyBytes_FromStringAndSize(<const char*>&buf[pos], header_len)
                else:
                    ce_id = None
            if header_len > 0:
                pos += header_len
            n_headers -= 1
        if pos - start != length:
            raise CorruptRecordException(
                f"invalid record size: expected {length} bytes, read {pos - start}"
            )
        self.rpos = pos
        offset = self.base_offset + offset_delta
        if offset < self.fetch_offset:
            return None
        timestamp = self.max_timestamp if self.log_append_time else self.first_timestamp + ts_delta
        if self.ts is None or timestamp != self.last_timestamp:
            self.ts = timestamp
            self.last_timestamp = timestamp
        return slot_new_record(self.record_type, offset, key, value, ce_type, ce_id, self.ts)


def decode_batches(bytes data, int64_t fetch_offset, bint check_crcs, object record_type):
    """Every data record at or after ``fetch_offset`` and the offset to fetch next; ``None``
    where a batch is not of format v2 (``BatchReader`` in one go)."""
    reader = BatchReader(data, fetch_offset, check_crcs, record_type)
    if reader.legacy:
        return None
    records = reader.take(PY_SSIZE_T_MAX)
    return records, reader.next_offset


cdef inline Py_ssize_t _need(Py_ssize_t pos, Py_ssize_t size, Py_ssize_t want) except -1:
    if want < 0 or want > size - pos:
        raise CorruptRecordException(f"fetch response ends at {size}, need {pos + want}")
    return pos


def parse_fetch_response(bytes data, Py_ssize_t start, int version):
    """A FetchResponse body of ``version`` (see ``batches.parse_fetch_response``)."""
    cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data), pos = start, name_size
    cdef int32_t topics, parts, aborted, records
    cdef int error_code = 0
    cdef list partitions = []
    if version < 4 or version > 11:
        raise ValueError(f"FetchResponse v{version} is not read here")
    _need(pos, size, 4)
    pos += 4  # throttle_time_ms
    if version >= 7:
        _need(pos, size, 6)
        error_code = <int16_t>((buf[pos] << 8) | buf[pos + 1])
        pos += 6  # error_code, session_id
    _need(pos, size, 4)
    topics = _int32(&buf[pos])
    pos += 4
    while topics > 0:
        topics -= 1
        _need(pos, size, 2)
        name_size = <int16_t>((buf[pos] << 8) | buf[pos + 1])
        pos += 2
        if name_size < 0:
            name_size = 0
        _need(pos, size, name_size)
        topic = (<const char*>&buf[pos])[:name_size].decode("utf-8")
        pos += name_size
        _need(pos, size, 4)
        parts = _int32(&buf[pos])
        pos += 4
        while parts > 0:
            parts -= 1
            _need(pos, size, 4 + 2 + 8 + 8 + (8 if version >= 5 else 0) + 4)
            partition = _int32(&buf[pos])
            code = <int16_t>((buf[pos + 4] << 8) | buf[pos + 5])
            highwater = _int64(&buf[pos + 6])
            pos += 22  # partition, error_code, high_watermark, last_stable_offset
            if version >= 5:
                log_start = _int64(&buf[pos])
                pos += 8
            else:
                log_start = -1
            aborted = _int32(&buf[pos])
            pos += 4
            if aborted > 0:
                _need(pos, size, 16 * <Py_ssize_t>aborted)
                pos += 16 * <Py_ssize_t>aborted
            if version >= 11:
                _need(pos, size, 4)
                pos += 4  # preferred_read_replica
            _need(pos, size, 4)
            records = _int32(&buf[pos])
            pos += 4
            if records < 0:
                records = 0
            _need(pos, size, records)
            partitions.append(
                (topic, partition, code, highwater, log_start, pos, pos + records)
            )
            pos += records
    return error_code, partitions
