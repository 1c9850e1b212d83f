"""The gateway's listening sockets: its TCP port, and with ``GATEWAY_UNIX_SOCKET`` a Unix
socket for an edge proxy on the same host.

Over loopback TCP every frame the gateway sends also runs the receiving side's TCP stack in
the sender's context (and an ACK comes back); over a Unix socket it is one copy into the
edge's receive queue. At 40 k deliveries/s through the edge that halved the gateways' CPU
(``docs/scaling.md``, "The edge's hop over a Unix socket").
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path
from typing import Final

import structlog

log = structlog.get_logger(__name__)

#: the socket file is created rw for its owner and group only (umask while binding)
UNIX_SOCKET_UMASK: Final = 0o117
#: how long the check for a live listener on an existing socket file may wait
PROBE_TIMEOUT_SECONDS: Final = 1.0


def tcp_listener(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    """A listening TCP socket; with ``reuse_port`` other processes bind the same address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixListener:
    """A listening Unix socket and the file it made at ``path``.

    :meth:`close` removes the file only while nobody listens on it and it is the one this
    socket made (by inode, which the file system may reuse), so a gateway stopping late
    does not remove the socket of the one that replaced it."""

    __slots__ = ("sock", "path", "_inode")

    def __init__(self, sock: socket.socket, path: Path, inode: int) -> None:
        self.sock = sock
        self.path = path
        self._inode = inode

    @classmethod
    def bind(cls, path: Path, backlog: int) -> UnixListener:
        """Listen at ``path``. A socket file nobody listens on (a gateway that was killed)
        is replaced; a live listener's, or a file that is no socket, is an ``OSError``."""
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(UNIX_SOCKET_UMASK)
        try:
            sock.bind(os.fspath(path))
            sock.listen(backlog)
            inode = os.stat(path).st_ino
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(mask)
        log.info("listening on a unix socket", path=str(path))
        return cls(sock, path, inode)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode and not _listened_on(self.path):
                os.unlink(self.path)


def _remove_stale(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "exists and is not a socket", os.fspath(path))
    if _listened_on(path):
        raise OSError(errno.EADDRINUSE, "another process listens on it", os.fspath(path))
    os.unlink(path)
    log.info("removed a unix socket nobody listened on", path=str(path))


def _listened_on(path: Path) -> bool:
    """Whether a process accepts connections on the socket file ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_SECONDS)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (TimeoutError, BlockingIOError):
        return True  # a listener whose backlog is full
    finally:
        probe.close()
    return True
