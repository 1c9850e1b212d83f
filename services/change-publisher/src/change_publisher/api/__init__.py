"""HTTP routes of the publisher: health, readiness and metrics."""
