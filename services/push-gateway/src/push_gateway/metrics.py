"""Prometheus metrics, collected at scrape time from plain counters.

The hot path bumps plain ints (``hub.stats``); a prometheus ``Counter.inc()`` per delivery
would cost more than the delivery itself. Per-channel series are bounded: only the
``TOP_CHANNELS`` busiest channels get a label, the rest are summed per kind.
"""

from collections.abc import Iterator
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.gateway import Gateway
from push_gateway.readiness import readiness_checks
from push_gateway.timing import Histogram

TOP_CHANNELS: Final = 20


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway, ingest: KafkaIngest) -> None:
        self._gateway = gateway
        self._ingest = ingest

    def collect(self) -> Iterator[Metric]:
        gw, hub = self._gateway, self._gateway.hub
        yield _gauge(
            "gateway_ready",
            "1 when /readyz answers 200 (accepting, Kafka assigned, caught up), else 0",
            float(all(readiness_checks(gw, self._ingest).values())),
        )
        yield _gauge("gateway_connections", "Open SSE connections", len(gw.connections))
        yield _counter("gateway_records", "Kafka records ingested", hub.stats.records)
        yield _counter(
            "gateway_deliveries", "Frames written to live subscribers", hub.stats.deliveries
        )
        yield _counter("gateway_frames_encoded", "Records framed (once each)", hub.stats.framed)
        drops = CounterMetricFamily("gateway_drops", "Records not delivered", labels=["reason"])
        drops.add_metric(["duplicate"], hub.stats.duplicates)
        drops.add_metric(["malformed"], hub.stats.malformed)
        yield drops
        yield _counter(
            "gateway_slow_client_disconnects",
            "Clients cut off for falling behind",
            gw.stats.slow_disconnects,
        )
        yield _counter(
            "gateway_request_head_timeouts",
            "Connections closed for not sending a complete first request head within "
            "GATEWAY_REQUEST_HEAD_TIMEOUT_SECONDS",
            gw.stats.head_timeouts,
        )
        yield _gauge(
            "gateway_request_heads_waiting",
            "Connections still sending their first request head (last sweep, once a second)",
            gw.stats.heads_waiting,
        )
        yield _counter(
            "gateway_request_heads_refused",
            "Request heads answered 431 for exceeding GATEWAY_MAX_REQUEST_HEAD_BYTES",
            gw.stats.heads_refused,
        )
        yield _counter("gateway_streams_accepted", "Streams opened", gw.stats.accepted)
        yield _counter(
            "gateway_token_expiries",
            "Private streams closed because their token expired",
            gw.stats.token_expiries,
        )
        yield _counter(
            "gateway_streams_rejected", "Stream requests answered 4xx/5xx", gw.stats.rejected
        )
        yield _counter(
            "gateway_snapshot_requests",
            "Snapshots needed by connections",
            gw.stats.snapshot_requests,
        )
        yield _counter(
            "gateway_snapshot_fetches",
            "Snapshot requests sent to the booking-api (coalesced)",
            gw.catch_up.snapshots.fetches,
        )
        yield _counter(
            "gateway_snapshot_failures",
            "Catch-ups that failed for want of a snapshot",
            gw.stats.snapshot_failures,
        )
        resumes = CounterMetricFamily("gateway_resumes", "Last-Event-ID resumes", labels=["source"])
        resumes.add_metric(["ring"], gw.stats.resumes_ring)
        resumes.add_metric(["kafka"], gw.stats.resumes_kafka)
        resumes.add_metric(["gone"], gw.stats.resumes_gone)
        resumes.add_metric(["refused"], gw.stats.resumes_refused)
        resumes.add_metric(["busy"], gw.stats.resumes_busy)
        yield resumes
        yield _counter(
            "gateway_resume_end_lookups",
            "ListOffsets requests for resume points past this gateway's view of the log's "
            "end (coalesced and spaced per partition)",
            self._ingest.log_ends.lookups,
        )
        yield _gauge(
            "gateway_resumes_waiting",
            "Resumes waiting for this gateway to read as far as another one delivered",
            len(gw.catch_up.waits),
        )
        limited = CounterMetricFamily(
            "gateway_streams_limited",
            "Stream requests and WebSocket subscribes answered 429",
            labels=["limit"],
        )
        for limit, count in gw.stats.limited.items():
            limited.add_metric([limit], count)
        yield limited
        yield _counter("gateway_resyncs", "Resync control records seen", hub.stats.resyncs)
        yield _gauge(
            "gateway_consumer_lag",
            "Records behind the partition ends (last check)",
            self._ingest.lag,
        )
        fetcher = self._ingest.fetcher
        yield _counter(
            "gateway_fetch_rounds",
            "Fetch requests sent by the ingest's lean fetch loop (0 with FETCH_LOOP=aiokafka)",
            fetcher.counters.rounds if fetcher is not None else 0,
        )
        yield _counter(
            "gateway_fetch_errors",
            "Failed ingest fetches and partition errors (all retried)",
            self._ingest.fetch_errors + (fetcher.counters.errors if fetcher is not None else 0),
        )
        yield _counter(
            "gateway_fetch_holes",
            "Fetch answers with a batch missing before later ones (the broker had not stored "
            "it yet): fetched again",
            fetcher.counters.holes if fetcher is not None else 0,
        )
        yield _counter(
            "gateway_fetch_holes_skipped",
            "Holes still there after the wait: read past, counted in offset resets too",
            fetcher.counters.holes_skipped if fetcher is not None else 0,
        )
        yield _counter(
            "gateway_offset_resets",
            "Partitions moved to the end of the log after OFFSET_OUT_OF_RANGE",
            self._ingest.offset_resets,
        )
        timing = self._ingest.timing
        yield _histogram(
            "gateway_fetch_delay_seconds",
            "Kafka record timestamp to getmany handing it over, per record",
            timing.fetch_delay,
        )
        yield _histogram(
            "gateway_write_delay_seconds",
            "Kafka record timestamp to written into its subscribers' sockets, per record",
            timing.write_delay,
        )
        yield _histogram(
            "gateway_fanout_seconds", "Event-loop time of one fan-out step", timing.fanout
        )
        yield _histogram(
            "gateway_fanout_cpu_seconds", "CPU time of one fan-out step", timing.fanout_cpu
        )
        yield _histogram(
            "gateway_loop_lag_seconds", "Lateness of a 50 ms event-loop timer", timing.loop_lag
        )
        yield _histogram("gateway_gc_pause_seconds", "Cyclic garbage collections", timing.gc_pause)
        counts = hub.subscriber_counts()
        per_kind = GaugeMetricFamily(
            "gateway_subscribers", "Local subscriptions per channel kind", labels=["kind"]
        )
        channels = GaugeMetricFamily(
            "gateway_channels", "Channels with local subscribers", labels=["kind"]
        )
        for kind in ("schedule", "notifications"):
            per_kind.add_metric([kind], sum(n for c, n in counts.items() if c.kind.value == kind))
            channels.add_metric([kind], sum(1 for c in counts if c.kind.value == kind))
        yield per_kind
        yield channels
        top = GaugeMetricFamily(
            "gateway_channel_subscribers",
            f"Local subscribers of the {TOP_CHANNELS} busiest public channels",
            labels=["channel"],
        )
        public = [(n, c.name) for c, n in counts.items() if not c.is_private]
        for n, name in sorted(public, reverse=True)[:TOP_CHANNELS]:
            top.add_metric([name], n)
        yield top


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, doc, buckets=histogram.cumulative(), sum_value=histogram.sum_seconds
    )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
