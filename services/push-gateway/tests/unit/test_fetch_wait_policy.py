"""The long-poll bound follows the work a fetch round carries (domain/fetch_wait.py)."""

from push_gateway.domain.fetch_wait import ROUND_WORK, WINDOW_SECONDS, FetchWait


def rounds(wait: FetchWait, per_second: int, seconds: float, start: float = 0.0) -> float:
    """Rounds every 5 ms carrying ``per_second`` units of work (10 records, the rest
    deliveries, at least one) for ``seconds``; returns the time reached."""
    now = start
    step = 0.005
    while now < start + seconds:
        now += step
        work = per_second * step
        wait.after_round(10, max(1, round(work) - 10), now)
    return now


def test_silence_is_long_first_records_short() -> None:
    wait = FetchWait(busy_ms=5, moderate_ms=25, idle_ms=100)
    assert wait.after_round(0, 0, 0.0) == 100
    assert wait.idle
    assert wait.after_round(3, 0, 1.0) == 5  # the first records after silence: short
    assert not wait.idle
    assert wait.after_round(3, 0, 1.001) == 5  # still measuring its first window


def test_moderate_rate_waits_longer_busy_rate_short() -> None:
    wait = FetchWait(busy_ms=5, moderate_ms=25, idle_ms=100)
    wait.after_round(1, 0, 0.0)
    now = rounds(wait, 10_000, 1.0)
    assert wait.current == round(1000 * ROUND_WORK / 10_000)  # 25 ms at 10 k units/s
    now = rounds(wait, 200_000, 1.0, now)
    assert wait.current == 5  # under load: the short bound
    now = rounds(wait, 1_000, 1.0, now)
    assert wait.current == 25  # a trickle: never beyond the moderate bound
    assert wait.after_round(0, 0, now + 1) == 100


def test_reacts_within_one_window() -> None:
    wait = FetchWait(busy_ms=5, moderate_ms=25, idle_ms=100)
    wait.after_round(1, 0, 0.0)
    now = rounds(wait, 2_000, 1.0)
    assert wait.current == 25
    rounds(wait, 500_000, 2 * WINDOW_SECONDS + 0.01, now)
    assert wait.current == 5


def test_moderate_bound_equal_to_busy_disables_it() -> None:
    wait = FetchWait(busy_ms=5, moderate_ms=5, idle_ms=100)
    wait.after_round(1, 0, 0.0)
    rounds(wait, 1_000, 1.0)
    assert wait.current == 5


def test_records_nobody_here_subscribes_to_wait_like_silence() -> None:
    wait = FetchWait(busy_ms=5, moderate_ms=25, idle_ms=100)
    wait.after_round(10, 0, 0.0)
    now = 0.0
    while now < 1.0:  # 900 records/s, no delivery
        now += 0.025
        wait.after_round(22, 0, now)
    assert wait.current == 100
    assert wait.unwatched
    assert not wait.idle
    # the first deliveries: the next window picks the bound by the rate again
    while now < 1.6:
        now += 0.1
        wait.after_round(90, 900, now)
    assert wait.current == 25
    assert not wait.unwatched


def test_the_broker_holds_fetches_only_at_low_moderate_rates() -> None:
    """A held fetch saves rounds where they carry little (10 k units/s: the 1 k conns size of
    bench/fanout.py) but only adds latency where rounds are full anyway (20 k deliveries/s
    per gateway: bench/e2e_latency.py, whose p99 rose from ~42 to ~70 ms with the hold)."""
    wait = FetchWait(busy_ms=5, moderate_ms=25, idle_ms=100, hold_from_ms=16)
    assert wait.after_round(0, 0, 0.0) == 100
    assert not wait.holds  # silent: the broker answers the first record at once
    wait.after_round(1, 0, 1.0)
    now = rounds(wait, 10_000, 1.0, 1.0)
    assert wait.current == 25
    assert wait.holds
    now = rounds(wait, 20_000, 1.0, now)
    assert wait.current == 12
    assert not wait.holds
    now = rounds(wait, 200_000, 1.0, now)
    assert wait.current == 5
    assert not wait.holds
    while now < 5.0:  # records nobody here subscribes to: held for the idle bound
        now += 0.025
        wait.after_round(22, 0, now)
    assert wait.unwatched
    assert wait.holds


def test_hold_from_the_busy_bound_holds_every_moderate_fetch() -> None:
    wait = FetchWait(busy_ms=5, moderate_ms=25, idle_ms=100, hold_from_ms=0)
    wait.after_round(1, 0, 0.0)
    rounds(wait, 20_000, 1.0)
    assert 5 < wait.current < 16
    assert wait.holds
