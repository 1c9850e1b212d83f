"""booking-api service."""
