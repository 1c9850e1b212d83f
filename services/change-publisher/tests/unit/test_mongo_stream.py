"""The Mongo change stream adapter over a scripted cursor: what the server says on
``getMore`` becomes the port's exceptions (no real MongoDB needed; the contract suite runs
the rest against one)."""

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from bson import Timestamp
from bson.codec_options import CodecOptions
from pymongo.errors import OperationFailure

from change_publisher.adapters.mongo import MongoChangeStream
from change_publisher.ports import HistoryLost, SourceUnavailable, StreamPosition
from slotstream_contracts.changes import ChangeEvent, OperationType


class ScriptedCursor:
    """Answers ``try_next`` from a script: documents, None (idle), or an exception."""

    def __init__(self, script: Sequence[Any]) -> None:
        self._script = list(script)
        self.resume_token: dict[str, Any] | None = {"_data": "00"}

    async def try_next(self) -> Any:
        if not self._script:
            await asyncio.sleep(3600)
        step = self._script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    async def close(self) -> None:
        return None


async def no_reopen(position: StreamPosition, careful: bool) -> Any:
    raise AssertionError(f"reopened at {position} (careful: {careful})")


def stream_over(cursor: ScriptedCursor) -> MongoChangeStream:
    return MongoChangeStream(
        no_reopen,
        cursor,  # type: ignore[arg-type]
        False,
        position=StreamPosition(),
        codec=CodecOptions(tz_aware=True),
        db="d",
        limit=100,
    )


def change(seq: int, operation: str = "insert") -> dict[str, Any]:
    raw: dict[str, Any] = {
        "_id": {"_data": f"{seq:04X}"},
        "operationType": operation,
        "clusterTime": Timestamp(1_700_000_000, seq),
    }
    if operation != "invalidate":
        raw |= {"ns": {"db": "d", "coll": "slots"}, "documentKey": {"_id": f"s{seq}"}}
    return raw


async def test_history_lost_on_get_more_is_reported_by_its_error_code() -> None:
    lost = OperationFailure("resume point no longer in the oplog", code=286)
    stream = stream_over(ScriptedCursor([change(1), lost]))
    try:
        first = await asyncio.wait_for(stream.next_batch(), 5)
        assert [c.token for c in first.changes] == [{"_data": "0001"}]
        with pytest.raises(HistoryLost):
            await asyncio.wait_for(stream.next_batch(), 5)
    finally:
        await stream.aclose()


async def test_other_errors_on_get_more_are_source_unavailable() -> None:
    failure = OperationFailure("not primary", code=10107)
    stream = stream_over(ScriptedCursor([failure]))
    try:
        with pytest.raises(SourceUnavailable):
            await asyncio.wait_for(stream.next_batch(), 5)
    finally:
        await stream.aclose()


async def test_the_stream_ends_with_its_invalidate() -> None:
    cursor = ScriptedCursor([change(1, "dropDatabase"), change(2, "invalidate")])
    stream = stream_over(cursor)
    try:
        changes: list[ChangeEvent] = []
        while not any(c.operation_type is OperationType.INVALIDATE for c in changes):
            changes.extend((await asyncio.wait_for(stream.next_batch(), 5)).changes)
        assert changes[-1].ns.coll is None
        with pytest.raises(SourceUnavailable, match="invalidated"):
            await asyncio.wait_for(stream.next_batch(), 5)
    finally:
        await stream.aclose()
