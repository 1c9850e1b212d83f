"""Two gateways reading the same Tansu log: ordering, cross-gateway resume, slow clients,
auth, limits and presence, through real HTTP SSE clients."""

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from fastapi import FastAPI
from httpx_sse import ServerSentEvent, aconnect_sse

from push_gateway.gateway import Gateway
from push_gateway.testing import booking_event, notification_event, slot_event
from slotstream_contracts.auth import Role, mint_token
from slotstream_contracts.entities import Audience
from slotstream_contracts.events import CloudEvent
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint

from .conftest import JWT, FakeBookingApi, ServerThread

pytestmark = pytest.mark.integration

PAGE = "/api/book-now/schedule-updates"


@asynccontextmanager
async def producer(kafka: KafkaEndpoint) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=False, linger_ms=2
    )
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def publish(p: AIOKafkaProducer, topic: str, events: list[CloudEvent]) -> None:
    sent = [
        await p.send(topic, e.to_json(), key=e.routing_key.encode(), headers=e.headers())
        for e in events
    ]
    await asyncio.gather(*sent)


async def get(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(url, **kwargs)


class Stream:
    """An SSE client that collects events in the background."""

    def __init__(
        self,
        url: str,
        params: dict[str, str] | list[tuple[str, str]],
        headers: dict[str, str] | None = None,
    ):
        self.url, self.params, self.headers = url, params, headers or {}
        self.events: list[ServerSentEvent] = []
        self.status = 0
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Stream":
        self._task = asyncio.create_task(self._run())
        opened = asyncio.create_task(self._opened.wait())
        await asyncio.wait({self._task, opened}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if self._task.done():
            self._task.result()  # raises what went wrong
        assert self._opened.is_set(), "stream did not open"
        return self

    @property
    def ended(self) -> "asyncio.Task[None] | None":
        """The reading task: done once the server has closed the stream."""
        return self._task

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            aconnect_sse(client, "GET", self.url, params=self.params, headers=self.headers) as src,
        ):
            self.status = src.response.status_code
            self._opened.set()
            async for event in src.aiter_sse():
                if event.event == "message" and not event.data:
                    continue  # a retry-only block: browsers dispatch nothing for it
                self.events.append(event)

    def data(self, kind: str) -> list[dict[str, object]]:
        return [orjson.loads(e.data) for e in self.events if e.event == kind]

    async def wait_for(self, kind: str, count: int, within: float = 10) -> list[ServerSentEvent]:
        async with asyncio.timeout(within):
            while len([e for e in self.events if e.event == kind]) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return [e for e in self.events if e.event == kind]


async def test_clients_on_both_gateways_receive_every_event_in_order(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    a, b = gateways
    params = {"instructorId": "order1"}
    async with Stream(a.url + PAGE, params) as on_a, Stream(b.url + PAGE, params) as on_b:
        await on_a.wait_for("snapshot", 1)
        await on_b.wait_for("snapshot", 1)
        async with producer(kafka) as p:
            await publish(p, topics.schedule, [slot_event("order1", "s1", v) for v in range(1, 31)])
        got_a = await on_a.wait_for("slot", 30)
        got_b = await on_b.wait_for("slot", 30)
    assert [orjson.loads(e.data)["version"] for e in got_a] == list(range(1, 31))
    assert [e.id for e in got_a] == [e.id for e in got_b]  # same log position on both
    assert on_a.events[0].event == "snapshot"


async def test_reconnect_to_the_other_gateway_resumes_with_exactly_the_missed_events(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    """Events produced while the client is away reach it through the resume on the other
    gateway, not live: that gateway has provably read them before the client reconnects,
    and they are the first frames, before anything newer is produced."""
    a, b = gateways
    app = b.server.config.app
    assert isinstance(app, FastAPI)
    gateway_b: Gateway = app.state.gateway
    params = {"instructorId": "resume1"}
    async with producer(kafka) as p:
        async with Stream(a.url + PAGE, params) as first:
            await first.wait_for("snapshot", 1)
            await publish(p, topics.schedule, [slot_event("resume1", "s1", v) for v in range(1, 6)])
            seen = await first.wait_for("slot", 5)
        # Disconnected. Versions 6-10 are produced now, and an observer on gateway B waits
        # until B has delivered them, so B holds them before the client comes back.
        async with Stream(b.url + PAGE, params) as observer:
            await observer.wait_for("snapshot", 1)
            await publish(
                p, topics.schedule, [slot_event("resume1", "s1", v) for v in range(6, 11)]
            )
            await observer.wait_for("slot", 5)
        ring_resumes = gateway_b.stats.resumes_ring
        resumed = Stream(b.url + PAGE, params, {"Last-Event-ID": seen[-1].id})
        async with resumed:
            missed = await resumed.wait_for("slot", 5)
            # nothing before them (a presence frame, every 0.3 s here, may come at any time)
            assert [e.event for e in resumed.events if e.event != "presence"] == ["slot"] * 5
            assert gateway_b.stats.resumes_ring == ring_resumes + 1
            await publish(p, topics.schedule, [slot_event("resume1", "s1", 11)])
            await resumed.wait_for("slot", 6)
            await asyncio.sleep(0.2)
    versions = [d["version"] for d in resumed.data("slot")]
    assert versions == list(range(6, 12))
    assert [orjson.loads(e.data)["version"] for e in missed] == list(range(6, 11))
    assert resumed.data("snapshot") == []
    assert missed[0].id != seen[-1].id


async def test_a_stalled_client_does_not_delay_the_others(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    a, _ = gateways
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    stalled.connect(("127.0.0.1", a.port))
    stalled.sendall(f"GET {PAGE}?instructorId=slow1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    stalled.setblocking(False)
    count = 2500
    try:
        async with Stream(a.url + PAGE, {"instructorId": "slow1"}) as healthy:
            await healthy.wait_for("snapshot", 1)
            padding = "p" * 1800
            events = [
                slot_event("slow1", f"s{n}", 1).model_copy(update={"subject": padding})
                for n in range(count)
            ]
            async with producer(kafka) as p:
                await publish(p, topics.schedule, events)
            got = await healthy.wait_for("slot", count, within=30)
        assert len(got) == count
        metrics = (await get(a.url + "/metrics")).text
        assert "gateway_slow_client_disconnects_total 1.0" in metrics
        assert "gateway_connections 0.0" in metrics  # the stalled one was cut off
    finally:
        stalled.close()


async def test_private_channel_needs_the_owners_token(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    a, _ = gateways
    url = a.url + "/v1/events"
    channel = {"channel": "users/u7/notifications"}
    async with httpx.AsyncClient() as client:
        missing = await client.get(url, params=channel)
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        other = mint_token(JWT, "u8", Role.STUDENT)
        forbidden = await client.get(url, params=channel, headers=bearer(other))
        assert forbidden.status_code == 403
        expired = mint_token(JWT, "u7", Role.STUDENT, ttl=timedelta(minutes=-5))
        assert (await client.get(url, params=channel, headers=bearer(expired))).status_code == 401
        in_url = await client.get(url, params={**channel, "access_token": other})
        assert in_url.status_code == 400
    own = mint_token(JWT, "u7", Role.STUDENT)
    async with Stream(url, channel, {"Authorization": f"Bearer {own}"}) as stream:
        assert stream.status == 200
        async with producer(kafka) as p:
            await publish(p, topics.notifications, [notification_event("u7", "n1", "hi\nthere")])
        [event] = await stream.wait_for("notification", 1)
    assert orjson.loads(event.data)["data"]["message"] == "hi\nthere"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_student_and_an_instructor_sharing_an_id_each_get_only_their_own(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    """Records as the change-publisher writes them (each naming the role it is for) through
    Tansu to two gateways: the student's stream on one, the instructor's on the other."""
    a, b = gateways
    channel = {"channel": "users/u5/notifications"}
    student = bearer(mint_token(JWT, "u5", Role.STUDENT))
    instructor = bearer(mint_token(JWT, "u5", Role.INSTRUCTOR))
    async with (
        Stream(a.url + "/v1/events", channel, student) as theirs,
        Stream(b.url + "/v1/events", channel, instructor) as mine,
        producer(kafka) as p,
    ):
        await publish(
            p,
            topics.notifications,
            [
                notification_event("u5", "n-student", "for the student", Audience.STUDENT),
                notification_event("u5", "n-instructor", "for the instructor", Audience.INSTRUCTOR),
                notification_event("u5", "n-old", "from before roles: both"),
            ],
        )
        for stream in (theirs, mine):
            await stream.wait_for("notification", 2)
    assert [n["id"] for n in theirs.data("notification")] == ["n-student-v1", "n-old-v1"]
    assert [n["id"] for n in mine.data("notification")] == ["n-instructor-v1", "n-old-v1"]


def booked(instructor: str, student: str, booking: str) -> list[CloudEvent]:
    """A booking as the change-publisher writes it: one record for its instructor and one
    for its student, keyed by each, with one CloudEvents id (two records even when the
    two ids are one)."""
    return [
        booking_event(instructor, booking, "sl1", student, audience)
        for audience in (Audience.INSTRUCTOR, Audience.STUDENT)
    ]


def same_partition(user: str, partitions: int) -> str:
    """Another user id whose notifications share ``user``'s partition: one partition's ids
    are its offsets, and records of one partition are replayed in the order they came."""
    wanted = (murmur2(user.encode()) & 0x7FFFFFFF) % partitions
    return next(
        other
        for n in range(100)
        if (murmur2((other := f"{user}-s{n}").encode()) & 0x7FFFFFFF) % partitions == wanted
    )


#: (SSE id, event, CloudEvents id, audience) of a record's frame
Frame = tuple[str, str, str, str | None]


async def frames_until(stream: Stream, last: str) -> list[Frame]:
    """The stream's record frames, up to the one of the CloudEvent ``last``."""
    async with asyncio.timeout(10):
        while last not in (orjson.loads(e.data).get("id") for e in stream.events):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    frames = []
    for e in stream.events:
        if e.event in ("notification", "booking"):
            event = orjson.loads(e.data)
            frames.append((e.id, e.event, event["id"], event.get("audience")))
    return frames


async def live_and_resumed(
    kafka: KafkaEndpoint,
    topics: TopicSettings,
    gateways: tuple[ServerThread, ServerThread],
    channels: list[str],
    events: list[CloudEvent],
) -> tuple[list[Frame], dict[str, list[Frame]]]:
    """What an admin's stream of ``channels`` gets live of ``events`` (the last a
    notification), the same on both gateways, and what a stream on the second gets
    resuming from each of the live ids: each should be the live frames after that id.
    (The second gateway has read them all by then: a resume from beyond what it knows of
    the log would start afresh.)"""
    a, b = gateways
    params = [("channel", c) for c in channels]
    admin = bearer(mint_token(JWT, "admin1", Role.ADMIN))
    last = events[-1].id
    async with (
        Stream(a.url + "/v1/events", params, admin) as on_a,
        Stream(b.url + "/v1/events", params, admin) as on_b,
        producer(kafka) as p,
    ):
        await publish(p, topics.notifications, events)
        live = await frames_until(on_a, last)
        assert await frames_until(on_b, last) == live
    resumed = {}
    for frame_id, *_ in live[:-1]:
        headers = {**admin, "Last-Event-ID": frame_id}
        async with Stream(b.url + "/v1/events", params, headers) as stream:
            resumed[frame_id] = await frames_until(stream, last)
    return live, resumed


async def test_an_admin_gets_the_same_frames_live_and_resuming_when_one_id_is_both_roles(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    """A booking of instructor u's slot by student u (two people, one id) is two records
    on ``users/u/notifications``, one per role, with one CloudEvents id; an admin reads
    both roles, so both are frames, live and on any resume."""
    user = f"both-{uuid.uuid4().hex[:6]}"
    events = [
        notification_event(user, "n-before", "before"),
        *booked(user, user, "b-self"),
        notification_event(user, "n-after", "after"),
    ]
    live, resumed = await live_and_resumed(
        kafka, topics, gateways, [f"users/{user}/notifications"], events
    )
    assert resumed == {frame_id: live[n:] for n, (frame_id, *_) in enumerate(live[:-1], 1)}
    assert [audience for *_, audience in live] == [None, "instructor", "student", None]


async def test_an_admin_gets_the_same_frames_live_and_resuming_on_two_users_channels(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    """An admin watching a booking's instructor and its student on one stream gets both
    records, each on its own channel, live and on any resume (``ce_id`` de-duplication
    is per channel)."""
    instructor = f"i-{uuid.uuid4().hex[:6]}"
    student = same_partition(instructor, 2)
    events = [
        notification_event(instructor, "n-before", "before"),
        *booked(instructor, student, "b-two"),
        notification_event(student, "n-after", "after"),
    ]
    channels = [f"users/{instructor}/notifications", f"users/{student}/notifications"]
    live, resumed = await live_and_resumed(kafka, topics, gateways, channels, events)
    assert resumed == {frame_id: live[n:] for n, (frame_id, *_) in enumerate(live[:-1], 1)}
    assert [audience for *_, audience in live] == [None, "instructor", "student", None]


async def test_a_private_stream_opened_with_a_ticket_ends_with_its_token(
    kafka: KafkaEndpoint,
    topics: TopicSettings,
    gateways: tuple[ServerThread, ServerThread],
    booking_api: FakeBookingApi,
) -> None:
    _, b = gateways
    ticket = "ticket-" + uuid.uuid4().hex
    booking_api.tickets[ticket] = {
        "sub": "u9",
        "role": "student",
        "name": None,
        "expiresAt": int(time.time()) + 3,  # 2-3 s: the notification is delivered first
    }
    params = {"channel": "users/u9/notifications", "ticket": ticket}
    async with Stream(b.url + "/v1/events", params) as stream:
        async with producer(kafka) as p:
            await publish(p, topics.notifications, [notification_event("u9", "n1", "before")])
        await stream.wait_for("notification", 1)
        [bye] = await stream.wait_for("bye", 1, within=5)
        assert orjson.loads(bye.data) == {"reason": "token-expired"}
        assert stream.ended is not None
        await asyncio.wait_for(stream.ended, 5)  # the gateway closed the response
    # reconnecting with the same ticket is refused: the client must fetch a new one
    assert (await get(b.url + "/v1/events", params=params)).status_code == 401
    metrics = (await get(b.url + "/metrics")).text
    assert "gateway_token_expiries_total 1.0" in metrics


async def test_malformed_channel_is_400_problem_with_cors(
    gateways: tuple[ServerThread, ServerThread],
) -> None:
    a, _ = gateways
    response = await get(
        a.url + "/v1/events",
        params={"channel": "instructors/../schedule"},
        headers={"Origin": "http://page.example"},
    )
    assert response.status_code == 400
    assert response.headers["access-control-allow-origin"] == "http://page.example"
    assert "unknown channel" in response.json()["detail"]
    evil = await get(
        a.url + "/v1/events", params={"channel": "x"}, headers={"Origin": "http://evil"}
    )
    assert "access-control-allow-origin" not in evil.headers


async def test_max_connections_answers_503_with_retry_after(
    gateways: tuple[ServerThread, ServerThread],
) -> None:
    _, b = gateways  # b allows 6 streams
    streams = [Stream(b.url + PAGE, {"instructorId": f"cap{n}"}) for n in range(6)]
    for stream in streams:
        await stream.__aenter__()
    try:
        async with httpx.AsyncClient() as client:
            refused = await client.get(b.url + PAGE, params={"instructorId": "cap9"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
    finally:
        for stream in streams:
            await stream.__aexit__()


async def test_presence_counts_viewers_across_gateways(
    gateways: tuple[ServerThread, ServerThread],
) -> None:
    a, b = gateways
    params = {"instructorId": "pres1"}
    path = "/v1/channels/instructors/pres1/schedule/presence"
    async with Stream(a.url + PAGE, params) as on_a, Stream(b.url + PAGE, params):
        await on_a.wait_for("snapshot", 1)
        # each gateway publishes its count once per interval: either may see both first
        for gateway in (a, b):
            async with asyncio.timeout(10):
                while (await get(gateway.url + path)).json()["count"] != 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
        assert (await get(b.url + path)).json() == {
            "channel": "instructors/pres1/schedule",
            "count": 2,
        }
        presence = await on_a.wait_for("presence", 1)
        assert orjson.loads(presence[-1].data)["channel"] == "instructors/pres1/schedule"
    private = await get(a.url + "/v1/channels/users/u1/notifications/presence")
    assert private.status_code == 400
