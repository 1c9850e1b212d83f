"""The checkpointable token only moves over changes whose records are all acknowledged."""

import random

from hypothesis import given
from hypothesis import strategies as st

from change_publisher.domain.acks import AckTracker


def token(n: int) -> dict[str, str]:
    return {"_data": f"{n:04d}"}


def test_out_of_order_acks_wait_for_the_oldest() -> None:
    tracker = AckTracker()
    first = tracker.track(token(1), 1)
    second = tracker.track(token(2), 2)
    third = tracker.track(token(3), 1)
    tracker.ack(third)
    tracker.ack(second)
    assert tracker.safe_token is None
    assert tracker.in_flight == 2
    tracker.ack(first)
    assert tracker.safe_token == token(1)
    tracker.ack(second)
    assert tracker.safe_token == token(3)
    assert tracker.settled


def test_changes_without_records_advance_once_everything_before_is_acked() -> None:
    tracker = AckTracker()
    tracker.track(token(1), 0)
    assert tracker.safe_token == token(1)
    sent = tracker.track(token(2), 1)
    tracker.track(token(3), 0)  # an idle postBatchResumeToken
    assert tracker.safe_token == token(1)
    tracker.ack(sent)
    assert tracker.safe_token == token(3)


def test_snapshot_records_have_no_token_but_still_hold_back_later_ones() -> None:
    tracker = AckTracker()
    copied = tracker.track(None, 1, change_time=5.0)
    tracker.track(token(9), 0)
    assert tracker.safe_token is None
    tracker.ack(copied)
    assert tracker.safe_token == token(9)
    assert tracker.safe_change_time == 5.0


@given(
    counts=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=30),
    seed=st.integers(),
    acked_fraction=st.floats(min_value=0, max_value=1),
)
def test_safe_token_is_the_longest_fully_acknowledged_prefix(
    counts: list[int], seed: int, acked_fraction: float
) -> None:
    tracker = AckTracker()
    seqs = [tracker.track(token(n), count) for n, count in enumerate(counts)]
    acks = [seq for seq, count in zip(seqs, counts, strict=True) for _ in range(count)]
    random.Random(seed).shuffle(acks)
    done = acks[: int(len(acks) * acked_fraction)]
    remaining = dict(zip(seqs, counts, strict=True))
    # Acknowledged one by one or a produce batch at a time, as they come.
    chunk = 1 + seed % 4
    for start in range(0, len(done), chunk):
        tracker.ack_many(done[start : start + chunk])
    for seq in done:
        remaining[seq] -= 1
    prefix = 0
    while prefix < len(counts) and remaining[seqs[prefix]] == 0:
        prefix += 1
    assert tracker.safe_token == (token(prefix - 1) if prefix else None)
    assert tracker.in_flight == sum(remaining.values())
