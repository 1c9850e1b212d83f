"""Leadership rules: who holds the lease, its epoch, and when a leader must stop.

A lease is granted to one holder until ``expires_at`` (the store's clock). Each grant to a
holder that did not already hold it raises the epoch by one; renewals keep the epoch. The
checkpoint store refuses writes from an epoch older than the newest it has seen, so a
deposed leader cannot move the resume point.

The leader itself stops producing well before the store could hand the lease to anybody
else: it measures from the moment it *sent* its last successful renewal (so network delay
only makes it stop earlier) and gives up after half the TTL, leaving the other half for
records already handed to the producer to be acknowledged.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires_at: float


def grant(current: Lease | None, name: str, holder: str, now: float, ttl: float) -> Lease | None:
    """The lease after ``holder`` asks for it at ``now`` (None: somebody else holds it)."""
    if current is None:
        return Lease(name, holder, 1, now + ttl)
    if current.holder == holder and current.expires_at > now:
        return Lease(name, holder, current.epoch, now + ttl)
    if current.expires_at <= now:
        return Lease(name, holder, current.epoch + 1, now + ttl)
    return None


def renew(current: Lease | None, lease: Lease, now: float, ttl: float) -> Lease | None:
    """Extend ``lease`` if it is still the one stored (same holder and epoch)."""
    if current is None or current.holder != lease.holder or current.epoch != lease.epoch:
        return None
    return Lease(lease.name, lease.holder, lease.epoch, now + ttl)


class LeaderGuard:
    """A leader's own view of how long it may still produce (monotonic clock)."""

    def __init__(self, ttl: float, granted_at: float) -> None:
        self._budget = ttl / 2
        self._valid_until = granted_at + self._budget

    def renewed(self, requested_at: float) -> None:
        """A renewal sent at ``requested_at`` succeeded."""
        self._valid_until = max(self._valid_until, requested_at + self._budget)

    def may_produce(self, now: float) -> bool:
        return now < self._valid_until

    @property
    def valid_until(self) -> float:
        return self._valid_until


def checkpoint_allowed(stored_epoch: int | None, epoch: int) -> bool:
    """Fencing: a checkpoint from an epoch older than the stored one is refused."""
    return stored_epoch is None or epoch >= stored_epoch
