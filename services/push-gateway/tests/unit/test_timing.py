"""The gateway's latency histograms: what /metrics and the benchmark read from them."""

import pytest

from push_gateway.timing import Histogram


def test_durations_land_in_their_buckets_and_quantiles() -> None:
    histogram = Histogram()
    # 98 records 3 ms old, one 40 ms old, one 7 s old (capped at the last step)
    histogram.add(0.00305, count=98)
    histogram.add(0.04005)
    histogram.add(7.0)
    assert histogram.total == 100
    assert histogram.quantile(0.5) == pytest.approx(0.0031)
    assert histogram.quantile(0.99) == pytest.approx(0.0401)
    assert histogram.quantile(1.0) == pytest.approx(5.0001)
    buckets = dict(histogram.cumulative())
    assert buckets["0.002"] == 0
    assert buckets["0.003"] == 0  # 3.0 ms lands in the 3.0-3.1 ms step: above the bound
    assert buckets["0.005"] == 98
    assert buckets["0.05"] == 99
    assert buckets["+Inf"] == 100
    assert histogram.sum_seconds == pytest.approx(98 * 0.00305 + 0.04005 + 7.0)


def test_negative_durations_count_as_zero() -> None:
    histogram = Histogram()
    histogram.add(-0.5)  # clocks of producer and gateway may disagree slightly
    histogram.add(0.0002, count=3)
    assert histogram.total == 4
    assert dict(histogram.cumulative())["0.0005"] == 4
    assert histogram.quantile(0.5) == pytest.approx(0.0003)
