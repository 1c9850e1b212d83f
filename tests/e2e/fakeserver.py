"""A small stand-in for the edge (page + booking API + SSE) with a controllable stream.

Used to test the browser client's own behaviour where the real stack cannot be steered
precisely: a server that refuses the stream (the client must back off and resume with
``lastEventId``), stale deltas (the page must never move a slot backwards), and signed-in
streams opened with single-use tickets (never a token in the URL), requests a stuck
proxy never answers (``stall``: the page must give up on them in bounded time), and answers
lost on the way back (``upsets``: the page must ask again with the same Idempotency-Key,
which the fake answers as the booking-api does).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path

import jwt
import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slotstream_contracts.entities import (
    NotificationData,
    NotificationKind,
    ScheduleSnapshot,
    SlotData,
    SlotStatus,
)

WEB_ROOT = Path(__file__).resolve().parents[2] / "web"
INSTRUCTOR = "fake-instructor"
STUDENT = "fake-student"


def student_token(exp: int = 4_000_000_000) -> str:
    """The fake checks tokens by equality only; the page decodes the claims (``exp``)."""
    return jwt.encode(
        {"sub": STUDENT, "role": "student", "name": "Fake Student", "exp": exp},
        "fake-edge-signing-key-9c2e7a1f4b8d0e6c3a5f",
        algorithm="HS256",
    )


STUDENT_TOKEN = student_token()
#: the instructor's demo token (manages the fake's schedule: add slot)
INSTRUCTOR_TOKEN = jwt.encode(
    {"sub": INSTRUCTOR, "role": "instructor", "name": "Fake Instructor", "exp": 4_000_000_000},
    "fake-edge-signing-key-9c2e7a1f4b8d0e6c3a5f",
    algorithm="HS256",
)


def cancelled_notification() -> NotificationData:
    """The student's booking of slot ``a`` cancelled, as the booking-api lists it."""
    return NotificationData(
        id="6930c1e2000a100000000000",
        user_id=STUDENT,
        kind=NotificationKind.BOOKING_CANCELLED,
        message="Your booking was cancelled.",
        booking_id="fake-booking",
        slot_id="a",
        version=1,
        created_at=datetime.now(UTC),
    )


def make_slot(slot_id: str, start: datetime, version: int = 1, booked: bool = False) -> SlotData:
    return SlotData(
        id=slot_id,
        instructor_id=INSTRUCTOR,
        start=start,
        end=start + timedelta(hours=1),
        status=SlotStatus.BOOKED if booked else SlotStatus.AVAILABLE,
        booking_id="fake-booking" if booked else None,
        version=version,
        updated_at=datetime.now(UTC),
    )


