"""``GATEWAY_WORKERS=N``: N full gateway processes on one port, one per core.

With ``N > 1`` the process started as ``slotstream-push-gateway`` becomes a small supervisor:
it starts N workers (``python -m push_gateway`` with ``GATEWAY_WORKER_INDEX=n`` and
``GATEWAY_INSTANCE_ID=<instance_id>-w<n>``), each binding the same host and port with
``SO_REUSEPORT``, so the kernel spreads new connections over them. Every worker is a whole
gateway — its own Kafka ingest, ring buffers, snapshots, presence record and metrics under
its own instance id; nothing is shared between them but the listening port, so a client's
resume works on any of them exactly as on any gateway behind the edge.

Each worker runs in a session of its own, as N separately started gateways would: Linux's
scheduler (with ``sched_autogroup``, the default outside systemd/cgroup-managed services)
shares a busy core between *sessions*, so N workers in the supervisor's session would
together get the CPU share of one process on a shared host — measured: two workers in one
session got less CPU than one (``docs/scaling.md``). The supervisor forwards SIGTERM/SIGINT
(a terminal's Ctrl-C reaches only the supervisor's session; each worker drains its streams
as a single gateway does), restarts a worker that died with a back-off, and exits once all
have stopped. A worker that refuses to start (exit 2: a port it cannot listen on) or gives
up waiting for Kafka (exit 69, ``GATEWAY_KAFKA__START_TIMEOUT_SECONDS``) is not restarted:
the supervisor stops the others and exits with its status. A worker waiting for Kafka is
no crash: it serves ``/healthz`` and answers ``/readyz`` 503 until Kafka answers. A
worker's ``/metrics`` says which instance answered (``gateway_instance_info``); with
``GATEWAY_WORKER_METRICS_PORT`` worker n also listens on that port + n, so a scraper can
reach each one (through the shared port a scrape lands on any worker); without it the
supervisor starts anyway and says so in one warning line.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Final

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from push_gateway.adapters.listeners import UnixListener, tcp_listener
from push_gateway.config import Settings
from slotstream_contracts.settings import KAFKA_UNREACHABLE_EXIT_CODE

log = structlog.get_logger(__name__)

#: set by the supervisor for each worker it starts (internal, not a user setting)
WORKER_INDEX_ENV: Final = "GATEWAY_WORKER_INDEX"
#: the descriptor of the supervisor's Unix socket (``GATEWAY_UNIX_SOCKET``) in each worker
WORKER_UNIX_FD_ENV: Final = "GATEWAY_WORKER_UNIX_FD"
BACKOFF_FIRST_SECONDS: Final = 0.5
BACKOFF_MAX_SECONDS: Final = 15.0
#: a worker up this long is healthy again: its next crash restarts it at once
STABLE_SECONDS: Final = 30.0
STOP_GRACE_SECONDS: Final = 20.0
#: a worker's exit status when it refuses to start (``__main__``: a listener it cannot make,
#: as for a single gateway): a restart would fail again, so the supervisor stops with it
REFUSED_EXIT_CODE: Final = 2
#: a worker's exit statuses that stop the supervisor (exiting with the same status) instead
#: of a restart: it refused to start, or Kafka stayed unreachable for its
#: ``GATEWAY_KAFKA__START_TIMEOUT_SECONDS`` (the workers share the bound: restarting one
#: would restart the wait the operator bounded)
FINAL_EXIT_CODES: Final = frozenset({REFUSED_EXIT_CODE, KAFKA_UNREACHABLE_EXIT_CODE})
_PR_SET_PDEATHSIG: Final = 1


def worker_index() -> int | None:
    value = os.environ.get(WORKER_INDEX_ENV)
    return int(value) if value is not None else None


def worker_instance_id(base: str, index: int) -> str:
    suffix = f"-w{index}"
    return base[: 64 - len(suffix)] + suffix


class CannotListen(Exception):
    """A worker cannot bind one of its ports (taken by another program, an address not of
    this host, a port below 1024 without the capability): the message names the address."""


def _listener(host: str, port: int, backlog: int, reuse_port: bool) -> socket.socket:
    try:
        return tcp_listener(host, port, backlog, reuse_port)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc}") from exc


def worker_sockets(settings: Settings, index: int) -> list[socket.socket]:
    """Worker ``index``'s listeners: the shared port, its own metrics port, and the
    supervisor's Unix socket (inherited: one socket file cannot be bound twice)."""
    sockets = [_listener(settings.host, settings.port, settings.backlog, True)]
    if settings.worker_metrics_port is not None:
        own = settings.worker_metrics_port + index
        sockets.append(_listener(settings.host, own, 128, False))
    unix_fd = os.environ.get(WORKER_UNIX_FD_ENV)
    if unix_fd is not None:
        sockets.append(socket.socket(fileno=int(unix_fd)))
    return sockets


