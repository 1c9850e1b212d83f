"""Prometheus metrics of one publisher, in its own registry (tests build many)."""

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


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
        self.lag = Gauge(
            "publisher_lag_seconds",
            "End-to-end lag: acknowledgement time minus clusterTime of the newest change "
            "acknowledged (0 when idle)",
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "publisher_checkpoint_age_seconds", "Seconds since the last checkpoint", registry=r
        )
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
        self.checkpoint_age.set_function(checkpoint_age)
        self.in_flight.set_function(in_flight)
        self.ready.set_function(ready)
