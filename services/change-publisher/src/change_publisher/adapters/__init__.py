"""Adapters behind the ports: Mongo, the booking-api's HTTP change feed, Kafka, and fakes."""