@dataclass
class FakeEdge:
    """State and knobs of the fake; the test changes them while the page runs."""

    slots: dict[str, SlotData] = field(default_factory=dict)
    refuse_streams: int = 0  # answer this many next stream requests with 503
    #: the instructor is gone (deleted, a stale link): a stream with the schedule's channel
    #: and the schedule answer 404 problem+json, as the gateway and the booking-api do
    unknown_instructor: bool = False
    stream_requests: list[dict[str, str]] = field(default_factory=list)
    #: the channels of each stream request, as they came (the public stream's is the schedule)
    stream_channels: list[list[str]] = field(default_factory=list)
    queues: list[asyncio.Queue[bytes | None]] = field(default_factory=list)
    next_id: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    #: tickets issued by POST /api/stream-tickets and not yet used
    tickets: set[str] = field(default_factory=set)
    ticket_requests: list[str | None] = field(default_factory=list)  # Authorization headers
    #: what /demo-users.json hands out as the student's token, in turn (the last one stays)
    demo_tokens: list[str] = field(default_factory=lambda: [STUDENT_TOKEN])
    demo_users_reads: int = 0
    #: what GET /api/users/me/notifications lists: each caller's own (``userId``), the
    #: instructor's token the instructor's, any other the student's
    notifications: list[NotificationData] = field(default_factory=list)
    #: the ids POST /api/users/me/notifications/{id}/read was asked for, as they came
    marked_read: list[str] = field(default_factory=list)
    #: while not None, a read POST (recorded in ``marked_read`` at once) is carried out and
    #: answered only once it is set: the marks still on their way
    hold_read: threading.Event | None = None
    #: while not None, POST /api/bookings books at once but is answered only once it is set
    hold_book: threading.Event | None = None
    #: answer this many next reads of /api/users/me/* with 503 (the API down a moment)
    fail_mine: int = 0
    #: set when GET …/schedule has read the state; while ``hold_schedule`` is not None, the
    #: answer (that state) is sent only once it is set: an answer the stream overtakes
    schedule_read: threading.Event = field(default_factory=threading.Event)
    hold_schedule: threading.Event | None = None
    #: active bookings by id, as GET /api/users/me/bookings lists them (the fake's one student)
    bookings: dict[str, dict[str, str]] = field(default_factory=dict)
    #: requests ("POST /api/bookings") a stuck proxy forwards but never answers: the fake
    #: acts on them, then holds the connection open without a byte of answer
    stall: set[str] = field(default_factory=set)
    stalled: list[str] = field(default_factory=list)  # stalled requests, as they came
    abandoned: list[str] = field(default_factory=list)  # those the browser gave up on
    #: what befalls the next tries of a request ("POST /api/bookings"), one entry a try,
    #: before it is answered: "drop" (carried out, then the connection is closed without a
    #: byte of answer), "slow-drop" (the connection is closed at once, and the API takes
    #: another second: a retry meanwhile finds its Idempotency-Key in progress),
    #: "rate-limited" (the edge's 429 with Retry-After: 2; the API never sees it),
    #: "starting" (the booking-api's 503 while it starts: nothing done, no key kept),
    #: "api-timeout" (the booking-api's 503 ``request-timeout``: the request ran past its
    #: time and was undone, its key's record dropped, so a retry runs it again),
    #: "edge-timeout" (carried out, its answer kept by key, but the edge had stopped
    #: waiting for it: the edge's own 503 with Retry-After: 2), "quota-exceeded" (the
    #: booking-api's 409 for a student who holds the most active bookings allowed)
    upsets: dict[str, list[str]] = field(default_factory=dict)
    #: every POST with an Idempotency-Key, as it came: (request, key)
    keyed: list[tuple[str, str]] = field(default_factory=list)
    #: the requests the API carried out (a replay or an in-progress 409 is not one)
    carried_out: list[str] = field(default_factory=list)
    #: answers kept by (Authorization, Idempotency-Key) as the booking-api keeps them (status
    #: < 500 only); None while the first request with the key is still running
    replies: dict[tuple[str, str], list[Message] | None] = field(default_factory=dict)
    #: what the fake sent back, as "<status>" or "<status> replayed", per request
    answered: list[tuple[str, str]] = field(default_factory=list)
    _released: asyncio.Event | None = None

    def snapshot(self) -> ScheduleSnapshot:
        """The slots starting in the window (a day back, four weeks ahead), as the
        booking-api's schedule read and the gateway's snapshot hold them."""
        now = datetime.now(UTC)
        start, end = now - timedelta(days=1), now + timedelta(days=28)
        return ScheduleSnapshot(
            instructor_id=INSTRUCTOR,
            range_start=start,
            range_end=end,
            slots=tuple(s for s in self.slots.values() if start <= s.start < end),
            version=max((s.version for s in self.slots.values()), default=0),
            generated_at=now,
        )

    def frame(self, event: str, payload: object) -> bytes:
        self.next_id += 1
        return b"id: s0:%d\nevent: %s\ndata: %s\n\n" % (
            self.next_id,
            event.encode(),
            orjson.dumps(payload),
        )

    def send_slot(self, slot: SlotData) -> None:
        """Push a slot delta (any version, even a stale one) to every open stream."""
        self._send_event("slot", f"fake-{self.next_id}", "slot.updated", slot)

    def send_notification(self, note: NotificationData) -> None:
        """Push a ``notification`` (the user's private channel) to every open stream."""
        self._send_event("notification", f"{note.id}-v{note.version}", "notification.created", note)

    def _send_event(
        self, event: str, event_id: str, event_type: str, data: SlotData | NotificationData
    ) -> None:
        """A CloudEvent as the gateway frames it, to every open stream."""
        payload = {
            "specversion": "1.0",
            "id": event_id,
            "type": event_type,
            "data": data.model_dump(mode="json", by_alias=True),
        }
        self._broadcast(self.frame(event, payload))

    def send_resync(self, channel: str, reason: str) -> None:
        """The gateway's ``resync`` frame for ``channel`` to every open stream."""
        self._broadcast(self.frame("resync", {"channel": channel, "reason": reason}))

    def send_bye(self, reason: str) -> None:
        """The gateway's ``bye`` (no ``id:``) to every open stream; end them after it."""
        self._broadcast(b'event: bye\ndata: {"reason":"%s"}\n\n' % reason.encode())
        self._broadcast(None)

    def send_heartbeat(self) -> None:
        """The gateway's heartbeat (a named event without ``id:``) to every open stream."""
        self._broadcast(b"event: heartbeat\ndata: {}\n\n")

    def drop_streams(self) -> None:
        """End every open stream, as a gateway that goes away would; answer stalled requests
        (504) so that the server can stop."""
        self._broadcast(None)
        if self.loop is not None and self._released is not None:
            self.loop.call_soon_threadsafe(self._released.set)

    def _broadcast(self, frame: bytes | None) -> None:
        # Called from the test's thread: hand the frame to the server's event loop.
        if self.loop is None:
            return
        for queue in list(self.queues):
            self.loop.call_soon_threadsafe(queue.put_nowait, frame)

    def app(self) -> ASGIApp:
        async def instructors(_: Request) -> Response:
            return JSONResponse([{"id": INSTRUCTOR, "name": "Fake Instructor"}])

        async def schedule(_: Request) -> Response:
            if self.unknown_instructor:
                return problem(404, "not-found", f"no instructor {INSTRUCTOR!r}")
            body = orjson.dumps(self.snapshot().model_dump(mode="json", by_alias=True))
            self.schedule_read.set()
            if self.hold_schedule is not None:
                await asyncio.to_thread(self.hold_schedule.wait, 15)
            return Response(body, media_type="application/json")

        async def demo_users(_: Request) -> Response:
            self.demo_users_reads += 1
            token = self.demo_tokens.pop(0) if len(self.demo_tokens) > 1 else self.demo_tokens[0]
            user = {"id": STUDENT, "name": "Fake Student", "role": "student", "token": token}
            instructor = {
                "id": INSTRUCTOR,
                "name": "Fake Instructor",
                "role": "instructor",
                "token": INSTRUCTOR_TOKEN,
            }
            return JSONResponse({"users": [user, instructor]})

        def unavailable() -> Response | None:
            if self.fail_mine <= 0:
                return None
            self.fail_mine -= 1
            return JSONResponse({"detail": "starting"}, status_code=503)

        async def mine(_: Request) -> Response:
            return unavailable() or JSONResponse(list(self.bookings.values()))

        def caller(request: Request) -> str:
            """Whose token the request carries (the fake checks tokens by equality)."""
            instructor = request.headers.get("authorization") == f"Bearer {INSTRUCTOR_TOKEN}"
            return INSTRUCTOR if instructor else STUDENT

        async def notifications(request: Request) -> Response:
            if (refused := unavailable()) is not None:
                return refused
            user_id = caller(request)
            listed = [
                n.model_dump(mode="json", by_alias=True)
                for n in self.notifications
                if n.user_id == user_id
            ]
            return JSONResponse(listed)

        async def mark_read(request: Request) -> Response:
            """Marks one of the caller's notifications read (a new version, as the
            booking-api stores it; repeating is harmless) and answers it; an unknown id, or
            another user's, is a 404."""
            note_id = request.path_params["notification_id"]
            self.marked_read.append(note_id)
            if self.hold_read is not None:
                await asyncio.to_thread(self.hold_read.wait, 15)
            user_id = caller(request)
            for i, note in enumerate(self.notifications):
                if note.id == note_id and note.user_id == user_id:
                    if not note.read:
                        note = note.model_copy(update={"read": True, "version": note.version + 1})
                        self.notifications[i] = note
                    return JSONResponse(note.model_dump(mode="json", by_alias=True))
            return problem(404, "not-found", f"no notification {note_id!r}")

        async def book(request: Request) -> Response:
            """Books the slot in the fake's state but streams no delta (a late stream); a
            booked slot is a 409, as the booking-api answers."""
            slot_id = (await request.json())["slotId"]
            held = self.slots[slot_id]
            if held.status is SlotStatus.BOOKED:
                return problem(409, "conflict", "the slot is already booked")
            self.slots[slot_id] = make_slot(slot_id, held.start, held.version + 1, booked=True)
            booking = {"id": "fake-booking", "slotId": slot_id, "studentId": STUDENT}
            self.bookings[booking["id"]] = {**booking, "status": "active"}
            if self.hold_book is not None:
                await asyncio.to_thread(self.hold_book.wait, 15)
            return JSONResponse(booking, status_code=201)

        async def cancel(request: Request) -> Response:
            """Cancels the booking and frees its slot in the fake's state; streams nothing."""
            booking = self.bookings.pop(request.path_params["booking_id"])
            held = self.slots[booking["slotId"]]
            self.slots[held.id] = make_slot(held.id, held.start, held.version + 1)
            return Response(status_code=204)

        async def add_slot(request: Request) -> Response:
            """Adds slot ``added`` (one hour) to the fake's state; streams nothing. One that
            would overlap a slot of the state is a 409 naming that slot, as the booking-api
            answers it."""
            start = datetime.fromisoformat((await request.json())["start"])
            end = start + timedelta(hours=1)
            for held in self.slots.values():
                if held.status is not SlotStatus.DELETED and held.start < end and start < held.end:
                    span = f"{held.start.isoformat()} to {held.end.isoformat()}"
                    return problem(
                        409,
                        "conflict",
                        f"the slot overlaps slot {held.id} ({span})",
                        members={
                            "slotId": held.id,
                            "slotStart": held.start.isoformat(),
                            "slotEnd": held.end.isoformat(),
                        },
                    )
            self.slots["added"] = make_slot("added", start)
            return JSONResponse(self.slots["added"].model_dump(mode="json", by_alias=True), 201)

        async def stream_ticket(request: Request) -> Response:
            self.ticket_requests.append(request.headers.get("authorization"))
            tokens = {f"Bearer {self.demo_tokens[-1]}", f"Bearer {INSTRUCTOR_TOKEN}"}
            if request.headers.get("authorization") not in tokens:
                return JSONResponse({"detail": "no token"}, status_code=401)
            ticket = secrets.token_urlsafe(32)
            self.tickets.add(ticket)
            return JSONResponse({"ticket": ticket, "expiresIn": 30}, status_code=201)

        async def stream(request: Request) -> Response:
            self.loop = asyncio.get_running_loop()
            self.stream_requests.append(dict(request.query_params))
            schedule_channel = f"instructors/{INSTRUCTOR}/schedule"
            channels = [schedule_channel]
            if request.url.path == "/v1/events":
                channels = request.query_params.getlist("channel")
                ticket = request.query_params.get("ticket", "")
                if ticket not in self.tickets:  # single use, as the real gateway
                    return JSONResponse({"detail": "bad ticket"}, status_code=401)
                self.tickets.discard(ticket)
            self.stream_channels.append(channels)
            if self.unknown_instructor and schedule_channel in channels:
                return gone()
            if self.refuse_streams > 0:
                self.refuse_streams -= 1
                return JSONResponse({"detail": "no gateway"}, status_code=503)
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            self.queues.append(queue)
            # a notifications channel has no snapshot: the stream starts with its next event
            first = b""
            if schedule_channel in channels:
                first = self.frame(
                    "snapshot",
                    {
                        "channel": schedule_channel,
                        "schedule": self.snapshot().model_dump(mode="json", by_alias=True),
                    },
                )

            async def body() -> AsyncIterator[bytes]:
                try:
                    yield b"retry: 200\n\n" + first
                    while (frame := await queue.get()) is not None:
                        yield frame
                finally:
                    self.queues.remove(queue)

            return StreamingResponse(
                body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
            )

        routes = Starlette(
            routes=[
                Route("/api/instructors", instructors),
                Route(f"/api/instructors/{INSTRUCTOR}/schedule", schedule),
                Route(f"/api/instructors/{INSTRUCTOR}/slots", add_slot, methods=["POST"]),
                Route("/demo-users.json", demo_users),
                Route("/api/book-now/schedule-updates", stream),
                Route("/v1/events", stream),
                Route("/api/stream-tickets", stream_ticket, methods=["POST"]),
                Route("/api/bookings", book, methods=["POST"]),
                Route("/api/bookings/{booking_id}", cancel, methods=["DELETE"]),
                Route("/api/users/me/bookings", mine),
                Route("/api/users/me/notifications", notifications),
                Route(
                    "/api/users/me/notifications/{notification_id}/read",
                    mark_read,
                    methods=["POST"],
                ),
                Mount("/", StaticFiles(directory=WEB_ROOT, html=True)),
            ]
        )

        async def edge(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await routes(scope, receive, send)
                return

            async def closing(message: Message) -> None:
                """Every answer ends its connection. A browser sends a request again by
                itself when a connection it reused closes before the answer (it takes that
                for an idle keep-alive the server ended), which would hide a drop."""
                if message["type"] == "http.response.start":
                    closed = [*message["headers"], (b"connection", b"close")]
                    message = {**message, "headers": closed}
                await send(message)

            request = f"{scope['method']} {scope['path']}"
            upsets = self.upsets.get(request)
            upset = upsets.pop(0) if upsets else None
            key = Headers(scope=scope).get("idempotency-key") if scope["method"] == "POST" else None
            if upset is None and key is None and request not in self.stall:
                await routes(scope, receive, closing)
                return
            self.loop = asyncio.get_running_loop()
            if key is not None:
                self.keyed.append((request, key))
            replay = await buffered(receive)  # the API reads it even once the connection is gone
            if upset == "rate-limited":
                await self._send(request, closing, rate_limited(request))
            elif upset in API_REFUSALS:
                await self._send(request, closing, API_REFUSALS[upset]())
            elif upset == "edge-timeout":
                await self._carry_out(request, routes, scope, replay, key)
                await self._send(request, closing, edge_unavailable())
            elif upset in ("drop", "slow-drop"):
                if upset == "slow-drop":
                    close_connection(send)
                await self._carry_out(request, routes, scope, replay, key, upset == "slow-drop")
                close_connection(send)
            elif request in self.stall:
                await self._carry_out(request, routes, scope, replay, key)
                await self._stall(request, receive, closing)
            else:
                answer = await self._carry_out(request, routes, scope, replay, key)
                await self._send(request, closing, answer)

        return edge

    async def _carry_out(
        self,
        request: str,
        app: ASGIApp,
        scope: Scope,
        receive: Receive,
        key: str | None,
        slow: bool = False,
    ) -> list[Message]:
        """The API's answer to ``request``; with an ``Idempotency-Key``, once per key, as the
        booking-api's ``idempotent()``: a retry gets the first answer again (header
        ``Idempotent-Replayed: true``), or 409 ``idempotency-in-progress`` while the first is
        still running; an answer >= 500 is not kept, so a retry runs again."""
        record = (Headers(scope=scope).get("authorization", ""), key or "")
        if key is not None and record in self.replies:
            kept = self.replies[record]
            if kept is None:
                return problem_messages(
                    409,
                    "idempotency-in-progress",
                    "a request with this Idempotency-Key is still in progress; retry shortly",
                )
            start, *rest = kept
            replayed = [*start["headers"], (b"idempotent-replayed", b"true")]
            return [{**start, "headers": replayed}, *rest]
        if key is not None:
            self.replies[record] = None
        if slow:
            await asyncio.sleep(1)
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await app(scope, receive, keep)
        self.carried_out.append(request)
        if key is not None:
            if messages[0]["status"] < 500:
                self.replies[record] = messages
            else:
                del self.replies[record]
        return messages

    async def _send(self, request: str, send: Send, messages: list[Message]) -> None:
        start = messages[0]
        replayed = (b"idempotent-replayed", b"true") in start["headers"]
        self.answered.append((request, f"{start['status']}{' replayed' if replayed else ''}"))
        for message in messages:
            await send(message)

    async def _stall(self, request: str, receive: Receive, send: Send) -> None:
        """Hold the connection without a byte of answer until the browser gives up on it
        (recorded in ``abandoned``) or the server stops (504)."""
        self._released = self._released or asyncio.Event()
        self.stalled.append(request)
        gone = asyncio.ensure_future(self._disconnected(receive))
        released = asyncio.ensure_future(self._released.wait())
        await asyncio.wait({gone, released}, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            self.abandoned.append(request)
            released.cancel()
            return
        gone.cancel()
        await send({"type": "http.response.start", "status": 504, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _disconnected(receive: Receive) -> None:
        """Until the client closes the connection (the request's body already read)."""
        while (await receive())["type"] != "http.disconnect":
            pass


def problem(
    status: int,
    kind: str,
    detail: str,
    headers: dict[str, str] | None = None,
    members: dict[str, str] | None = None,
) -> Response:
    """A problem+json answer as the booking-api sends it (``type`` carries the kind), with
    its extension ``members`` if any."""
    body = {
        "type": f"urn:slotstream:problem:{kind}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(members or {}),
    }
    return Response(orjson.dumps(body), status, headers, media_type="application/problem+json")


def gone() -> Response:
    """The gateway's answer to a stream of an unknown instructor, before it opens."""
    body = {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": f"no instructor {INSTRUCTOR!r}",
    }
    return Response(orjson.dumps(body), 404, media_type="application/problem+json")


def problem_messages(
    status: int, kind: str, detail: str, headers: dict[str, str] | None = None
) -> list[Message]:
    """``problem()`` as the ASGI messages that send it."""
    response = problem(status, kind, detail, headers)
    return [
        {"type": "http.response.start", "status": status, "headers": response.raw_headers},
        {"type": "http.response.body", "body": response.body},
    ]


def rate_limited(request: str) -> list[Message]:
    """The edge's answer past its write rate (``EDGE_WRITE_BURST``): 429 with Retry-After."""
    return problem_messages(429, "rate-limited", f"too many: {request}", {"Retry-After": "2"})


def edge_unavailable() -> list[Message]:
    """The edge's answer when no upstream answered (``@slotstream_unavailable`` in
    deploy/edge: nginx's 502/504, also after the request was sent), byte for byte."""
    body = (
        b'{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"No '
        b"server could take the request right now; retry after the number of seconds in "
        b'Retry-After."}\n'
    )
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"retry-after", b"2"),
        (b"cache-control", b"no-store"),
    ]
    return [
        {"type": "http.response.start", "status": 503, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


#: the booking-api's refusals that come with nothing done: its 503s (each with
#: ``Retry-After: 1``, as the API sends them) while its store is not open yet
#: (``ServiceStarting`` from ``get_service``) and for a request that ran past its time
#: limit, undone, its key's record dropped; its 409 for a student at the booking quota
API_REFUSALS = {
    "starting": lambda: problem_messages(
        503,
        "starting",
        "the service is starting; storage is not open yet",
        {"Retry-After": "1"},
    ),
    "api-timeout": lambda: problem_messages(
        503,
        "request-timeout",
        "the request took longer than 10s; retry with the same Idempotency-Key",
        {"Retry-After": "1"},
    ),
    "quota-exceeded": lambda: problem_messages(
        409,
        "quota-exceeded",
        "you already hold 20 active bookings, the most allowed; cancel one first",
        {},
    ),
}


async def buffered(receive: Receive) -> Receive:
    """The request's whole body, read now, handed out again by the returned ``receive``."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)

    async def again() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def close_connection(send: Send) -> None:
    """Close the TCP connection under a request, without a byte of answer: the answer lost
    on the way back. Uvicorn's ``send`` is a method of its request cycle, which holds the
    connection's transport (test-only reach into the server)."""
    send_owner: object = getattr(send, "__self__")  # noqa: B009
    transport: asyncio.Transport = getattr(send_owner, "transport")  # noqa: B009
    transport.close()
