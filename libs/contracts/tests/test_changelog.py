import asyncio

import pytest

from slotstream_contracts.changelog import ChangeHistoryLost, InvalidResumeToken, MemoryChangeLog
from slotstream_contracts.changes import OperationType


def record(log: MemoryChangeLog, n: int) -> None:
    for i in range(n):
        log.record(OperationType.INSERT, "slots", f"s{i}", full_document={"_id": f"s{i}"})


def test_changes_resume_after_a_token_in_commit_order() -> None:
    log = MemoryChangeLog("db")
    record(log, 5)
    first_two = log.read_after(None, limit=2)
    assert [e.document_key for e in first_two] == [{"_id": "s0"}, {"_id": "s1"}]
    rest = log.read_after(first_two[-1].token)
    assert [e.document_key for e in rest] == [{"_id": f"s{i}"} for i in range(2, 5)]
    times = [(e.cluster_time.t, e.cluster_time.i) for e in first_two + rest]
    assert times == sorted(times)
    assert len(set(times)) == 5
    assert log.read_after(log.latest_token) == []


def test_token_older_than_history_is_reported_lost() -> None:
    log = MemoryChangeLog("db", retain=3)
    record(log, 2)
    old = log.read_after(None)[0].token
    record(log, 5)
    with pytest.raises(ChangeHistoryLost):
        log.read_after(old)


def test_foreign_token_is_rejected() -> None:
    log = MemoryChangeLog("db")
    run = log.latest_token["_data"][:16]
    with pytest.raises(InvalidResumeToken):
        log.read_after({"_data": "zz"})
    with pytest.raises(InvalidResumeToken):  # the format before tokens named their run
        log.read_after({"_data": "00000000000000FF"})
    with pytest.raises(InvalidResumeToken, match="from the future"):
        log.read_after({"_data": f"{run}{255:016X}"})


def test_a_restarted_log_answers_the_earlier_runs_tokens_as_history_lost() -> None:
    """A restart starts a new log: resuming there after the old run's checkpoint would skip
    the new run's first changes, and equal tokens would give equal event ids."""
    before = MemoryChangeLog("db")
    record(before, 3)
    checkpoint = before.latest_token
    after = MemoryChangeLog("db")  # the booking-api restarted
    record(after, 6)
    with pytest.raises(ChangeHistoryLost, match="another run"):
        after.read_after(checkpoint)
    old_tokens = {e.token_data for e in before.read_after(None)}
    assert old_tokens.isdisjoint(e.token_data for e in after.read_after(None))


def test_read_from_operation_time_includes_that_time() -> None:
    log = MemoryChangeLog("db")
    record(log, 3)
    at = log.cluster_time
    record(log, 2)
    from_time = log.read_from_time(at)
    assert [e.document_key for e in from_time] == [{"_id": "s2"}, {"_id": "s0"}, {"_id": "s1"}]


async def test_waiting_reader_wakes_on_the_next_change() -> None:
    log = MemoryChangeLog("db")
    waiter = asyncio.create_task(log.wait_after(log.latest_token, 10, max_wait=5))
    await asyncio.sleep(0.01)
    record(log, 1)
    events = await asyncio.wait_for(waiter, 2)
    assert [e.document_key for e in events] == [{"_id": "s0"}]
    assert await log.wait_after(log.latest_token, 10, max_wait=0.01) == []


async def test_released_log_answers_waiting_and_later_readers_at_once() -> None:
    log = MemoryChangeLog("db")
    waiter = asyncio.create_task(log.wait_after(log.latest_token, 10, max_wait=30))
    await asyncio.sleep(0.01)
    log.release_waiters()
    assert await asyncio.wait_for(waiter, 2) == []
    assert await asyncio.wait_for(log.wait_after(log.latest_token, 10, max_wait=30), 2) == []


def test_exactly_the_retained_changes_stay_readable() -> None:
    log = MemoryChangeLog("db", retain=4)
    record(log, 4)
    fourth = log.latest_token
    record(log, 6)
    retained = log.read_after(None)
    assert [e.document_key for e in retained] == [{"_id": f"s{i}"} for i in range(2, 6)]
    assert log.read_after(retained[0].token) == retained[1:]
    with pytest.raises(ChangeHistoryLost):
        log.read_after(fourth)
    with pytest.raises(ChangeHistoryLost):
        log.read_from_time(retained[0].cluster_time.model_copy(update={"i": 0}))
    assert log.read_from_time(retained[1].cluster_time) == retained[1:]


def test_update_events_are_looked_up_when_read() -> None:
    current: dict[str, dict[str, object]] = {"s1": {"_id": "s1", "version": 3}}
    log = MemoryChangeLog("db", lookup=lambda _coll, doc_id: current.get(doc_id))
    written = log.record(OperationType.UPDATE, "slots", "s1", {"_id": "s1", "version": 2})
    assert written.full_document == {"_id": "s1", "version": 2}  # as recorded
    assert log.read_after(None)[0].full_document == {"_id": "s1", "version": 3}
    del current["s1"]
    assert log.read_from_time(written.cluster_time)[0].full_document is None


def test_a_transaction_shares_one_cluster_time_and_the_next_write_moves_on() -> None:
    log = MemoryChangeLog("db")
    with log.transaction():
        record(log, 3)
    record(log, 1)
    times = [e.cluster_time for e in log.read_after(None)]
    assert times[0] == times[1] == times[2]
    assert (times[3].t, times[3].i) > (times[2].t, times[2].i)
    assert len({e.token_data for e in log.read_after(None)}) == 4


def test_a_database_drop_ends_with_an_invalidate_without_namespace_collection() -> None:
    log = MemoryChangeLog("db")
    invalidate = log.record_drop_database(["slots", "bookings"])
    kinds = [(e.operation_type, e.ns.coll) for e in log.read_after(None)]
    assert kinds == [
        (OperationType.DROP, "slots"),
        (OperationType.DROP, "bookings"),
        (OperationType.DROP_DATABASE, None),
        (OperationType.INVALIDATE, None),
    ]
    assert invalidate.document_key is None
