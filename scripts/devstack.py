"""The whole Slotstream stack as local processes, without Docker.

Used by ``make demo`` (scripts/demo.py) and by the browser end-to-end and integration
tests. Starts, in order: Tansu (Kafka-compatible broker), the booking-api on its memory
backend, the change-publisher reading the booking-api's change feed, two push-gateways,
and nginx as the edge (rendered from ``deploy/edge/*.template``). Every process runs in
its own session, logs into ``<state dir>/logs/``, and is stopped by its PID in reverse
order by :meth:`DevStack.stop`.

Once started, a supervisor thread restarts a crashed process like Compose's
``restart: unless-stopped``: with exponential back-off, logging each restart, the rest of
the stack running on. Only the processes that lose nothing by a restart are restarted: the
change-publisher (it resumes from its checkpoint; event ids make re-sends harmless), the
push-gateways and the edge.
Tansu and the memory booking-api hold the demo's only copy of the topics and the bookings;
a fresh process would be empty and every other part would disagree with it (offsets ahead
of the log, a change feed starting again at 1), so their death is logged as fatal for the
data and they stay down until the stack is started again.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import SecretStr

from slotstream_contracts.auth import JwtSettings, Role, mint_token
from slotstream_contracts.topics import (
    DEADLETTER_TOPIC,
    NOTIFICATIONS_TOPIC,
    PRESENCE_TOPIC,
    SCHEDULE_TOPIC,
)
from slotstream_testkit.kafka import create_topics, tansu_binary, wait_for_metadata
from slotstream_testkit.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
WEB_ROOT = REPO / "web"
EDGE_DIR = REPO / "deploy" / "edge"
BIN = Path(sys.executable).parent

#: ``iss`` and ``aud`` of the demo's tokens (checked by the API and the gateways)
JWT_ISSUER = "slotstream-demo"
JWT_AUDIENCE = "slotstream"
#: demo tokens live an hour; the stack re-mints demo-users.json well before that
DEMO_TOKEN_TTL_SECONDS = 3600
DEMO_TOKEN_REFRESH_SECONDS = 900

SCHEDULE_PARTITIONS = 4
NOTIFICATION_PARTITIONS = 4


class StackError(RuntimeError):
    """A part of the stack failed to start (the message says which, and where its log is)."""


@dataclass(frozen=True)
class Ports:
    kafka: int
    booking_api: int
    publisher: int
    gateway_1: int
    gateway_2: int
    edge: int

    @classmethod
    def demo(cls) -> Ports:
        """The fixed ports of ``make demo`` (docs/architecture.md)."""
        return cls(19092, 8000, 8001, 8101, 8102, 8080)

    @classmethod
    def free(cls) -> Ports:
        """Free ports, for tests that must not collide with a running demo."""
        picked: list[int] = []
        while len(picked) < 6:
            port = free_port()
            if port not in picked:
                picked.append(port)
        return cls(*picked)


@dataclass(frozen=True)
class DemoUser:
    id: str
    name: str
    role: str
    token: str

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role, "token": self.token}


def render_template(text: str, variables: Mapping[str, str]) -> str:
    """Substitute ``${NAME}`` for the given names only, like the nginx image's envsubst
    (which passes envsubst the list of defined variables); nginx's own ``$vars`` stay."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        return variables[name] if name in variables else match.group(0)

    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)\}", replace, text)


#: the first nginx with the ``http2 on;`` directive (and a warning for ``listen … http2``)
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)


def nginx_version(nginx: Path | str) -> tuple[int, int, int]:
    """``nginx -v`` (which writes to stderr) as numbers: ``nginx/1.22.1`` → (1, 22, 1)."""
    said = subprocess.run([str(nginx), "-v"], capture_output=True, text=True, check=True)
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", said.stderr + said.stdout)
    if found is None:
        raise StackError(f"cannot tell the version of {nginx}: {said.stderr.strip()}")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def http2_for(config: str, version: tuple[int, int, int]) -> str:
    """The edge's TLS server for ``version``: its template has ``listen … ssl;`` and
    ``http2 on;`` (the image's nginx); an nginx before 1.25.1 knows no ``http2`` directive
    and is asked for HTTP/2 on the ``listen`` line instead."""
    if version >= HTTP2_DIRECTIVE_SINCE:
        return config
    return re.sub(r"listen (\S+) ssl;\n\s*http2 on;", r"listen \1 ssl http2;", config)


