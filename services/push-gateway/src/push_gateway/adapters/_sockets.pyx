# cython: language_level=3, boundscheck=False, wraparound=False
"""Writes a stream's frames with ``send(2)`` on the transport's socket, and the hub's
fan-out loop that calls it without the interpreter in between.

Why: at 100 k deliveries/s most of a delivery's user-space time went to reaching the
per-connection objects on the way to the system call — the ``transport.write`` bound
method, uvloop's transport and its libuv handle, each a cache miss with thousands of
connections (``docs/scaling.md``, issue 14 item 1). A :class:`SocketWriter` is one small
object holding the socket's descriptor; the loop in :func:`deliver` reads it and sends.

Ordering with the transport's own buffer: a frame is sent directly only while the
transport has nothing buffered. When ``send`` takes less than the whole frame (the
client's socket buffer is full) or fails, the rest goes to ``transport.write``, which
buffers it, applies its flow control (``pause_writing`` above the high-water mark: the
slow-consumer close) and reports errors by closing the connection as before; every later
frame follows it there until the transport's buffer is empty again.

The descriptor is valid while the connection is: asyncio and uvloop close a transport's
socket only after its protocol's ``connection_lost`` has run, and the stream's
``connection_lost`` calls :meth:`SocketWriter.release` (so does its ``close``). Every
write to a stream must go through its writer once the writer exists, or a frame could
overtake bytes waiting in the transport's buffer.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EINTR, errno

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    const int MSG_DONTWAIT
    const int MSG_NOSIGNAL


cdef class SocketWriter:
    """Writes bytes to one connection, in order: straight to its socket while the
    transport's buffer is empty, through ``transport.write`` otherwise."""

    cdef int _fd
    #: the transport may hold unsent bytes: ask it before sending directly
    cdef bint _spilled
    cdef object _transport

    def __cinit__(self, object transport, int fd):
        self._transport = transport
        self._fd = fd
        self._spilled = True  # whatever was written before the writer existed

    cdef int write(self, bytes data) except -1:
        cdef const char *buf
        cdef Py_ssize_t size
        cdef Py_ssize_t sent
        if self._spilled:
            if self._fd < 0 or self._transport.get_write_buffer_size():
                self._transport.write(data)
                return 0
            self._spilled = False
        buf = PyBytes_AS_STRING(data)
        size = PyBytes_GET_SIZE(data)
        if size == 0:
            return 0
        while True:
            sent = send(self._fd, buf, <size_t>size, MSG_DONTWAIT | MSG_NOSIGNAL)
            if sent == size:
                return 0
            if sent < 0 and errno == EINTR:
                continue
            break
        # a full socket buffer (EAGAIN), a partial send or an error (the transport meets it
        # on its own write and closes the connection, as before)
        self._spilled = True
        self._transport.write(data[sent:] if sent > 0 else data)
        return 0

    def __call__(self, bytes data not None) -> None:
        self.write(data)

    def release(self) -> None:
        """Forget the descriptor (the connection is closing): later writes, if any, go to
        the transport, which knows it is closed."""
        self._fd = -1
        self._spilled = True

    @property
    def fd(self) -> int:
        return self._fd


def deliver(dict writers not None, bytes frame not None) -> None:
    """Write ``frame`` with every writer in ``writers`` (subscriber → writer)."""
    for writer in writers.values():
        if type(writer) is SocketWriter:
            (<SocketWriter>writer).write(frame)
        else:
            writer(frame)
