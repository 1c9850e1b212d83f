"""Storage adapters behind the ports in ``booking_api.ports``."""
