"""Where the gateway's latency goes, measured inside the process.

Three figures separate the gateway's own time from the broker's and the clients':

* ``write_delay`` — per record: its Kafka timestamp (the producer's create time) → the end
  of the fan-out slice that wrote it into its subscribers' sockets (or routed it to nobody),
  counted per slice of up to 16 records by the slice's oldest record (an upper bound);
* ``fetch_delay`` — the same records: Kafka timestamp → the moment ``getmany`` handed them
  to the gateway (producer linger + broker + fetch long-poll + waiting for the loop);
* ``fanout`` — how long one fan-out step held the event loop (``fanout_cpu``: the CPU it
  used; wall time well above it means the OS ran something else meanwhile);
* ``loop_lag`` — how late a periodic timer fired (any stall: fan-out, snapshots, presence,
  GC, or the OS not scheduling the process), sampled every ``TICK_SECONDS`` on the shared
  timer grid; ``gc_pause`` — each cyclic-GC collection.

Counts go into fixed 0.1 ms buckets (plain list increments, cheap enough for the ingest
loop) and are exported as Prometheus histograms at scrape time.
"""

import asyncio
import math
import time
from typing import Final

#: bucket bounds (seconds) of the exported histograms
BOUNDS: Final = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.0,
    5.0,
)
STEP_SECONDS: Final = 0.0001
#: The grid the gateway's periodic timers fire on (the loop-lag sample, the heartbeat and
#: keep-alive steps, uvicorn's tick). A wake-up of an idle process costs ~0.1 ms of CPU on
#: a virtual machine, whatever little it then does; timers due at the same instant share
#: one. With the loop-lag sample every 50 ms and uvicorn's 100 ms tick on their own, they
#: were ~30 of an idle gateway's ~50 wake-ups a second.
TICK_SECONDS: Final = 0.25
LOOP_LAG_PERIOD_SECONDS: Final = TICK_SECONDS


def next_on_grid(now: float, period: float = TICK_SECONDS) -> float:
    """The next multiple of ``period`` after ``now`` (the event loop's clock): timers due
    then fire together with the other periodic ones."""
    return (math.floor(now / period) + 1) * period


async def sleep_to_grid(period: float = TICK_SECONDS) -> float:
    """Sleep until the next multiple of ``period`` on the event loop's clock (so periodic
    timers with the same period fire together); returns that instant."""
    loop = asyncio.get_running_loop()
    due = next_on_grid(loop.time(), period)
    await asyncio.sleep(due - loop.time())
    return due


class Histogram:
    """Counts of durations in 0.1 ms steps up to 5 s (longer ones land in the last step)."""

    __slots__ = ("counts", "total", "sum_seconds", "_last")

    def __init__(self) -> None:
        self._last = round(BOUNDS[-1] / STEP_SECONDS)
        self.counts = [0] * (self._last + 1)
        self.total = 0
        self.sum_seconds = 0.0

    def add(self, seconds: float, count: int = 1) -> None:
        step = int(seconds * 10_000)
        self.counts[step if 0 <= step < self._last else (0 if step < 0 else self._last)] += count
        self.total += count
        self.sum_seconds += seconds * count

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, count ≤ bound)`` pairs in the Prometheus form, ending with +Inf."""
        out: list[tuple[str, int]] = []
        running = 0
        start = 0
        for bound in BOUNDS:
            stop = round(bound / STEP_SECONDS)
            running += sum(self.counts[start:stop])
            start = stop
            out.append((repr(bound), running))
        out.append(("+Inf", self.total))
        return out

    def quantile(self, fraction: float) -> float | None:
        """The step (seconds, upper edge) below which ``fraction`` of the counts lie."""
        if not self.total:
            return None
        wanted = fraction * self.total
        running = 0
        for step, count in enumerate(self.counts):
            running += count
            if running >= wanted:
                return (step + 1) * STEP_SECONDS
        return BOUNDS[-1]


class IngestTiming:
    """The gateway's own latency figures (see the module docstring)."""

    def __init__(self) -> None:
        self.write_delay = Histogram()
        self.fetch_delay = Histogram()
        self.fanout = Histogram()
        self.fanout_cpu = Histogram()
        self.loop_lag = Histogram()
        self.gc_pause = Histogram()
        self._gc_started = 0.0

    def on_gc(self, phase: str, info: dict[str, int]) -> None:  # noqa: ARG002 - gc's signature
        """A ``gc.callbacks`` entry: time every collection of the cyclic collector."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause.add(time.perf_counter() - self._gc_started)

    async def watch_loop(self) -> None:
        """Measure how late a periodic timer fires: the event loop's stalls."""
        loop = asyncio.get_running_loop()
        while True:
            due = await sleep_to_grid(LOOP_LAG_PERIOD_SECONDS)
            self.loop_lag.add(max(0.0, loop.time() - due))
