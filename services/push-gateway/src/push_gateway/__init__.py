"""push-gateway service."""
