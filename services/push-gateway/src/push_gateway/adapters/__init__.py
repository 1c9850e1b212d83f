"""I/O behind ports: snapshots (booking-api), Kafka history, presence."""
