"""Kafka record batches (message format v2) as a broker stores and serves them, built with
aiokafka's own encoder: for tests of code that reads fetch responses byte by byte."""

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c

#: batch attributes (bytes 21-22 of a v2 batch)
TRANSACTIONAL_AND_CONTROL = 0x30
LOG_APPEND_TIME = 0x08
#: largest batch the builder accepts (it drops records past this size)
MAX_BATCH_BYTES = 1 << 22


class BatchRecord(NamedTuple):
    """One record, as ``DefaultRecordBatchBuilder.append`` takes it."""

    offset_delta: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


def record_batch(
    base: int,
    records: Iterable[BatchRecord],
    *,
    control: bool = False,
    log_append_time: bool = False,
    codec: int = 0,
) -> bytes:
    """The bytes of one batch whose first offset is ``base``: a control batch (a
    transaction marker's) with ``control``, timestamps set by the broker with
    ``log_append_time``, compressed with ``codec`` (aiokafka's ``compression_type``). The
    CRC covers the attributes as set."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=int(control),
        producer_id=7 if control else -1,
        producer_epoch=0 if control else -1,
        base_sequence=-1,
        batch_size=MAX_BATCH_BYTES,
    )
    for record in records:
        builder.append(
            record.offset_delta,
            timestamp=record.timestamp,
            key=record.key,
            value=record.value,
            headers=list(record.headers),
        )
    raw = bytearray(builder.build())
    raw[0:8] = base.to_bytes(8, "big")
    attributes = int.from_bytes(raw[21:23], "big")
    attributes |= (TRANSACTIONAL_AND_CONTROL if control else 0) | (
        LOG_APPEND_TIME if log_append_time else 0
    )
    raw[21:23] = attributes.to_bytes(2, "big")
    raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")
    return bytes(raw)
