"""Slotstream contracts: everything that crosses a service boundary, defined once."""
