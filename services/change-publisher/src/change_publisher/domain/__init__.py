"""Pure rules of the publisher: mapping, routing, acknowledgement order, leases. No I/O."""
