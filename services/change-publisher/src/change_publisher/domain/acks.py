"""Which resume token is safe to checkpoint while sends are acknowledged out of order.

Every change is tracked in stream order with the number of Kafka records it produced
(zero for a skipped change or an idle ``postBatchResumeToken``). Kafka acknowledges records
per partition, so acks arrive out of order across partitions; the safe token is the token
of the newest change such that it and every change before it are fully acknowledged.
Checkpointing only that token is what makes delivery at-least-once.
"""

from collections import deque
from collections.abc import Iterable

from slotstream_contracts.changes import ResumeToken


class AckTracker:
    """Changes in stream order and how many of their records are still unacknowledged.

    Kept lean (this runs for every change): ``_order`` holds (seq, token, change time) in
    stream order, ``_remaining`` only the changes with records outstanding, so a change is
    fully acknowledged exactly when its seq is not in ``_remaining``."""

    def __init__(self) -> None:
        self._order: deque[tuple[int, ResumeToken | None, float]] = deque()
        self._remaining: dict[int, int] = {}
        self._next = 0
        self._in_flight = 0
        self._safe_token: ResumeToken | None = None
        self._safe_time = 0.0

    def track(self, token: ResumeToken | None, records: int, change_time: float = 0.0) -> int:
        """Register a change (``token`` None for snapshot records) and its record count."""
        seq = self._next
        self._next = seq + 1
        self._order.append((seq, token, change_time))
        if records:
            self._remaining[seq] = records
            self._in_flight += records
        else:
            self._advance()
        return seq

    def ack(self, seq: int) -> None:
        """One record of change ``seq`` was acknowledged by Kafka."""
        self.ack_many((seq,))

    def ack_many(self, seqs: Iterable[int]) -> None:
        """One record of each change in ``seqs`` (a change may repeat) was acknowledged."""
        remaining = self._remaining
        count = 0
        for seq in seqs:
            left = remaining[seq] - 1
            if left:
                remaining[seq] = left
            else:
                del remaining[seq]
            count += 1
        self._in_flight -= count
        self._advance()

    def _advance(self) -> None:
        order, remaining = self._order, self._remaining
        token: ResumeToken | None = None
        change_time = 0.0
        while order and order[0][0] not in remaining:
            _, entry_token, entry_time = order.popleft()
            if entry_token is not None:
                token = entry_token
            if entry_time:
                change_time = entry_time
        if token is not None:
            self._safe_token = token
        if change_time:
            self._safe_time = change_time

    @property
    def safe_token(self) -> ResumeToken | None:
        """Newest token with everything up to it acknowledged (None: none yet)."""
        return self._safe_token

    @property
    def safe_change_time(self) -> float:
        """clusterTime (epoch seconds) of the newest fully acknowledged change, 0 if none."""
        return self._safe_time

    @property
    def in_flight(self) -> int:
        """Records sent and not acknowledged yet."""
        return self._in_flight

    @property
    def settled(self) -> bool:
        """Every tracked change is fully acknowledged."""
        return not self._order
