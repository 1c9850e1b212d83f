"""Pure gateway rules: SSE framing, positions, requests, snapshot merge, the channel hub."""
