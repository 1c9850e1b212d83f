from datetime import UTC, datetime, timedelta

from booking_api.ports import IdempotencyRecord, Storage

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def record(
    fingerprint: str = "f1", expires: datetime = NOW + timedelta(hours=1)
) -> IdempotencyRecord:
    return IdempotencyRecord(
        id="k1", fingerprint=fingerprint, state="pending", created_at=NOW, expires_at=expires
    )


async def test_first_reservation_wins_and_later_ones_see_it(storage: Storage) -> None:
    assert await storage.idempotency.reserve(record(), NOW) is None
    seen = await storage.idempotency.reserve(record("f2"), NOW)
    assert seen is not None
    assert seen.fingerprint == "f1"
    assert seen.state == "pending"


async def test_completed_response_is_kept(storage: Storage) -> None:
    await storage.idempotency.reserve(record(), NOW)
    await storage.idempotency.complete("k1", 201, '{"id":"b1"}')
    seen = await storage.idempotency.reserve(record(), NOW)
    assert seen is not None
    assert (seen.state, seen.status_code, seen.body) == ("complete", 201, '{"id":"b1"}')


async def test_released_and_expired_records_are_forgotten(storage: Storage) -> None:
    await storage.idempotency.reserve(record(), NOW)
    await storage.idempotency.release("k1")
    assert await storage.idempotency.reserve(record("f2"), NOW) is None
    later = NOW + timedelta(hours=2)
    assert (
        await storage.idempotency.reserve(record("f3", later + timedelta(hours=1)), later) is None
    )
    seen = await storage.idempotency.reserve(record("f4"), later)
    assert seen is not None
    assert seen.fingerprint == "f3"
