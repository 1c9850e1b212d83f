"""Prometheus metrics of one publisher, in its own registry (tests build many)."""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class TermGauges(Collector):
    """``publisher_lag_seconds`` and ``publisher_checkpoint_age_seconds``: what a
    leadership term measures, exported only while this instance leads.

    A standby (or a former leader) has no stream to measure: the series are absent, not 0
    (which reads as "no lag") nor NaN (which ``sum``/``avg`` spread into the result and a
    stat panel shows as "NaN"). Absent, Prometheus marks them stale at the next scrape:
    ``max(publisher_lag_seconds)`` and an alert on it see the leader alone, and a
    per-instance panel shows a gap where an instance stood by."""

    def __init__(self) -> None:
        self.leading = False
        #: set at every checkpoint interval of the term; 0 until the first
        self.lag = 0.0
        self.checkpoint_age: Callable[[], float] = lambda: 0.0

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "publisher_lag_seconds",
            "End-to-end lag: acknowledgement time minus clusterTime of the newest change "
            "acknowledged (0 when idle); only while leading",
        )
        age = GaugeMetricFamily(
            "publisher_checkpoint_age_seconds",
            "Seconds since the last checkpoint of this term; only while leading",
        )
        if self.leading:
            lag.add_metric([], self.lag)
            age.add_metric([], self.checkpoint_age())
        yield lag
        yield age


class PublisherMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "publisher_events",
            "Records acknowledged by Kafka, by event type (deadletter for dead letters)",
            ["type"],
            registry=r,
        )
        self.skipped = Counter(
            "publisher_changes_skipped", "Changes that publish nothing (by design)", registry=r
        )
        self.resyncs = Counter(
            "publisher_resyncs",
            "stream.resync announcements (each to every partition of the topics concerned), "
            "by reason: history-lost, collection-dropped, collection-renamed, database-dropped",
            ["reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "publisher_dead_letters", "Changes that could not be mapped", registry=r
        )
        self.snapshot_documents = Counter(
            "publisher_snapshot_documents", "Documents copied by snapshots", registry=r
        )
        self.kafka_errors = Counter(
            "publisher_kafka_errors", "Sends that failed after the producer's retries", registry=r
        )
        self.source_errors = Counter(
            "publisher_source_errors", "Change source failures (reconnects)", registry=r
        )
        self.checkpoint_errors = Counter(
            "publisher_checkpoint_errors", "Checkpoint writes that failed", registry=r
        )
        self.history_lost = Counter(
            "publisher_history_lost", "Resume points no longer in the change history", registry=r
        )
        self.term = TermGauges()
        r.register(self.term)
        self.in_flight = Gauge(
            "publisher_in_flight", "Records sent and not yet acknowledged", registry=r
        )
        self.leader = Gauge("publisher_leader", "1 while this instance holds the lease", registry=r)
        self.epoch = Gauge("publisher_lease_epoch", "Epoch of the lease held (0: none)", registry=r)
        self.ready = Gauge("publisher_ready", "1 when /readyz answers 200", registry=r)

    def bind(
        self,
        *,
        checkpoint_age: Callable[[], float],
        in_flight: Callable[[], float],
        ready: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time from the running publisher."""
        self.term.checkpoint_age = checkpoint_age
        self.in_flight.set_function(in_flight)
        self.ready.set_function(ready)

    def lead(self, epoch: int) -> None:
        """A term begins: leader, its epoch, and the term's gauges (lag 0 until measured)."""
        self.leader.set(1)
        self.epoch.set(epoch)
        self.term.lag = 0.0
        self.term.leading = True

    def stand_by(self) -> None:
        """The term ended (lease lost, fenced, stopped): the term's gauges go."""
        self.leader.set(0)
        self.epoch.set(0)
        self.term.leading = False
