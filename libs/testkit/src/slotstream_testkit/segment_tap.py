"""When each TCP segment reached a receiver on loopback, however late the receiver reads it.

A TCP socket's receive stamp (``SO_TIMESTAMPNS``) is the stamp of the last segment a
``recvmsg`` read, and the kernel merges a segment into the one before it while that one is
still unread (the merged one keeps the later stamp). So a receiver that has not read a frame
before the next one arrives on the same connection gets the next one's time for both. The
load client of ``bench/e2e_latency.py`` holds 900 browsers in one process on the cores the
stack uses, and in loaded runs it fell behind by tens of milliseconds: its slowest frames
were stamped with the frame that came after them. :class:`SegmentTap` reads the same stamp
per segment, from a packet socket on the loopback device (incoming segments only, filtered
in the kernel), queued there with its own stamp until it is read.

The filter is a classic BPF program of a few instructions per port, assembled here: the
standard library's packet socket is all it needs, where a capture library (scapy, libpcap
bindings) would bring libpcap and a filter compiler for a program of about twenty.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from collections.abc import Collection, Mapping

#: Linux's values (Python's socket module does not name them)
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_STATISTICS = 6
ETH_P_IP = 0x0800
TIMESPEC = struct.Struct("@ll")
#: ``struct sock_filter`` (code, jt, jf, k) and ``struct sock_fprog`` (length, pointer)
_INSTRUCTION = struct.Struct("@HBBI")
_PROGRAM = struct.Struct("@HP")
#: ``struct tpacket_stats`` (packets, drops), reset by each read
_STATS = struct.Struct("@II")
#: IPv4 and TCP headers without options: a segment with ``min_payload`` bytes of payload is
#: at least this much longer
_HEADERS = 40
_CAPTURE_BYTES = 1 << 16
_RECEIVE_BUFFER = 32 << 20

Instruction = tuple[int, int, int, int]
#: an instruction whose jump targets may be labels, resolved by :func:`_assemble`
_Line = tuple[int, int | str, int | str, int]
_LDB_ABS, _LDH_ABS, _LDH_IND, _LDX_MSH = 0x30, 0x28, 0x48, 0xB1
_JEQ, _JGE, _RET = 0x15, 0x35, 0x06


def segment_filter(
    source: int, min_payload: int, relays: Collection[int] = (), to: Collection[int] = ()
) -> list[Instruction]:
    """A classic BPF program over an IPv4 packet: TCP from port ``source`` to anyone, or
    from one of ``relays`` to one of the ports ``to``, whose total length leaves room for
    ``min_payload`` bytes of payload (shorter segments pass too when their headers carry
    options; none longer is dropped)."""
    lines: list[str | _Line] = [
        (_LDB_ABS, 0, 0, 9),  # the protocol
        (_JEQ, 0, "drop", socket.IPPROTO_TCP),
        (_LDH_ABS, 0, 0, 2),  # the total length
        (_JGE, 0, "drop", min_payload + _HEADERS),
        (_LDX_MSH, 0, 0, 0),  # X = the IP header's length
        (_LDH_IND, 0, 0, 0),  # the TCP source port
        (_JEQ, "accept", 0, source),
    ]
    if relays and to:
        lines += [(_JEQ, "to", 0, port) for port in relays]
        lines += [(_RET, 0, 0, 0), "to", (_LDH_IND, 0, 0, 2)]  # the destination port
        lines += [(_JEQ, "accept", 0, port) for port in to]
    lines += ["drop", (_RET, 0, 0, 0), "accept", (_RET, 0, 0, _CAPTURE_BYTES)]
    return _assemble(lines)


def _assemble(lines: list[str | _Line]) -> list[Instruction]:
    """Resolve jumps to labels (a label names the instruction after it) to offsets."""
    labels: dict[str, int] = {}
    program: list[_Line] = []
    for line in lines:
        if isinstance(line, str):
            labels[line] = len(program)
        else:
            program.append(line)

    def offset(target: int | str, at: int) -> int:
        jump = labels[target] - at - 1 if isinstance(target, str) else target
        if not 0 <= jump <= 255:
            raise ValueError(f"a jump of {jump} instructions does not fit classic BPF")
        return jump

    return [
        (code, offset(jt, at), offset(jf, at), k) for at, (code, jt, jf, k) in enumerate(program)
    ]


def received_at(ancillary: list[tuple[int, int, bytes]], fallback_ns: int) -> int:
    """The kernel's receive stamp in ``recvmsg``'s ancillary data (ns since the epoch, as
    ``time.time_ns``), or ``fallback_ns`` where the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            seconds, nanoseconds = TIMESPEC.unpack_from(data)
            return int(seconds * 1_000_000_000 + nanoseconds)
    return fallback_ns


