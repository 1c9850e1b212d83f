"""The browser client's WebSocket transport in a real browser, with a fake WebSocket: the ops
it sends (a fresh stream ticket in ``auth`` for every connect), merge by version, and
resuming each channel with ``since`` after a close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.fakeserver import INSTRUCTOR, STUDENT, FakeEdge, cancelled_notification, make_slot

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
    shutdownRetryMs: 10,
    shutdownJitterMs: 10,
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
    # a connection that was open and broke is "reconnecting" (amber), as with SSE; only a
    # refused one is "disconnected" (red)
    assert result["statuses"][:3] == ["open", "reconnecting", "reconnecting"]
    assert result["connected"] is False


# The page's WebSocket replaced by one the test drives: ``window.__sockets`` holds every
# socket the page opened (``online``: whether the browser was, ``closedWith``: the code the
# page closed it with), ``deliver`` hands it a message as the gateway would.
FAKE_WEBSOCKET = """
window.__sockets = [];
window.WebSocket = class FakeWebSocket {
  constructor(url) {
    this.sent = []; this.sentAt = []; this.online = navigator.onLine; window.__sockets.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); this.sentAt.push(performance.now()); }
  close(code) { this.closedWith = code; }
  deliver(message) { this.onmessage({ data: JSON.stringify(message) }); }
};
"""


def open_websocket_page(
    context: BrowserContext, fake: FakeEdge, base_url: str, query: str
) -> tuple[Page, list[str]]:
    """The page on the WebSocket transport over ``FAKE_WEBSOCKET``, one free slot
    tomorrow, ready; and the list its script errors go to."""
    fake.slots["a"] = make_slot("a", datetime.now(UTC).replace(microsecond=0) + timedelta(days=1))
    errors: list[str] = []
    page = context.new_page()
    page.add_init_script(FAKE_WEBSOCKET)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base_url}/?instructor={INSTRUCTOR}{query}&transport=websocket")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page, errors


def test_a_websocket_page_that_goes_offline_stops_saying_live_and_resumes_when_back(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """As over SSE: the browser's ``offline`` does not close an open WebSocket, and the page
    said *Live* until the watchdog (35 s). It must close the socket and say it is not live
    at once, keep the slots it shows, and back online subscribe again from where it was."""
    fake, base_url = fake_edge
    page, errors = open_websocket_page(context, fake, base_url, "")
    channel = f"instructors/{INSTRUCTOR}/schedule"
    snapshot = {
        "channel": channel,
        "schedule": fake.snapshot().model_dump(mode="json", by_alias=True),
    }
    page.evaluate(
        """(snapshot) => {
          const socket = window.__sockets[0];
          socket.onopen();
          socket.deliver({ event: "subscribed", data: { channel: snapshot.channel } });
          socket.deliver({ event: "snapshot", id: "s0:1", data: snapshot });
        }""",
        snapshot,
    )
    expect(page.locator("#conn-text")).to_have_text("Live")

    context.set_offline(True)
    expect(page.locator("#conn-dot")).not_to_have_attribute("data-status", "open", timeout=2000)
    expect(page.locator("#conn-text")).not_to_have_text("Live")
    assert page.evaluate("() => window.__sockets[0].closedWith") == 1000
    expect(page.locator('button.slot[data-slot-id="a"]')).to_have_attribute(
        "data-state", "available"
    )

    context.set_offline(False)
    page.wait_for_function("() => window.__sockets.at(-1).online", timeout=5000)
    later = make_slot("a", fake.slots["a"].start, version=2, booked=True)
    page.evaluate(
        """([channel, slot]) => {
          const socket = window.__sockets.at(-1);
          socket.onopen();
          socket.deliver({ event: "subscribed", data: { channel } });
          socket.deliver({ event: "slot", id: "s0:2", data: { type: "slot.updated", data: slot } });
        }""",
        [channel, later.model_dump(mode="json", by_alias=True)],
    )
    expect(page.locator("#conn-text")).to_have_text("Live")
    assert page.evaluate("() => window.__sockets.at(-1).sent") == [
        {"op": "subscribe", "channel": channel, "since": "s0:1"}
    ]
    expect(page.locator('button.slot[data-slot-id="a"]')).to_have_attribute("data-state", "booked")
    assert errors == []


def test_a_subscribe_refused_for_an_unknown_instructor_says_so_and_stops(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The gateway accepts a schedule subscribe, then finds the instructor unknown to the
    booking-api and answers ``error`` 404 on the open socket: the page must not stay
    "Live", and nothing is asked again."""
    fake, base_url = fake_edge
    page, errors = open_websocket_page(context, fake, base_url, "")
    channel = f"instructors/{INSTRUCTOR}/schedule"
    page.evaluate(
        """(channel) => {
          const socket = window.__sockets[0];
          socket.onopen();
          socket.deliver({ event: "subscribed", data: { channel } });
          socket.deliver({ event: "error", data: {
            op: "subscribe", channel, status: 404, title: "Not Found",
            detail: "no instructor 'fake-instructor'" } });
        }""",
        channel,
    )
    expect(page.locator("#conn-text")).to_have_text(
        "This instructor's schedule is no longer available"
    )
    page.wait_for_timeout(1000)
    assert page.evaluate("() => window.__sockets.length") == 1
    assert page.evaluate("() => window.__sockets[0].sent") == [
        {"op": "subscribe", "channel": channel}
    ]
    assert errors == []


