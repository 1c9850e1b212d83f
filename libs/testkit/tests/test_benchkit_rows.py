"""The README table's rows for the connect-storm and workers benchmarks, and the benches'
shared option parsing."""

import argparse

import pytest

from slotstream_testkit.benchkit import env_assignments, render_readme_table

STAMP = {"when": "2026-12-01T07:00:00Z", "commit": "abc1234", "load_average": [3.5, 3, 2]}


def test_connect_storm_row_gives_the_median_storm() -> None:
    runs = [
        {"streams": 10_000, "opened": 10_000, "seconds_to_open_all": s, "server_cpu_s": c}
        for s, c in ((1.9, 0.8), (0.9, 0.7), (3.0, 0.75))
    ]
    table = render_readme_table({"connect_storm": {**STAMP, "runs": runs}})
    assert (
        "| `bench/connect_storm.py` 10,000 streams, one core | all open in 1.90 s (median of 3),"
        " gateway CPU 0.75 s per storm | 2026-12-01T07:00:00Z, `abc1234`, load 3.5 |"
    ) in table


def test_workers_row_gives_measured_scaling_cpu_and_the_check() -> None:
    scaling = {
        "workers": 2,
        "deliveries_per_s_median_1": 50_000,
        "deliveries_per_s_median_2": 90_000,
        "measured_ratio": 1.8,
        "server_cpu_us_per_delivery_median_1": 3.1,
        "server_cpu_us_per_delivery_median_2": 2.4,
        "client_cpu_us_per_delivery_median": 0.6,
        "deliveries_lost": 0,
        "duplicates": 0,
    }
    table = render_readme_table({"workers": {**STAMP, "scaling": scaling}})
    assert (
        "| `bench/workers.py` 1 vs 2 workers | 50,000 vs 90,000 deliveries/s (×1.80 measured;"
        " server 3.10 vs 2.40 µs CPU per delivery), client 0.60 µs CPU per delivery, every"
        " delivery checked: 0 lost, 0 duplicated |"
    ) in table


def test_env_options_of_the_benches_parse_name_value_pairs() -> None:
    assert env_assignments(["A=1", "PYTHONPATH=/x=y", "A=2"]) == {"A": "2", "PYTHONPATH": "/x=y"}
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        env_assignments(["GATEWAY_WORKERS"])
