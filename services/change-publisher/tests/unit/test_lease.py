"""Lease rules: one holder at a time, a new epoch per new holder, fencing, self-expiry."""

import pytest

from change_publisher.adapters.memory import MemoryCheckpointStore, MemoryLeaseStore
from change_publisher.domain.lease import (
    LeaderGuard,
    Lease,
    checkpoint_allowed,
    grant,
    renew,
)
from change_publisher.ports import Checkpoint, Fenced

from ..conftest import NOW


def test_grant_first_holder_then_refuse_others_until_expiry() -> None:
    first = grant(None, "s", "a", now=0, ttl=5)
    assert first == Lease("s", "a", 1, 5)
    assert grant(first, "s", "b", now=4.9, ttl=5) is None
    kept = grant(first, "s", "a", now=4, ttl=5)
    assert kept is not None
    assert kept.epoch == 1
    assert kept.expires_at == 9
    taken = grant(first, "s", "b", now=5, ttl=5)
    assert taken == Lease("s", "b", 2, 10)


def test_holder_coming_back_after_expiry_gets_a_new_epoch() -> None:
    first = grant(None, "s", "a", now=0, ttl=5)
    again = grant(first, "s", "a", now=6, ttl=5)
    assert again is not None
    assert again.epoch == 2


def test_renew_only_the_stored_lease() -> None:
    lease = Lease("s", "a", 1, 5)
    assert renew(lease, lease, now=3, ttl=5) == Lease("s", "a", 1, 8)
    assert renew(Lease("s", "b", 2, 9), lease, now=3, ttl=5) is None
    assert renew(None, lease, now=3, ttl=5) is None


def test_leader_stops_after_half_the_ttl_without_renewal() -> None:
    guard = LeaderGuard(ttl=6, granted_at=100)
    assert guard.may_produce(102.9)
    assert not guard.may_produce(103)
    guard.renewed(requested_at=102)
    assert guard.may_produce(104.9)
    assert not guard.may_produce(105)


def test_checkpoint_fencing_rule() -> None:
    assert checkpoint_allowed(None, 1)
    assert checkpoint_allowed(2, 2)
    assert checkpoint_allowed(2, 3)
    assert not checkpoint_allowed(3, 2)


async def test_memory_stores_apply_the_rules() -> None:
    leases = MemoryLeaseStore()
    a = await leases.acquire("s", "a", ttl=30)
    assert a is not None
    assert a.epoch == 1
    assert await leases.acquire("s", "b", ttl=30) is None
    await leases.release(a)
    b = await leases.acquire("s", "b", ttl=30)
    assert b is not None
    assert b.epoch == 2
    assert await leases.renew(a, ttl=30) is None

    store = MemoryCheckpointStore()
    await store.save("s", Checkpoint({"_data": "02"}, None, epoch=2, saved_at=NOW))
    with pytest.raises(Fenced):
        await store.save("s", Checkpoint({"_data": "03"}, None, epoch=1, saved_at=NOW))
    loaded = await store.load("s")
    assert loaded is not None
    assert loaded.token == {"_data": "02"}