def wait_for_receive_stamps(timeout: float = 5.0) -> bool:
    """Whether the kernel stamps packets as they arrive, waiting up to ``timeout`` s for it.

    The kernel turns arrival stamps on a moment after the first socket asks for them (a
    deferred switch), and off again after the last one closes; until then a packet socket
    is stamped when it is read, which would pass a read's lateness off as an arrival. A
    datagram to this host, read 5 ms after it was sent, tells which: stamped on arrival,
    its stamp is older than the send's return."""
    deadline = time.monotonic() + timeout
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        receiver.bind(("127.0.0.1", 0))
        while True:
            sender.sendto(b".", receiver.getsockname())
            sent = time.time_ns()
            time.sleep(0.005)
            _data, ancillary, _flags, _address = receiver.recvmsg(16, 64)
            stamp = received_at(ancillary, 0)
            if 0 < stamp <= sent:
                return True
            if time.monotonic() > deadline:
                return False


class SegmentTap:
    """Per-segment receive stamps of the segments servers send on loopback.

    Between :meth:`watch` and :meth:`stop` it notes, for each watched connection (by its
    local port), the stamp of the first segment that contains ``needle``. Only then is it
    bound to the loopback device: while bound, every IPv4 packet received there passes
    through its filter, a cost paid in the sending process's system call (the gateways'
    and the edge's), so the rest of the time it is not in the packets' path at all.
    Opening it needs ``CAP_NET_RAW``: :meth:`open` returns ``None`` without it. It asks for
    receive stamps and returns once the kernel gives them (:func:`wait_for_receive_stamps`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.needle = b""
        self.ports: Mapping[int, int] = {}
        self.found: dict[int, int] = {}
        #: one packet at a time (a loopback segment is at most 64 KiB)
        self._buffer = bytearray(_CAPTURE_BYTES)

    @classmethod
    def open(
        cls, source: int, min_payload: int, relays: Collection[int] = (), to: Collection[int] = ()
    ) -> SegmentTap | None:
        """A tap on the segments from port ``source`` (and from ``relays`` to ``to``: see
        :func:`segment_filter`), or ``None`` without ``CAP_NET_RAW``."""
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # not bound yet
        except PermissionError:
            return None
        tap = cls(sock)
        tap._attach(segment_filter(source, min_payload, relays, to))
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # loopback: each once
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if not wait_for_receive_stamps():
            sock.close()
            raise RuntimeError("the kernel did not turn on receive stamps within 5 s")
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RECEIVE_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.setblocking(False)
        return tap

    def watch(self, needle: bytes, ports: Mapping[int, int]) -> None:
        """From now on, stamp the first segment containing ``needle`` to each of ``ports``
        (local port → the number that :meth:`stop` reports it under)."""
        self.needle, self.ports, self.found = needle, ports, {}
        self.sock.bind(("lo", ETH_P_IP))

    def stop(self) -> dict[int, int]:
        """Stop capturing; the stamps found since :meth:`watch`, by the ports' numbers."""
        self.sock.bind(("lo", 0))  # protocol 0: out of the packets' path, the queue kept
        self._read_queued()
        found, self.found, self.needle, self.ports = self.found, {}, b"", {}
        return found

    def _read_queued(self) -> None:
        """Read what the kernel queued (each packet with its own stamp)."""
        packet = self._buffer
        while True:
            try:
                size, ancillary, _flags, _address = self.sock.recvmsg_into([packet], 64)
            except (BlockingIOError, InterruptedError):
                return
            # the filter passed only TCP over IPv4 with a payload: both headers are whole
            ip_header = (packet[0] & 0x0F) * 4
            payload = ip_header + (packet[ip_header + 12] >> 4) * 4
            if not self.needle or packet.find(self.needle, payload, size) < 0:
                continue
            number = self.ports.get(int.from_bytes(packet[ip_header + 2 : ip_header + 4]))
            stamp = received_at(ancillary, 0)
            if number is not None and number not in self.found and stamp:
                self.found[number] = stamp

    def dropped(self) -> int:
        """Packets the kernel dropped for want of room since the last call."""
        _packets, drops = _STATS.unpack(
            self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        )
        return int(drops)

    def close(self) -> None:
        self.sock.close()

    def _attach(self, program: list[Instruction]) -> None:
        """Attach ``program`` as the socket's filter (the kernel copies it)."""
        code = b"".join(_INSTRUCTION.pack(*instruction) for instruction in program)
        buffer = ctypes.create_string_buffer(code, len(code))
        self.sock.setsockopt(
            socket.SOL_SOCKET,
            SO_ATTACH_FILTER,
            _PROGRAM.pack(len(program), ctypes.addressof(buffer)),
        )