def nginx_binary() -> Path | None:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    return Path(found) if found else None


def _die_with_parent() -> None:
    """Child-side: get SIGTERM if the starting process dies (Linux), so nothing is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Process:
    name: str
    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    health_url: str | None = None
    stop_signal: int = signal.SIGTERM
    restart: bool = False
    """Restart it when it crashes (a stateless or state-persisting process)."""
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    wanted: bool = field(default=True, repr=False)
    """False once stopped on purpose: the supervisor leaves it down until started again."""
    started_at: float = field(default=0.0, repr=False)
    backoff: float = field(default=0.0, repr=False)
    restart_due: float | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        self.wanted = True
        self.started_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                list(self.argv),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                cwd=REPO,
            )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_healthy(self, timeout: float, abandon: threading.Event | None = None) -> None:
        """Wait for the health URL to answer 200; return early once ``abandon`` is set."""
        deadline = time.monotonic() + timeout
        while abandon is None or not abandon.is_set():
            if not self.running:
                raise StackError(f"{self.name} exited during start-up; see {self.log_path}")
            if self.health_url is None:
                return
            try:
                if httpx.get(self.health_url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} not healthy at {self.health_url} after {timeout}s; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 8.0) -> None:
        self.wanted = False
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.kill_leftovers()
        self.popen = None

    def kill(self) -> None:
        """Crash it (SIGKILL): no goodbye frames, sockets reset by the kernel."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)

    def kill_leftovers(self) -> None:
        """SIGKILL what the dead process left in its session (nginx workers outlive a killed
        master and would keep its port), so that the restarted one can bind."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


RESTART_BACKOFF_FIRST = 0.5
RESTART_BACKOFF_MAX = 30.0
RESTART_BACKOFF_RESET_AFTER = 10.0
"""Seconds a restarted process must stay up before its back-off starts again from the first
delay (Docker resets its restart delay the same way)."""
SUPERVISE_INTERVAL = 0.2


class DevStack:
    """Start and stop the whole stack. ``state_dir`` holds logs, nginx files, demo users."""

    def __init__(
        self,
        state_dir: Path,
        ports: Ports,
        *,
        log_level: str = "INFO",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_port: int | None = None,
        progress: Callable[[str], None] | None = None,
        edge_upstream: Literal["unix", "tcp"] = "unix",
    ) -> None:
        self.state_dir = state_dir
        #: how the edge reaches the gateways: a Unix socket each, as on one host (half the
        #: gateways' CPU per frame: docs/scaling.md), or their TCP ports, as across hosts
        self.edge_upstream = edge_upstream
        self._sockets_dir: Path | None = None
        self.ports = ports
        self.internal_token = secrets.token_hex(24)
        #: an Ed25519 key pair per run (written by start()): the API and the gateways get the
        #: public key only; minting (the seed, demo-users.json, tests) uses the private key
        self.public_key_file = state_dir / "keys" / "jwt-public.pem"
        self.private_key_file = state_dir / "keys" / "jwt-private.pem"
        self._refresh_stop: threading.Event | None = None
        self.log_level = log_level
        self.tls = (tls_cert, tls_key, tls_port or 8443) if tls_cert and tls_key else None
        self.users: list[DemoUser] = []
        self.instructors: list[dict[str, Any]] = []
        self.processes: dict[str, Process] = {}
        self.logs = state_dir / "logs"
        self._progress = progress or (lambda _step: None)
        # Guards ``processes`` and each process's start/stop between the supervisor thread
        # and callers (tests restarting a gateway while the supervisor looks at it).
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.edge}"

    @property
    def booking_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.booking_api}"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def publisher_checkpoint(self) -> Path:
        """The publisher's checkpoint file: it outlives the process, not the stack."""
        return self.state_dir / "publisher-checkpoint.json"

    def gateway_url(self, number: int) -> str:
        return f"http://127.0.0.1:{self.gateway_port(number)}"

    def gateway_port(self, number: int) -> int:
        return {1: self.ports.gateway_1, 2: self.ports.gateway_2}[number]

    def gateway_socket(self, number: int) -> Path | None:
        """Gateway ``number``'s Unix socket for the edge (None: the edge uses TCP)."""
        if self.edge_upstream != "unix":
            return None
        if self._sockets_dir is None:
            # private (0700) and short: a socket path holds at most 107 bytes, and the
            # state dir may be deep in a checkout
            self._sockets_dir = Path(tempfile.mkdtemp(prefix="slotstream-"))
        return self._sockets_dir / f"gateway-{number}.sock"

    def gateway_upstream(self, number: int) -> str:
        """The edge's address for gateway ``number`` (nginx ``server``)."""
        path = self.gateway_socket(number)
        return f"127.0.0.1:{self.gateway_port(number)}" if path is None else f"unix:{path}"

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, seed: bool = True) -> DevStack:
        """Start everything (or raise :class:`StackError`, having stopped what started)."""
        nginx = nginx_binary()
        if nginx is None:
            raise StackError(
                "nginx is not installed: `sudo apt-get install nginx` (make demo installs it "
                "when run as root). It is only the edge proxy; nothing else needs root."
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._write_key_pair()
        try:
            self._start_kafka()
            self._start_booking_api()
            self._start_publisher()
            for number in (1, 2):
                self.start_gateway(number)
            self.start_edge(nginx)
            if seed:
                self.seed()
        except BaseException:
            self.stop()
            raise
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=self._supervise, name="devstack-supervisor", daemon=True
        )
        self._supervisor.start()
        return self

    def stop(self) -> None:
        """Stop the supervisor, then every process this stack started, newest first."""
        self._stopping.set()
        if self._refresh_stop is not None:
            self._refresh_stop.set()  # ends the demo token refresh thread
            self._refresh_stop = None
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        with self._lock:
            for name in reversed(list(self.processes)):
                started = time.monotonic()
                self.processes[name].stop()
                self._progress(f"stopped {name} in {time.monotonic() - started:.1f}s")
            self.processes.clear()
        if self._sockets_dir is not None:
            shutil.rmtree(self._sockets_dir, ignore_errors=True)
            self._sockets_dir = None

    # ------------------------------------------------------------------ supervision

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            with self._lock:
                for process in list(self.processes.values()):
                    if self._stopping.is_set():
                        return
                    self._look_after(process)

    def _look_after(self, process: Process) -> None:
        """One supervisor pass over one process: notice a crash, restart when due."""
        if process.running or not process.wanted or process.popen is None:
            return
        now = time.monotonic()
        if process.restart_due is None:
            code = process.popen.poll()
            if not process.restart:
                process.wanted = False
                self._progress(
                    f"{process.name} exited (code {code}) and is NOT restarted: it held the "
                    f"demo's data in memory and a new one would start empty; the rest keeps "
                    f"running without it. Restart the whole stack. See {process.log_path}"
                )
                return
            if now - process.started_at >= RESTART_BACKOFF_RESET_AFTER:
                process.backoff = 0.0
            process.backoff = min(
                RESTART_BACKOFF_MAX, max(RESTART_BACKOFF_FIRST, process.backoff * 2)
            )
            process.restart_due = now + process.backoff
            self._progress(
                f"{process.name} exited unexpectedly (code {code}); restarting in "
                f"{process.backoff:.1f}s; see {process.log_path}"
            )
            return
        if now < process.restart_due:
            return
        process.restart_due = None
        process.restarts += 1
        process.kill_leftovers()
        process.start()
        try:
            process.wait_healthy(30.0, abandon=self._stopping)
        except StackError as exc:
            self._progress(f"restart #{process.restarts} of {process.name} failed: {exc}")
            return
        self._progress(f"restarted {process.name} (restart #{process.restarts}, pid {process.pid})")

    def kill(self, name: str) -> int:
        """Crash a process (SIGKILL) as a failing node would; returns the PID it had. The
        supervisor restarts it if its policy says so (see the module docstring)."""
        with self._lock:
            process = self.processes[name]
            pid = process.pid
            if pid is None:
                raise StackError(f"{name} is not running")
            process.kill()
            return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60.0) -> Process:
        """Wait until the supervisor has restarted ``name`` (a new PID) and it is healthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                process = self.processes[name]
                if (
                    process.running
                    and process.pid != old_pid
                    and process.restart_due is None
                    and self._healthy(process)
                ):
                    return process
            time.sleep(0.1)
        raise StackError(f"{name} was not restarted within {timeout}s; see {self.logs}/")

    @staticmethod
    def _healthy(process: Process) -> bool:
        if process.health_url is None:
            return True
        try:
            return httpx.get(process.health_url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _spawn(self, process: Process, timeout: float = 30.0) -> Process:
        self._progress(f"starting {process.name}")
        with self._lock:
            self.processes[process.name] = process
            process.start()
            process.wait_healthy(timeout)
        return process

    def _base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start_kafka(self) -> None:
        # Started here rather than with testkit's TansuBroker so that it, like every other
        # process, dies with the starting process (PR_SET_PDEATHSIG) even after a SIGKILL.
        tansu = Process(
            "tansu",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.ports.kafka}",
                "--advertised-listener-url",
                f"tcp://{self.bootstrap_servers}",
            ],
            {**os.environ, "RUST_LOG": os.environ.get("TANSU_RUST_LOG", "warn")},
            self.logs / "tansu.log",
        )
        self._spawn(tansu)
        try:
            wait_for_port("127.0.0.1", self.ports.kafka, 15)
            # wait_for_metadata and create_topics run their own asyncio loops: do that in a
            # worker thread, so the stack can start from code that already runs a loop.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pool.submit(self._create_topics).result()
        except Exception as exc:
            raise StackError(f"Tansu did not come up ({exc}); see {tansu.log_path}") from exc

    def _create_topics(self) -> None:
        wait_for_metadata(self.bootstrap_servers, 15)
        asyncio.run(
            create_topics(
                self.bootstrap_servers,
                {
                    SCHEDULE_TOPIC: SCHEDULE_PARTITIONS,
                    NOTIFICATIONS_TOPIC: NOTIFICATION_PARTITIONS,
                    DEADLETTER_TOPIC: 1,
                    PRESENCE_TOPIC: 1,
                },
                configs={PRESENCE_TOPIC: {"cleanup.policy": "compact"}},
            )
        )

    def _start_booking_api(self) -> None:
        # Its change log starts empty: a publisher's resume token of an earlier run would
        # point into a different history.
        self.publisher_checkpoint.unlink(missing_ok=True)
        env = self._base_env() | {
            "BOOKING_API_HOST": "127.0.0.1",
            "BOOKING_API_PORT": str(self.ports.booking_api),
            "BOOKING_API_STORAGE": "memory",
            **self._jwt_env("BOOKING_API_JWT__"),
            "BOOKING_API_INTERNAL_TOKEN": self.internal_token,
            "BOOKING_API_LOG__LEVEL": self.log_level,
        }
        self._spawn(
            Process(
                "booking-api",
                [str(BIN / "slotstream-booking-api")],
                env,
                self.logs / "booking-api.log",
                health_url=f"{self.booking_api_url}/healthz",
            )
        )

    def _start_publisher(self) -> None:
        env = self._base_env() | {
            "PUBLISHER_HTTP_HOST": "127.0.0.1",
            "PUBLISHER_HTTP_PORT": str(self.ports.publisher),
            "PUBLISHER_SOURCE": "feed",
            "PUBLISHER_FEED_URL": self.booking_api_url,
            "PUBLISHER_FEED_TOKEN": self.internal_token,
            # The feed long-poll answers at once when a change arrives; a short idle wait
            # only bounds how long the booking-api's shutdown waits for the open poll.
            "PUBLISHER_FEED_WAIT": "2",
            "PUBLISHER_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            # Tansu rejects idempotent producers; event ids make re-sends harmless.
            "PUBLISHER_ENABLE_IDEMPOTENCE": "false",
            # A restarted publisher resumes after its last acknowledged change.
            "PUBLISHER_CHECKPOINT_FILE": str(self.publisher_checkpoint),
            "PUBLISHER_LOG__LEVEL": self.log_level,
        }
        self._spawn(
            Process(
                "change-publisher",
                [str(BIN / "slotstream-change-publisher")],
                env,
                self.logs / "change-publisher.log",
                health_url=f"http://127.0.0.1:{self.ports.publisher}/healthz",
                restart=True,
            )
        )

    def start_gateway(self, number: int) -> Process:
        """Start (or restart) push-gateway 1 or 2."""
        port = self.gateway_port(number)
        env = self._base_env() | {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_INSTANCE_ID": f"gateway-{number}",
            "GATEWAY_BOOKING_API_URL": self.booking_api_url,
            "GATEWAY_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            **self._jwt_env("GATEWAY_JWT__"),
            "GATEWAY_INTERNAL_TOKEN": self.internal_token,
            "GATEWAY_LOG__LEVEL": self.log_level,
            # A quick reconnect hint: the demo shows recovery within about a second.
            "GATEWAY_RETRY_MS": "1000",
        }
        path = self.gateway_socket(number)
        if path is not None:
            env["GATEWAY_UNIX_SOCKET"] = str(path)
        name = f"push-gateway-{number}"
        with self._lock:
            old = self.processes.pop(name, None)
            if old is not None:
                old.stop()
            return self._spawn(
                Process(
                    name,
                    [str(BIN / "slotstream-push-gateway")],
                    env,
                    self.logs / f"{name}.log",
                    health_url=f"{self.gateway_url(number)}/readyz",
                    restart=True,
                )
            )

    def kill_gateway(self, number: int) -> int:
        """Crash push-gateway 1 or 2 (SIGKILL), as a failing node would; the supervisor
        restarts it. Returns the PID it had (for :meth:`wait_restarted`)."""
        return self.kill(f"push-gateway-{number}")

    def stop_gateway(self, number: int) -> None:
        """Stop push-gateway 1 or 2 on purpose: it stays down until :meth:`start_gateway`."""
        with self._lock:
            self.processes[f"push-gateway-{number}"].stop()

    # ------------------------------------------------------------------ edge

    def edge_variables(self) -> dict[str, str]:
        edge = self.state_dir / "edge"
        variables = {
            "EDGE_LISTEN_PORT": f"127.0.0.1:{self.ports.edge}",
            "BOOKING_API_UPSTREAM": f"127.0.0.1:{self.ports.booking_api}",
            "GATEWAY_UPSTREAM_1": self.gateway_upstream(1),
            "GATEWAY_UPSTREAM_2": self.gateway_upstream(2),
            "WEB_ROOT": str(WEB_ROOT),
            "DEMO_DATA_DIR": str(self.state_dir / "demo-data"),
            "EDGE_CONF_DIR": str(edge / "conf.d"),
        } | {name: os.environ.get(name, default) for name, default in EDGE_LIMITS.items()}
        if self.tls is not None:
            cert, key, port = self.tls
            variables |= {
                "EDGE_TLS_PORT": f"127.0.0.1:{port}",
                "TLS_CERT_FILE": str(cert),
                "TLS_KEY_FILE": str(key),
            }
        return variables

    def write_edge_config(self, version: tuple[int, int, int]) -> Path:
        """Render deploy/edge templates for nginx ``version`` plus a main nginx.conf that
        keeps every path (pid, logs, temp files) inside the state dir, so nginx runs
        without root."""
        edge = self.state_dir / "edge"
        conf_d = edge / "conf.d"
        conf_d.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "tmp"):
            (edge / sub).mkdir(exist_ok=True)
        (self.state_dir / "demo-data").mkdir(exist_ok=True)
        variables = self.edge_variables()
        templates = sorted(EDGE_DIR.glob("*.template"))
        if self.tls is not None:
            templates.append(EDGE_DIR / "tls" / "slotstream.tls.conf.template")
        for template in templates:
            rendered = http2_for(render_template(template.read_text(), variables), version)
            (conf_d / template.name.removesuffix(".template")).write_text(rendered)
        main = edge / "nginx.conf"
        main.write_text(_main_conf(edge))
        return main

    def start_edge(self, nginx: Path) -> None:
        """Render the edge config, check it with ``nginx -t``, and start nginx."""
        main = self.write_edge_config(nginx_version(nginx))
        edge = main.parent
        argv = [str(nginx), "-p", f"{edge}/", "-c", str(main), "-e", str(edge / "logs/error.log")]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise StackError(f"nginx -t rejected {main}:\n{check.stderr}")
        self._spawn(
            Process(
                "edge",
                argv,
                self._base_env(),
                self.logs / "edge.log",
                health_url=f"{self.base_url}/edge-healthz",
                stop_signal=signal.SIGQUIT,  # graceful: finish in-flight requests
                restart=True,
            ),
            timeout=10,
        )

    # ------------------------------------------------------------------ data

    def seed(self) -> list[DemoUser]:
        """Create demo instructors and slots through the API; write demo-users.json."""
        self._progress("seeding demo instructors, slots and users")
        result = subprocess.run(
            [
                str(BIN / "slotstream-seed"),
                "--api",
                self.booking_api_url,
                "--instructors",
                "3",
                "--days",
                "14",
            ],
            env=self._base_env() | self._jwt_env("BOOKING_API_JWT__", minting=True),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"slotstream-seed failed:\n{result.stderr[-2000:]}")
        try:
            payload = json.loads(result.stdout)
            self.users = [
                DemoUser(id=u["id"], name=u["name"], role=u["role"], token=u["token"])
                for u in payload["users"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise StackError(f"slotstream-seed printed something unexpected: {exc}") from exc
        self.instructors = list(payload.get("instructors", []))
        self.write_demo_users()
        if self._refresh_stop is None:
            self._refresh_stop = threading.Event()
            threading.Thread(
                target=self._refresh_demo_users,
                args=(self._refresh_stop,),
                name="demo-token-refresh",
                daemon=True,
            ).start()
        return self.users

    # ------------------------------------------------------------------ tokens

    def _write_key_pair(self) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        self.private_key_file.parent.mkdir(mode=0o700, exist_ok=True)
        self.private_key_file.touch(mode=0o600)
        self.private_key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.public_key_file.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _jwt_env(self, prefix: str, *, minting: bool = False) -> dict[str, str]:
        """``<prefix>*`` token settings: the public key to verify, or the private one to mint."""
        key = (
            {f"{prefix}PRIVATE_KEY_FILE": str(self.private_key_file)}
            if minting
            else {f"{prefix}PUBLIC_KEY_FILE": str(self.public_key_file)}
        )
        return {
            f"{prefix}ALGORITHM": "EdDSA",
            **key,
            f"{prefix}ISSUER": JWT_ISSUER,
            f"{prefix}AUDIENCE": JWT_AUDIENCE,
        }

    @property
    def jwt(self) -> JwtSettings:
        """The settings that mint this stack's tokens (private key; tests use it too)."""
        return JwtSettings.model_validate(
            {
                "algorithm": "EdDSA",
                "private_key": SecretStr(self.private_key_file.read_text()),
                "issuer": JWT_ISSUER,
                "audience": JWT_AUDIENCE,
            }
        )

    def mint(
        self, user_id: str, role: str, name: str | None = None, ttl_seconds: float = 3600
    ) -> str:
        """A token of this stack for any user (tests)."""
        return mint_token(self.jwt, user_id, Role(role), name, timedelta(seconds=ttl_seconds))

    def write_demo_users(self) -> None:
        """(Re)mint the demo tokens and write ``demo-users.json``, served by the edge to
        loopback clients only: students and instructors, never the admin, each token
        valid ``DEMO_TOKEN_TTL_SECONDS``. The page re-reads the file when its token nears
        expiry. The write is atomic (a rename), so nginx never serves half a file."""
        settings = self.jwt
        self.users = [
            DemoUser(
                u.id,
                u.name,
                u.role,
                mint_token(
                    settings,
                    u.id,
                    Role(u.role),
                    u.name,
                    timedelta(seconds=DEMO_TOKEN_TTL_SECONDS),
                ),
            )
            for u in self.users
        ]
        served = [u.as_json() for u in self.users if u.role != Role.ADMIN.value]
        target = self.state_dir / "demo-data" / "demo-users.json"
        partial = target.with_suffix(".json.tmp")
        partial.write_text(json.dumps({"users": served}, indent=2))
        partial.replace(target)

    def _refresh_demo_users(self, stopping: threading.Event) -> None:
        while not stopping.wait(DEMO_TOKEN_REFRESH_SECONDS):
            try:
                self.write_demo_users()
            except (OSError, ValueError) as exc:
                self._progress(f"could not refresh demo tokens: {exc}")

    def user(self, role: str, index: int = 0) -> DemoUser:
        return [u for u in self.users if u.role == role][index]


