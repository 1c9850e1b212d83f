"""Small networking helpers for tests and the demo."""

import random
import resource
import socket
import time

#: Linux's default ephemeral range starts here: the kernel gives client sockets their local
#: port from 32768-60999, so a port picked there for a server to bind later (often in
#: another process) may meanwhile become some connection's local port on a busy machine
EPHEMERAL_START = 32768
_LOWEST = 20000
#: ports this process has handed out: two callers are never given the same port
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, below the ephemeral range."""
    return free_port_block(1)


def free_port_block(count: int, attempts: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that nothing uses right
    now, below the ephemeral range (see ``EPHEMERAL_START``) and not handed out before."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(_LOWEST, EPHEMERAL_START - count)
        block = range(base, base + count)
        if _handed_out.intersection(block):
            continue
        sockets: list[socket.socket] = []
        try:
            for port in block:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        _handed_out.update(block)
        return base
    raise RuntimeError(f"no {count} consecutive free ports below {EPHEMERAL_START}")


def raise_open_file_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit (thousands of test or benchmark
    clients need thousands of descriptors); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)
