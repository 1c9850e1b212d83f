"""The Unix socket's file: made for the owner and its group, and removed only while it is
the listener's own."""

import socket
import stat
from pathlib import Path

import pytest

from push_gateway.adapters.listeners import UnixListener


def test_closing_removes_the_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    listener = UnixListener.bind(path, 16)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.close()
    listener.close()
    assert not path.exists()


def test_a_late_close_leaves_the_socket_of_the_listener_that_replaced_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    old = UnixListener.bind(path, 16)
    old.sock.close()  # stopped serving (its file still there), not yet cleaned up
    new = UnixListener.bind(path, 16)  # nobody listened: replaced
    old.close()
    assert path.exists()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.close()
    new.close()


def test_a_listener_too_busy_to_accept_is_still_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sock"
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(str(path))
    busy.listen(0)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(str(path))  # fills the backlog: the next connect would block
    with pytest.raises(OSError, match="another process listens on it"):
        UnixListener.bind(path, 16)
    assert path.exists()
    waiting.close()
    busy.close()
