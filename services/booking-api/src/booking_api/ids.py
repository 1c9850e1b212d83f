"""Ids that sort by creation time and are cheap to make.

24 hex digits, like a Mongo ObjectId: 8 of seconds, 6 of a per-process counter, 10 of
randomness. The counter orders the ids one process makes within a second, so lists that
sort by ``(createdAt, id)`` keep the order in which things happened even when two records
share a millisecond (a booking's cancellation notice must come before its confirmation).
The counter restarts at a random value each second; the random tail keeps ids
unguessable. Randomness is drawn from ``os.urandom`` in batches, one system call per 256
ids: three ids are made per booking, and the per-call cost showed up in the booking
benchmark's profile.

``derived_id`` and ``derived_id_at`` make the same id from the same parts, for records a
retried request must find again rather than make twice.
"""

import hashlib
import os
import time
from datetime import datetime

_BATCH = 256
_TAIL = 10
_COUNTER_LIMIT = 1 << 24
_pool = ""
_pos = 0
_second = -1
_counter = 0


def _reset() -> None:
    global _pool, _pos, _second
    _pool, _pos, _second = "", 0, -1


# A forked child must not hand out the parent's remaining random digits again.
os.register_at_fork(after_in_child=_reset)


def _random_hex(digits: int) -> str:
    global _pool, _pos
    if _pos + digits > len(_pool):
        _pool, _pos = os.urandom(8 * _BATCH).hex(), 0
    chunk = _pool[_pos : _pos + digits]
    _pos += digits
    return chunk


def new_id() -> str:
    global _second, _counter
    now = int(time.time())
    if now != _second:
        # start low in the counter's range so a busy second cannot wrap it
        _second, _counter = now, int(_random_hex(6), 16) >> 2
    else:
        _counter = (_counter + 1) % _COUNTER_LIMIT
    return f"{now:08x}{_counter:06x}{_random_hex(_TAIL)}"


def derived_id(*parts: str) -> str:
    """24 hex digits of a hash of ``parts`` (none containing NUL): the same parts give the
    same id. Not ordered by time, and only as unguessable as the parts."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def derived_id_at(at: datetime, *parts: str) -> str:
    """``derived_id`` shaped like ``new_id``'s of the second ``at``, with the counter at 0:
    it sorts by that second, and before any id ``new_id`` makes later in it (a
    cancellation notice sharing its millisecond still sorts after it)."""
    return f"{int(at.timestamp()):08x}000000{derived_id(*parts)[:_TAIL]}"