def test_a_subscribe_the_gateway_refuses_while_starting_is_retried_and_not_shown_live(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A gateway whose Kafka partitions are not assigned yet answers ``subscribe`` with an
    ``error`` 503 with ``retryAfter`` 1 and keeps the socket open (heartbeats): the page
    must not say "Live" meanwhile, and subscribes again after that second."""
    fake, base_url = fake_edge
    page, errors = open_websocket_page(context, fake, base_url, "")
    channel = f"instructors/{INSTRUCTOR}/schedule"
    page.evaluate("() => window.__sockets[0].onopen()")
    assert page.evaluate("() => window.__sockets[0].sent") == [
        {"op": "subscribe", "channel": channel}
    ]

    refused_at = page.evaluate(
        """(channel) => {
          window.__sockets[0].deliver({ event: "error", data: {
            op: "subscribe", channel, status: 503, title: "Service Unavailable",
            detail: "gateway is starting: retry in 1 s", retryAfter: 1 } });
          window.__sockets[0].deliver({ event: "heartbeat", data: {} });
          return performance.now();
        }""",
        channel,
    )
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "disconnected")
    expect(page.locator("#conn-text")).to_have_text("Disconnected — retrying in 1 s")

    # The same socket (the gateway keeps it open) subscribes again, after the hint.
    page.wait_for_function("() => window.__sockets[0].sent.length === 2")
    assert page.evaluate("() => window.__sockets.length") == 1
    assert page.evaluate("() => window.__sockets[0].sent[1]") == {
        "op": "subscribe",
        "channel": channel,
    }
    assert page.evaluate("() => window.__sockets[0].sentAt[1]") - refused_at >= 990
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "reconnecting")

    snapshot = {
        "channel": channel,
        "schedule": fake.snapshot().model_dump(mode="json", by_alias=True),
    }
    page.evaluate(
        """(snapshot) => {
          const socket = window.__sockets[0];
          socket.deliver({ event: "subscribed", data: { channel: snapshot.channel } });
          socket.deliver({ event: "snapshot", id: "s0:1", data: snapshot });
        }""",
        snapshot,
    )
    expect(page.locator("#conn-text")).to_have_text("Live")
    expect(page.locator('button.slot[data-slot-id="a"]')).to_have_attribute(
        "data-state", "available"
    )
    assert errors == []


FAKE_SOCKETS = """
  const { subscribe, CloseCode } = await import("/slotstream-client.js");
  const sockets = [];
  class FakeSocket {
    constructor() { this.sent = []; sockets.push(this); }
    send(text) { this.sent.push(JSON.parse(text)); }
    close() {}
    deliver(message) { this.onmessage({ data: JSON.stringify(message) }); }
  }
  const nth = async (n) => {
    while (sockets.length < n) await new Promise((resolve) => setTimeout(resolve, 1));
    return sockets[n - 1];
  };
  const signedIn = {
    transport: "websocket",
    baseUrl: "http://gateway.example",
    token: "a.b.c",
    userId: "u1",
    webSocketFactory: (url) => new FakeSocket(url),
    fetch: async () => ({ ok: true, status: 201, json: async () => ({ ticket: "t" }) }),
  };
  const snapshot = {
    channel: "instructors/i1/schedule",
    schedule: { instructorId: "i1", from: "2030-01-01T00:00:00Z", to: "2030-01-08T00:00:00Z",
                version: 1, slots: [] },
  };
"""

ACCEPTED_THEN_CLOSED = (
    "async () => {"
    + FAKE_SOCKETS
    + """
  const waits = [];
  const sub = subscribe("i1", {
    ...signedIn,
    initialBackoffMs: 10,
    maxBackoffMs: 100000,
    onStatus: ({ retryInMs }) => { if (retryInMs != null) waits.push(retryInMs); },
  });
  // The gateway takes the socket, then refuses the ticket (1008) or cannot redeem it (1013).
  const codes = [CloseCode.POLICY, CloseCode.POLICY, CloseCode.POLICY, 1013, 1013, 1013];
  for (const [i, code] of codes.entries()) {
    const socket = await nth(i + 1);
    socket.onopen();
    socket.onclose({ code, reason: "refused" });
  }
  const refused = waits.splice(0);
  // One that delivers its snapshot, then breaks.
  const socket = await nth(codes.length + 1);
  socket.onopen();
  socket.deliver({ event: "snapshot", id: "s0:1", data: snapshot });
  socket.onclose({ code: CloseCode.PING_TIMEOUT, reason: "ping-timeout" });
  const afterSnapshot = waits.splice(0);
  sub.close();
  return { refused, afterSnapshot };
}"""
)


def test_a_socket_the_gateway_keeps_closing_backs_off_longer_each_time(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A gateway that accepts the socket and closes it (1008 refused ticket, 1013) must not
    be asked again every 250-500 ms forever, with a ticket POST each time: the wait doubles
    until a socket delivers data."""
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    result: dict[str, list[int]] = page.evaluate(ACCEPTED_THEN_CLOSED)
    refused = result["refused"]
    assert len(refused) == 6
    # initialBackoffMs · 2^(n-1), a random 50-100 % of it
    assert all(wait >= 10 * 2**i / 2 for i, wait in enumerate(refused)), refused
    assert result["afterSnapshot"][0] <= 10


