"""Regenerate what the docs show from the benchmark results: the README's performance
table (between its bench-table markers) and the plots under docs/img/.

    .venv/bin/python bench/report.py            # after `make bench` (which runs it)
    .venv/bin/python bench/report.py --no-plots # the table only

The table always comes from the latest result of each benchmark (bench/results/*.json);
the plots (PNG, matplotlib, shown by docs/scaling.md): deliveries/s against server CPU
per delivery for each peer over every run in bench/results/history.jsonl, and the latency
CDF and RSS per connection of the latest fan-out run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from slotstream_testkit.benchkit import (  # noqa: E402
    load_history,
    load_latest,
    render_readme_table,
    replace_table,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
README = ROOT / "README.md"
IMAGES = ROOT / "docs" / "img"

COLOURS = {
    "push-gateway": "tab:blue",
    "push-gateway-ws": "tab:purple",
    "nchan": "tab:orange",
    "pushpin": "tab:green",
}


def _save(fig: Figure, ax: Axes, path: Path) -> Path:
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [run for run in result.get("runs", []) if "skipped" not in run]


def draw(results_dir: Path, images: Path) -> list[Path]:
    images.mkdir(parents=True, exist_ok=True)
    history = [r for r in load_history(results_dir) if r.get("benchmark") == "fanout"]
    latest = load_latest(results_dir).get("fanout")
    written: list[Path] = []
    if history:
        written.append(_cpu_scatter(history, images / "fanout-deliveries-vs-cpu.png"))
    if latest:
        written.append(_latency_cdf(latest, images / "fanout-latency-cdf.png"))
        written.append(_rss(latest, images / "fanout-rss-per-connection.png"))
    return written


def _cpu_scatter(history: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for server, colour in COLOURS.items():
        points = [
            (run["server_cpu_us_per_delivery"], run["deliveries_per_s"])
            for result in history
            for run in _runs(result)
            if run["server"] == server and run.get("server_cpu_us_per_delivery")
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, label=server, color=colour, alpha=0.75)
    ax.set_xlabel("server CPU per delivery (µs)")
    ax.set_ylabel("deliveries/s")
    ax.set_title("Fan-out, every recorded run (bench/results/history.jsonl)")
    ax.grid(alpha=0.3)
    return _save(fig, ax, path)


def _latency_cdf(latest: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in _runs(latest):
        cdf = run.get("latency_cdf_ms") or []
        if cdf:
            xs, ys = zip(*cdf, strict=True)
            ax.plot(xs, ys, label=run["server"], color=COLOURS.get(run["server"]))
    ax.set_xscale("log")
    ax.set_xlabel("publish → client latency (ms, log scale)")
    ax.set_ylabel("fraction of sampled deliveries")
    load = latest.get("load_average", ["?"])[0]
    ax.set_title(f"Latency CDF, latest run {latest.get('when', '')} (load {load})")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, ax, path)


def _rss(latest: dict[str, Any], path: Path) -> Path:
    runs = _runs(latest)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = [run["server"] for run in runs]
    values = [run["rss_per_connection_kb"] for run in runs]
    bars = ax.bar(names, values, color=[COLOURS.get(n, "grey") for n in names])
    ax.bar_label(bars, fmt="%.1f kB")
    ax.axhline(4.096, color="grey", linestyle="--", linewidth=1, label="4 KiB target")
    ax.set_ylabel("RSS per connection (kB)")
    ax.set_title(f"Memory per open stream, latest run {latest.get('when', '')}")
    return _save(fig, ax, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args()
    table = render_readme_table(load_latest(RESULTS_DIR))
    README.write_text(replace_table(README.read_text(), table))
    print(f"README table regenerated from {RESULTS_DIR}")
    if not args.no_plots:
        for path in draw(RESULTS_DIR, IMAGES):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
