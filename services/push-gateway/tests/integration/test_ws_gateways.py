"""WebSocket clients on two real gateways reading the same Tansu log: the same events and
ids as SSE, resume on the other gateway from ``since``, private channels after ``auth``."""

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from push_gateway.testing import notification_event, slot_event
from slotstream_contracts.auth import Role, mint_token
from slotstream_contracts.settings import TopicSettings
from slotstream_testkit.kafka import KafkaEndpoint

from .conftest import JWT, ServerThread
from .test_gateways import PAGE, Stream, producer, publish

pytestmark = pytest.mark.integration


def ws_url(server: ServerThread, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/v1/ws{query}"


async def send(ws: ClientConnection, **op: Any) -> None:
    await ws.send(orjson.dumps(op).decode())


async def receive(ws: ClientConnection, event: str, count: int = 1) -> list[dict[str, Any]]:
    """The next ``count`` messages of kind ``event`` (others are skipped)."""
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while len(found) < count:
            message = orjson.loads(await ws.recv())
            if message["event"] == event:
                found.append(message)
    return found


async def test_websocket_and_sse_clients_get_the_same_events_and_ids(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    a, b = gateways
    async with (
        connect(ws_url(a)) as ws,
        Stream(b.url + PAGE, {"instructorId": "wsorder"}) as sse,
    ):
        await send(ws, op="subscribe", channel="instructors/wsorder/schedule")
        [snapshot] = await receive(ws, "snapshot")
        await sse.wait_for("snapshot", 1)
        assert snapshot["data"]["channel"] == "instructors/wsorder/schedule"
        async with producer(kafka) as p:
            await publish(
                p, topics.schedule, [slot_event("wsorder", "s1", v) for v in range(1, 21)]
            )
        slots = await receive(ws, "slot", 20)
        by_sse = await sse.wait_for("slot", 20)
    assert [m["data"]["version"] for m in slots] == list(range(1, 21))
    assert [m["id"] for m in slots] == [e.id for e in by_sse]
    assert [m["data"] for m in slots] == [orjson.loads(e.data) for e in by_sse]


async def test_resubscribe_on_the_other_gateway_since_the_last_id(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    a, b = gateways
    channel = "instructors/wsresume/schedule"
    async with producer(kafka) as p:
        async with connect(ws_url(a)) as ws:
            await send(ws, op="subscribe", channel=channel)
            await receive(ws, "snapshot")
            await publish(p, topics.schedule, [slot_event("wsresume", "s1", v) for v in (1, 2, 3)])
            last = (await receive(ws, "slot", 3))[-1]["id"]
        await publish(p, topics.schedule, [slot_event("wsresume", "s1", v) for v in (4, 5)])
    async with connect(ws_url(b)) as ws:
        await send(ws, op="subscribe", channel=channel, since=last)
        missed = await receive(ws, "slot", 2)
        assert [m["data"]["version"] for m in missed] == [4, 5]
        await send(ws, op="ping")
        [pong] = await receive(ws, "pong")  # nothing else came first: no snapshot
    assert pong == {"event": "pong", "data": {}}


async def test_private_channel_after_auth_and_close_code_for_a_bad_token(
    kafka: KafkaEndpoint, topics: TopicSettings, gateways: tuple[ServerThread, ServerThread]
) -> None:
    a, _ = gateways
    async with connect(ws_url(a)) as ws:
        await send(ws, op="subscribe", channel="users/wsu1/notifications")
        [error] = await receive(ws, "error")
        assert error["data"]["status"] == 401
        await send(ws, op="auth", token=mint_token(JWT, "wsu1", Role.STUDENT))
        await receive(ws, "authenticated")
        await send(ws, op="subscribe", channel="users/wsu1/notifications")
        await receive(ws, "subscribed")
        await asyncio.sleep(0.2)  # the subscription goes live (no snapshot for notifications)
        async with producer(kafka) as p:
            await publish(p, topics.notifications, [notification_event("wsu1", "n1", "hello")])
        [note] = await receive(ws, "notification")
        assert note["data"]["data"]["message"] == "hello"
    async with connect(ws_url(a)) as ws:
        await send(ws, op="auth", token="not-a-token")
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws, "never")
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008


async def test_tokens_in_urls_are_refused(gateways: tuple[ServerThread, ServerThread]) -> None:
    a, _ = gateways
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(a, "?access_token=x")):
            pass
    assert refused.value.response.status_code == 400
