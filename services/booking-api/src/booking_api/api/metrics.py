"""Prometheus metrics of one app instance (its own registry, so tests can build many)."""

from prometheus_client import CollectorRegistry, Counter, Histogram

from booking_api.domain.repair import RepairReason


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "booking_api_http_requests_total",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "booking_api_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.bookings_created = Counter(
            "booking_api_bookings_created_total", "Bookings created", registry=self.registry
        )
        self.booking_conflicts = Counter(
            "booking_api_booking_conflicts_total",
            "Booking attempts refused because the slot was taken",
            registry=self.registry,
        )
        self.bookings_cancelled = Counter(
            "booking_api_bookings_cancelled_total", "Bookings cancelled", registry=self.registry
        )
        self.slots_repaired = Counter(
            "booking_api_slots_repaired_total",
            "Slots the repair freed, by why: held by a booking that does not exist "
            "(no-booking) or by a cancelled one (booking-cancelled)",
            ["why"],
            registry=self.registry,
        )
        # Every reason exported at 0 from the start: a series born at 1 with the first repair
        # after a restart would show no increase(), and the alert on repairs would miss it.
        for why in RepairReason:
            self.slots_repaired.labels(why=why.value)
        self.slot_repair_failures = Counter(
            "booking_api_slot_repair_failures_total",
            "Repair runs the store failed (tried again at the next interval)",
            registry=self.registry,
        )
