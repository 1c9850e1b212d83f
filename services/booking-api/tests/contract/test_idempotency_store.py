from datetime import UTC, datetime, timedelta

import pytest

from booking_api.ports import IdempotencyQuotaExceeded, IdempotencyRecord, Storage

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def record(
    fingerprint: str = "f1", expires: datetime = NOW + timedelta(hours=1)
) -> IdempotencyRecord:
    return IdempotencyRecord(
        id="k1",
        user_id="u1",
        fingerprint=fingerprint,
        state="pending",
        created_at=NOW,
        expires_at=expires,
    )


async def reserve(
    storage: Storage,
    record: IdempotencyRecord,
    now: datetime = NOW,
    stale_before: datetime = NOW - timedelta(minutes=1),
    max_per_user: int = 100,
) -> IdempotencyRecord | None:
    return await storage.idempotency.reserve(
        record, now, stale_before=stale_before, max_per_user=max_per_user
    )


async def test_first_reservation_wins_and_later_ones_see_it(storage: Storage) -> None:
    assert await reserve(storage, record()) is None
    seen = await reserve(storage, record("f2"))
    assert seen is not None
    assert seen.fingerprint == "f1"
    assert seen.state == "pending"


async def test_completed_response_is_kept(storage: Storage) -> None:
    await reserve(storage, record())
    await storage.idempotency.complete(record(), 201, '{"id":"b1"}')
    seen = await reserve(storage, record())
    assert seen is not None
    assert (seen.state, seen.status_code, seen.body) == ("complete", 201, '{"id":"b1"}')


async def test_released_and_expired_records_are_forgotten(storage: Storage) -> None:
    await reserve(storage, record())
    await storage.idempotency.release(record())
    assert await reserve(storage, record("f2")) is None
    later = NOW + timedelta(hours=2)
    assert await reserve(storage, record("f3", later + timedelta(hours=1)), later, later) is None
    seen = await reserve(storage, record("f4"), later)
    assert seen is not None
    assert seen.fingerprint == "f3"


async def test_a_stale_pending_record_is_taken_over_and_its_first_owner_cannot_finish(
    storage: Storage,
) -> None:
    crashed = record("f1")
    assert await reserve(storage, crashed) is None
    later = NOW + timedelta(seconds=40)
    # Still pending at the deadline of a 30 s request: its request died; take it over.
    retry = record("f1").model_copy(update={"created_at": later})
    assert await reserve(storage, retry, later, stale_before=later - timedelta(seconds=30)) is None
    # The first owner, if it was merely slow, must not overwrite or drop the new record.
    await storage.idempotency.complete(crashed, 500, "late")
    await storage.idempotency.release(crashed)
    seen = await reserve(storage, record("f9"), later)
    assert seen is not None
    assert (seen.state, seen.created_at) == ("pending", later)
    await storage.idempotency.complete(retry, 201, "{}")
    done = await reserve(storage, record("f9"), later)
    assert done is not None
    assert (done.state, done.status_code) == ("complete", 201)


async def test_a_fresh_or_complete_record_is_not_taken_over(storage: Storage) -> None:
    await reserve(storage, record())
    stale_before = NOW + timedelta(seconds=1)  # the pending record is older than this…
    await storage.idempotency.complete(record(), 201, "{}")  # …but complete: a real answer
    seen = await reserve(storage, record(), NOW + timedelta(seconds=2), stale_before)
    assert seen is not None
    assert seen.state == "complete"


async def test_each_user_holds_at_most_max_per_user_records(storage: Storage) -> None:
    for n in range(3):
        own = record().model_copy(
            update={"id": f"k{n}", "expires_at": NOW + timedelta(hours=n + 1)}
        )
        assert await reserve(storage, own, max_per_user=3) is None
    with pytest.raises(IdempotencyQuotaExceeded) as refused:
        await reserve(storage, record().model_copy(update={"id": "k9"}), max_per_user=3)
    assert refused.value.retry_after == 3600  # the oldest expires in an hour
    seen = await reserve(storage, record().model_copy(update={"id": "k0"}), max_per_user=3)
    assert seen is not None  # an existing key is answered, not refused
    other = record().model_copy(update={"id": "x1", "user_id": "u2"})
    assert await reserve(storage, other, max_per_user=3) is None
