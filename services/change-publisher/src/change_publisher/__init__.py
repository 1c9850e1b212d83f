"""change-publisher service."""
