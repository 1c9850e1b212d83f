"""Why the gateway encodes WebSocket server frames by hand: CPU per delivery, one event to
many connections, over real sockets (uvloop, socketpairs drained by a reader thread;
only the event-loop thread's CPU is counted).

* ``shared``  — the gateway's path: the event's frame is encoded once
  (``domain/ws_protocol.event_frame``) and the same bytes go to every ``transport.write``;
* ``library`` — each connection's ``websockets`` sans-I/O ``ServerProtocol`` encodes the
  message (``send_text`` + ``data_to_send``), then ``transport.write``;
* ``sse``     — the SSE path's shared frame, for reference.

    .venv/bin/python bench/ws_frames.py [--connections 1000] [--events 100]

Prints CPU µs per delivery of each variant (best of --repeat); noisy on a shared machine.
"""

import argparse
import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable

import uvloop
from websockets.protocol import State
from websockets.server import ServerProtocol

from push_gateway.domain.frames import event_body, with_id
from push_gateway.domain.ws_protocol import event_frame

DATA = b'{"specversion":"1.0","id":"e1","type":"slot.updated","data":{"pad":"' + b"x" * 400 + b'"}}'


def drain(socks: list[socket.socket], stop: threading.Event) -> None:
    for sock in socks:
        sock.setblocking(False)
    while not stop.is_set():
        idle = True
        for sock in socks:
            try:
                while sock.recv(1 << 16):
                    idle = False
            except BlockingIOError:
                pass
        if idle:
            time.sleep(0.001)


async def measure(
    transports: list[asyncio.Transport], deliver: Callable[[int], None], events: int
) -> float:
    start = time.thread_time()
    for seq in range(events):
        deliver(seq)
        await asyncio.sleep(0)  # let uvloop flush what the kernel did not take at once
    used = time.thread_time() - start
    return used / (events * len(transports)) * 1e6


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.Transport] = []
    clients: list[socket.socket] = []
    for _ in range(args.connections):
        server_sock, client_sock = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
        transports.append(transport)
        clients.append(client_sock)
    protocols = [ServerProtocol(state=State.OPEN) for _ in transports]
    stop = threading.Event()
    reader = threading.Thread(target=drain, args=(clients, stop), daemon=True)
    reader.start()

    def shared(seq: int) -> None:
        frame = event_frame(b"slot", DATA, b"s1:" + str(seq).encode())
        for transport in transports:
            transport.write(frame)

    def library(seq: int) -> None:
        message = b'{"event":"slot","id":"s1:' + str(seq).encode() + b'","data":' + DATA + b"}"
        for protocol, transport in zip(protocols, transports, strict=True):
            protocol.send_text(message)
            for chunk in protocol.data_to_send():
                transport.write(chunk)

    def sse(seq: int) -> None:
        frame = with_id(b"s1:" + str(seq).encode(), event_body(b"slot", DATA))
        for transport in transports:
            transport.write(frame)

    results: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, deliver in (("shared", shared), ("library", library), ("sse", sse)):
            figure = await measure(transports, deliver, args.events)
            results[name] = min(results.get(name, figure), figure)
    stop.set()
    reader.join()
    for transport in transports:
        transport.close()
    for sock in clients:
        sock.close()
    load = os.getloadavg()[0]
    print(f"{args.connections} connections x {args.events} events, load {load:.1f}")
    for name, figure in results.items():
        print(f"  {name:8s} {figure:6.2f} CPU µs per delivery (best of {args.repeat})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    uvloop.run(main(parser.parse_args()))
