"""Real parts for tests: a Kafka-compatible broker, a TCP fault proxy, MongoDB bindings."""
