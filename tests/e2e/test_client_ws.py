"""The browser client's WebSocket transport in a real browser, with a fake WebSocket: the ops
it sends (a fresh stream ticket in ``auth`` for every connect), merge by version, and
resuming each channel with ``since`` after a close."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext

from tests.e2e.fakeserver import FakeEdge

pytestmark = pytest.mark.e2e

SCENARIO = """
async () => {
  const { subscribe, CloseCode } = await import("/slotstream-client.js");
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.sent = []; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() {}
    deliver(message) { this.onmessage({ data: JSON.stringify(message) }); }
  }
  const statuses = [];
  const sub = subscribe("i1", {
    transport: "websocket",
    baseUrl: "http://gateway.example",
    token: "header.eyJzdWIiOiJ1MSIsInJvbGUiOiJzdHVkZW50IiwiZXhwIjo0MDAwMDAwMDAwfQ.sig",
    userId: "u1",
    initialBackoffMs: 10,
    maxBackoffMs: 20,
    webSocketFactory: (url) => new FakeSocket(url),
    fetch: async () => ({ ok: true, json: async () => ({ ticket: `t${sockets.length}` }) }),
    onStatus: ({ status }) => statuses.push(status),
  });
  const tick = () => new Promise((resolve) => setTimeout(resolve, 50));
  await tick(); // the ticket is fetched before the socket opens
  const first = sockets[0];
  first.onopen();
  const slot = (version, status) => ({
    id: "s1", instructorId: "i1", start: "2030-01-01T09:00:00Z", end: "2030-01-01T10:00:00Z",
    status, bookingId: null, version, updatedAt: "2030-01-01T00:00:00Z",
  });
  first.deliver({ event: "subscribed", data: { channel: "instructors/i1/schedule" } });
  first.deliver({
    event: "snapshot", id: "s1:5",
    data: { channel: "instructors/i1/schedule", schedule: {
      instructorId: "i1", from: "2029-12-01T00:00:00Z", to: "2030-02-01T00:00:00Z",
      version: 2, slots: [slot(2, "available")] } },
  });
  const delta = (id, data) => ({ event: "slot", id, data: { type: "slot.updated", data } });
  first.deliver(delta("s1:6", slot(4, "booked")));
  first.deliver(delta("s1:7", slot(3, "available")));
  first.deliver({ event: "notification", id: "n0:3", data: { type: "notification.created" } });
  first.deliver({ event: "heartbeat", data: {} });
  const held = sub.schedule.get("s1");
  first.onclose({ code: CloseCode.SHUTDOWN, reason: "shutdown" });
  await new Promise((resolve) => setTimeout(resolve, 100));
  const second = sockets[1];
  second.onopen();
  sub.close();
  return {
    url: first.url,
    firstOps: first.sent,
    secondOps: second?.sent,
    version: held.version,
    status: held.status,
    statuses,
    connected: sub.isConnected,
  };
}
"""


def test_websocket_transport_auth_subscribe_merge_and_resume(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/")
    result: dict[str, Any] = page.evaluate(SCENARIO)
    assert result["url"] == "ws://gateway.example/v1/ws"
    assert result["firstOps"][0] == {"op": "auth", "ticket": "t0"}
    assert result["firstOps"][1:] == [
        {"op": "subscribe", "channel": "instructors/i1/schedule"},
        {"op": "subscribe", "channel": "users/u1/notifications"},
    ]
    # a late older delta never moves the slot back
    assert (result["version"], result["status"]) == (4, "booked")
    assert result["secondOps"][0] == {"op": "auth", "ticket": "t1"}  # a fresh one
    assert result["secondOps"][1:] == [
        {"op": "subscribe", "channel": "instructors/i1/schedule", "since": "s1:7"},
        {"op": "subscribe", "channel": "users/u1/notifications", "since": "n0:3"},
    ]
    assert result["statuses"][:3] == ["open", "disconnected", "reconnecting"]
    assert result["connected"] is False