_SERVICE_PREFIXES = ("BOOKING_API_", "PUBLISHER_", "GATEWAY_")

# The edge's per-address limits (deploy/edge/README.md), the same defaults as the image's;
# each can be overridden from the environment (e.g. `EDGE_STREAMS_PER_IP=10 make demo`).
EDGE_LIMITS = {
    "EDGE_STREAMS_PER_IP": "100",
    "EDGE_REQUESTS_PER_SECOND": "50",
    "EDGE_REQUEST_BURST": "200",
    "EDGE_WRITES_PER_SECOND": "5",
    "EDGE_WRITE_BURST": "50",
    "EDGE_RETRY_AFTER_SECONDS": "2",
    "EDGE_DEMO_USERS_ALLOW": "127.0.0.1",
}


def _main_conf(edge: Path) -> str:
    user = ""
    if os.geteuid() == 0:
        # As root, nginx would drop its workers to `nobody`, who cannot read a checkout in
        # a private home directory; keep them as the user who started the demo.
        import pwd

        entry = pwd.getpwuid(os.geteuid())
        user = f"user {entry.pw_name};\n"
    tmp = edge / "tmp"
    # Each proxied stream holds two connections and every connection a file descriptor:
    # nginx raises its own soft open-file limit up to the hard one (no root needed for
    # that), and takes as many connections as that allows.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    connections = max(256, min(16384, files - 64))
    return f"""# Generated by scripts/devstack.py: nginx without root, every path under {edge}.
{user}worker_processes 1;
daemon off;
pid {edge}/nginx.pid;
error_log {edge}/logs/error.log warn;

worker_rlimit_nofile {files};

events {{
    worker_connections {connections};
}}

http {{
    types {{
        text/html html;
        text/css css;
        application/javascript js mjs;
        application/json json;
        image/svg+xml svg;
        image/png png;
        image/x-icon ico;
    }}
    default_type application/octet-stream;
    # Each server logs with the query-free `slotstream` format (deploy/edge).
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_timeout 65s;

    include {edge}/conf.d/*.conf;
}}
"""


def tansu_hint(stack: DevStack) -> str:
    """How to look at the demo's events: `make events` (every partition, keys and headers)
    and the Tansu CLI."""
    try:
        tansu = str(tansu_binary())
    except FileNotFoundError:
        tansu = "tansu"
    broker = f"tcp://{stack.bootstrap_servers}"
    return (
        "  make events                                   # schedule topic, then follow\n"
        '  make events ARGS="notifications --from end"   # bookings and notifications\n'
        f"  {tansu} topic list --broker {broker}\n"
        f"  (schedule topic: {SCHEDULE_PARTITIONS} partitions by instructor id; "
        f"notifications: {NOTIFICATION_PARTITIONS} by user id)"
    )