SOCKET_SHUTDOWN = (
    "async (random) => {"
    + FAKE_SOCKETS
    + """
  Math.random = () => random;
  let wait = null;
  const sub = subscribe("i1", {
    ...signedIn,
    onStatus: ({ retryInMs }) => { wait ??= retryInMs; },
  });
  const socket = await nth(1);
  socket.onopen();
  socket.deliver({ event: "snapshot", id: "s0:1", data: snapshot });
  socket.deliver({ event: "bye", data: { reason: "shutdown" } });
  socket.onclose({ code: CloseCode.SHUTDOWN, reason: "shutdown" });
  sub.close();
  return wait;
}"""
)


def test_websocket_pages_come_back_from_a_gateway_shutdown_spread_out(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A gateway shutting down closes every socket with 1001 at once; its pages must come
    back spread over the same window as SSE pages (500 ms + a random share of 5 s, the
    gateway's SOCKET_SHUTDOWN_RETRY_MS and _JITTER_MS), not all within 0.5 s."""
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    waits = [page.evaluate(SOCKET_SHUTDOWN, random) for random in (0, 0.5, 0.999)]
    assert waits == pytest.approx([500, 3000, 5495], abs=1)


def test_notifications_missed_while_a_socket_was_down_are_loaded_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A notifications subscription gets no message with an ``id`` until a notification
    comes (no snapshot), so a page that had none on its socket has no ``since`` for that
    channel: subscribed again without one, the gateway starts at the end of the log and
    what was notified while the socket was down (a gateway restart, a dead connection the
    watchdog found) never arrives. The page must read its notifications (and bookings)
    again, as after ``resync`` ``history-unavailable``."""
    fake, base_url = fake_edge
    page, errors = open_websocket_page(context, fake, base_url, f"&as={STUDENT}")
    schedule = f"instructors/{INSTRUCTOR}/schedule"
    notifications = f"users/{STUDENT}/notifications"
    snapshot = {
        "channel": schedule,
        "schedule": fake.snapshot().model_dump(mode="json", by_alias=True),
    }
    accept = """([n, snapshot, id, notifications]) => {
      const socket = window.__sockets[n];
      socket.onopen();
      socket.deliver({ event: "subscribed", data: { channel: snapshot.channel } });
      socket.deliver({ event: "snapshot", id, data: snapshot });
      socket.deliver({ event: "subscribed", data: { channel: notifications } });
    }"""
    page.wait_for_function("() => window.__sockets.length === 1")
    page.evaluate(accept, [0, snapshot, "s0:1", notifications])
    expect(page.locator("#conn-text")).to_have_text("Live")
    expect(page.locator("#notif-list li")).to_have_count(0)

    # The socket goes (a gateway restart); meanwhile the student's booking is cancelled.
    page.evaluate("() => window.__sockets[0].onclose({ code: 1006, reason: '' })")
    fake.notifications.append(cancelled_notification())
    page.wait_for_function("() => window.__sockets.length === 2", timeout=10_000)
    page.evaluate(accept, [1, snapshot, "s0:1", notifications])
    expect(page.locator("#conn-text")).to_have_text("Live")
    resubscribed = page.evaluate("() => window.__sockets[1].sent")
    assert {"op": "subscribe", "channel": notifications} in resubscribed  # no since to give
    notes = page.locator("#notif-list li")
    expect(notes).to_have_count(1)
    expect(notes.first).to_contain_text("Your booking was cancelled.")
    assert errors == []


def test_a_signed_in_page_of_an_unknown_instructor_still_gets_its_notifications(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The gateway answers the schedule's subscribe ``error`` 404 (a deleted instructor) and
    keeps the socket and the user's subscription open: the page says the schedule is gone
    and still shows the user's notifications as they come, on that socket and on the next
    one after a drop, which subscribes the user's channel alone."""
    fake, base_url = fake_edge
    page, errors = open_websocket_page(context, fake, base_url, f"&as={STUDENT}")
    schedule = f"instructors/{INSTRUCTOR}/schedule"
    notifications = f"users/{STUDENT}/notifications"
    page.wait_for_function("() => window.__sockets.length === 1")
    page.evaluate(
        """([schedule, notifications]) => {
          const socket = window.__sockets[0];
          socket.onopen();
          socket.deliver({ event: "subscribed", data: { channel: schedule } });
          socket.deliver({ event: "subscribed", data: { channel: notifications } });
          socket.deliver({ event: "error", data: {
            op: "subscribe", channel: schedule, status: 404, title: "Not Found",
            detail: "no instructor 'fake-instructor'" } });
        }""",
        [schedule, notifications],
    )
    gone = "This instructor's schedule is no longer available"
    expect(page.locator("#conn-text")).to_have_text(gone)
    notify = """([n, id, note]) => window.__sockets[n].deliver({ event: "notification", id,
      data: { specversion: "1.0", id: note.id, type: "notification.created", data: note } })"""
    note = cancelled_notification()
    page.evaluate(notify, [0, "n0:1", note.model_dump(mode="json", by_alias=True)])
    notes = page.locator("#notif-list li")
    expect(notes).to_have_count(1)
    expect(notes.first).to_contain_text("Your booking was cancelled.")

    # The socket drops: the next one subscribes the user's channel alone, from where it was.
    page.evaluate("() => window.__sockets[0].onclose({ code: 1006, reason: '' })")
    page.wait_for_function("() => window.__sockets.length === 2", timeout=10_000)
    page.evaluate("() => window.__sockets[1].onopen()")
    sent = page.evaluate("() => window.__sockets[1].sent")
    assert [op for op in sent if op["op"] != "auth"] == [
        {"op": "subscribe", "channel": notifications, "since": "n0:1"}
    ]
    again = note.model_copy(update={"id": "6930c1e2000a200000000000"})
    page.evaluate(notify, [1, "n0:2", again.model_dump(mode="json", by_alias=True)])
    expect(notes).to_have_count(2)
    expect(page.locator("#conn-text")).to_have_text(gone)
    assert errors == []
