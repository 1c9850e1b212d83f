"""Cross-service tests: integration, browser end-to-end, deployment validation."""
