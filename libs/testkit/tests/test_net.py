"""Free ports for servers that a test starts later, often in another process."""

from slotstream_testkit.net import EPHEMERAL_START, free_port, free_port_block


def test_free_ports_lie_below_the_ephemeral_range() -> None:
    """A port from the ephemeral range may become a client socket's local port before the
    server binds it (the kernel hands those out to every outgoing connection)."""
    ports = [free_port() for _ in range(50)]
    assert all(port < EPHEMERAL_START for port in ports), ports
    base = free_port_block(3)
    assert base + 2 < EPHEMERAL_START


def test_a_port_is_handed_out_once_per_process() -> None:
    ports = [free_port() for _ in range(200)]
    blocks = [free_port_block(3) for _ in range(20)]
    taken = ports + [base + n for base in blocks for n in range(3)]
    assert len(set(taken)) == len(taken)
