"""Readiness: the one condition ``/readyz`` answers on and ``gateway_ready`` exports.

An orchestrator reads ``/readyz``; Prometheus cannot, so the metrics module exports the
same checks as a gauge rather than a second, drifting definition of "ready".
"""

from push_gateway.adapters.kafka import KafkaIngest
from push_gateway.gateway import Gateway


def readiness_checks(gateway: Gateway, ingest: KafkaIngest) -> dict[str, bool]:
    """Ready when all are true: ``accepting`` (not draining for a shutdown), ``assigned``
    (Kafka answered: the ingest started and runs) and ``caught_up`` (the ingest has read
    up to the partition ends it found at start)."""
    return {
        "accepting": gateway.accepting,
        "assigned": gateway.hub.assigned and ingest.running,
        "caught_up": ingest.caught_up,
    }
