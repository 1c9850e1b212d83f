"""Which resume token is safe to checkpoint while sends are acknowledged out of order.

Every change is tracked in stream order with the number of Kafka records it produced
(zero for a skipped change or an idle ``postBatchResumeToken``). Kafka acknowledges records
per partition, so acks arrive out of order across partitions; the safe token is the token
of the newest change such that it and every change before it are fully acknowledged.
Checkpointing only that token is what makes delivery at-least-once.
"""

from dataclasses import dataclass

from slotstream_contracts.changes import ResumeToken


@dataclass(slots=True)
class _Entry:
    token: ResumeToken | None
    remaining: int
    #: Seconds since the epoch of the change (clusterTime), for the lag metric; 0 if none.
    change_time: float


class AckTracker:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._head = 0
        self._next = 0
        self._in_flight = 0
        self._safe_token: ResumeToken | None = None
        self._safe_time = 0.0

    def track(self, token: ResumeToken | None, records: int, change_time: float = 0.0) -> int:
        """Register a change (``token`` None for snapshot records) and its record count."""
        seq = self._next
        self._next += 1
        self._entries[seq] = _Entry(token, records, change_time)
        self._in_flight += records
        if records == 0:
            self._advance()
        return seq

    def ack(self, seq: int) -> None:
        """One record of change ``seq`` was acknowledged by Kafka."""
        self._entries[seq].remaining -= 1
        self._in_flight -= 1
        if seq == self._head:
            self._advance()

    def _advance(self) -> None:
        entries = self._entries
        while self._head < self._next and entries[self._head].remaining == 0:
            entry = entries.pop(self._head)
            self._head += 1
            if entry.token is not None:
                self._safe_token = entry.token
            if entry.change_time:
                self._safe_time = entry.change_time

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
        return self._head == self._next
