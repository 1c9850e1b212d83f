"""How long the ingest consumer lets the broker hold a fetch: its long-poll bound, per round.

A fetch round costs the gateway about 0.15 ms of CPU whatever it brings (aiokafka encodes
the request and decodes the response in Python and wakes two tasks). A broker that answers
at the deadline (Tansu) is asked once per bound, so with a fixed 5 ms bound a gateway
spends ~50 ms of CPU per second on rounds as soon as records flow at all — at 10,000
deliveries/s that was ~5 µs per delivery, more than the delivery itself (a ``write``,
~6 µs of kernel time on loopback). Apache Kafka answers as soon as data arrives, so there
the bound only matters while nothing arrives.

So the bound follows the work the rounds carry:

* silent (a whole ``getmany`` of a second brought nothing): ``idle_ms``;
* the first records after silence: ``busy_ms`` (the shortest), until a window of
  ``WINDOW_SECONDS`` has been measured;
* records flowing: long enough for one round to carry about ``ROUND_WORK`` units of work
  (a record or a delivery each) at the rate of the last window, between ``busy_ms`` and
  ``moderate_ms``. Under load (≥ 50,000 units/s) that is ``busy_ms``; at 10,000
  deliveries/s about 25 ms, so rounds cost ~10 % of the deliveries they carry instead of
  half, for at most ``moderate_ms`` of added latency at rates where it buys the most;
* records flowing that nobody here subscribes to (a whole window without a delivery):
  ``idle_ms`` — nobody waits for them, so their latency is worth nothing, and a round
  costs the same CPU whatever it brings. The first records with subscribers then wait up
  to ``idle_ms`` once; the window after them picks a bound by the rate again.

The ingest asks the broker to hold a fetch for the whole bound (fetch ``min_bytes``,
``GATEWAY_KAFKA__FETCH_MODERATE_MIN_BYTES``) while :attr:`FetchWait.holds`: a broker
answers as soon as any data is there otherwise (Apache Kafka, and Tansu too), which at a
few produce requests every 10 ms meant a round per produce request, whatever the bound.
It holds only where rounds carry little: a bound of at least ``hold_from_ms``
(``GATEWAY_KAFKA__FETCH_HOLD_FROM_MS``; below ~15,600 units/s with the defaults), and for
records nobody here subscribes to. Above that a round answered on data is full enough, and
a hold only adds its bound to every record's latency (at 20,000 deliveries/s per gateway
``bench/e2e_latency.py``'s p99 went from ~42 to ~70 ms with it). A fetch for a partition
the broker last reported records past the position of is not held (``LeanFetcher``): those
records are there already.
"""

from typing import Final

#: how long the work rate is measured before the bound is chosen again
WINDOW_SECONDS: Final = 0.25
#: units of work (records + deliveries) one round should carry before it is cheap enough
ROUND_WORK: Final = 250


class FetchWait:
    """Chooses the long-poll bound (ms) after each ``getmany``; see the module docstring."""

    __slots__ = (
        "busy_ms",
        "moderate_ms",
        "idle_ms",
        "hold_from_ms",
        "current",
        "_work",
        "_deliveries",
        "_since",
    )

    def __init__(self, busy_ms: int, moderate_ms: int, idle_ms: int, hold_from_ms: int = 0) -> None:
        self.busy_ms = busy_ms
        self.moderate_ms = max(busy_ms, moderate_ms)
        self.idle_ms = idle_ms
        self.hold_from_ms = hold_from_ms
        self.current = busy_ms
        self._work = 0
        self._deliveries = 0
        #: start of the current measuring window; None while the log is silent
        self._since: float | None = None

    @property
    def idle(self) -> bool:
        return self._since is None and self.current == self.idle_ms

    def after_round(self, records: int, deliveries: int, now: float) -> int:
        """The bound for the next fetch, given what the last ``getmany`` brought
        (``records``), the deliveries made since the previous call, and the time."""
        if not records:
            self._since = None
            self.current = self.idle_ms
            return self.current
        if self._since is None:
            self._since = now
            self._work = 0
            self._deliveries = 0
            self.current = self.busy_ms
            return self.current
        self._work += records + deliveries
        self._deliveries += deliveries
        elapsed = now - self._since
        if elapsed >= WINDOW_SECONDS:
            if not self._deliveries:
                self.current = max(self.moderate_ms, self.idle_ms)  # nobody is waiting
            else:
                per_second = self._work / elapsed
                wanted = round(1000 * ROUND_WORK / per_second)
                self.current = min(self.moderate_ms, max(self.busy_ms, wanted))
            self._since = now
            self._work = 0
            self._deliveries = 0
        return self.current

    @property
    def unwatched(self) -> bool:
        """Records flow, and nobody here subscribes to them (the bound is ``idle_ms``)."""
        return self._since is not None and self.current == max(self.moderate_ms, self.idle_ms)

    @property
    def holds(self) -> bool:
        """Whether the broker should hold the next fetch for the whole bound: records flow,
        and the bound is above the short one and at least ``hold_from_ms``, or nobody here
        subscribes to them (see the module docstring)."""
        if self._since is None or self.current <= self.busy_ms:
            return False
        return self.unwatched or self.current >= self.hold_from_ms