class InstanceCollector(Collector):
    """``gateway_instance_info{instance_id, worker} 1``: which process answered a scrape."""

    def __init__(self, instance_id: str, worker: int | None) -> None:
        self._labels = [instance_id, "" if worker is None else str(worker)]

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "gateway_instance_info",
            "This gateway process: its instance id (presence key) and worker number",
            labels=["instance_id", "worker"],
        )
        info.add_metric(self._labels, 1)
        yield info


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor goes away (Linux), so killing
    the supervisor never leaves workers serving an orphaned port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Starts and restarts the workers; holds the Unix socket they share (``unix``) and
    removes its file once they have all stopped."""

    def __init__(self, settings: Settings, unix: UnixListener | None = None) -> None:
        self._settings = settings
        self._unix = unix
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._restart_at: dict[int, float] = {}
        self._stopping = False
        #: a worker's exit status of ``FINAL_EXIT_CODES``: the supervisor stopped the others
        #: and exits with it
        self._final_code = 0

    def _spawn(self, index: int) -> None:
        env = {
            **os.environ,
            WORKER_INDEX_ENV: str(index),
            "GATEWAY_INSTANCE_ID": worker_instance_id(self._settings.instance_id, index),
        }
        inherited: tuple[int, ...] = ()
        if self._unix is not None:
            inherited = (self._unix.sock.fileno(),)
            env[WORKER_UNIX_FD_ENV] = str(inherited[0])
        self._workers[index] = subprocess.Popen(
            [sys.executable, "-m", "push_gateway"],
            env=env,
            pass_fds=inherited,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        self._started[index] = time.monotonic()
        log.info("worker started", worker=index, pid=self._workers[index].pid)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_workers()
        log.info("stopping workers", signal=signal.Signals(signum).name)

    def _stop_workers(self) -> None:
        self._stopping = True
        for process in self._workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "supervising gateway workers",
            workers=self._settings.workers,
            port=self._settings.port,
            pid=os.getpid(),
        )
        if self._settings.worker_metrics_port is None:
            # Not refused: benchmarks and tests run workers without their own ports.
            log.warning(
                "GATEWAY_WORKERS > 1 without GATEWAY_WORKER_METRICS_PORT: no worker can be "
                "scraped on its own (a scrape of the shared port reaches any one worker, so "
                "its counters jump between workers); set GATEWAY_WORKER_METRICS_PORT and "
                "scrape each worker on that port + n",
                workers=self._settings.workers,
                port=self._settings.port,
            )
        for index in range(self._settings.workers):
            self._spawn(index)
        while not self._stopping:
            self._check(time.monotonic())
            time.sleep(0.2)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for index, process in self._workers.items():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop in time, killed", worker=index)
                process.kill()
                process.wait()
        if self._unix is not None:
            self._unix.close()
        return self._final_code

    def _check(self, now: float) -> None:
        for index, process in list(self._workers.items()):
            if index in self._restart_at:
                if now >= self._restart_at[index]:
                    del self._restart_at[index]
                    self._spawn(index)
                continue
            code = process.poll()
            if code is None:
                continue
            if code in FINAL_EXIT_CODES:
                log.error(
                    "worker refused to start or gave up on Kafka (its reason above): "
                    "stopping all workers",
                    worker=index,
                    code=code,
                )
                self._final_code = code
                self._stop_workers()
                return
            stable = now - self._started[index] >= STABLE_SECONDS
            delay = 0.0 if stable else self._backoff.get(index, BACKOFF_FIRST_SECONDS)
            self._backoff[index] = min(BACKOFF_MAX_SECONDS, max(delay, BACKOFF_FIRST_SECONDS) * 2)
            self._restart_at[index] = now + delay
            log.warning("worker exited, restarting", worker=index, code=code, delay=delay)
