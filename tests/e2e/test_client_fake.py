"""The browser client against a fake edge: version ordering and the reconnect paths."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from slotstream_contracts.entities import NotificationData, NotificationKind
from tests.e2e.conftest import save_screenshot
from tests.e2e.fakeserver import (
    INSTRUCTOR,
    STUDENT,
    STUDENT_TOKEN,
    FakeEdge,
    cancelled_notification,
    make_slot,
    student_token,
)
from tests.e2e.test_instructor_page import axe_violations

pytestmark = pytest.mark.e2e


def tomorrow_at(hour: int) -> datetime:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day + timedelta(days=1, hours=hour)


def open_page(
    context: BrowserContext, base_url: str, errors: list[str], as_user: str | None = None
) -> Page:
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base_url}/?instructor={INSTRUCTOR}" + (f"&as={as_user}" if as_user else ""))
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    return page


def slot_button(page: Page, slot_id: str) -> Locator:
    return page.locator(f'button.slot[data-slot-id="{slot_id}"]')


def test_deltas_apply_by_version_and_never_move_a_slot_backwards(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str], output_dir: Path
) -> None:
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9), version=3)
    errors: list[str] = []
    page = open_page(context, base_url, errors)

    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    expect(page.locator("#conn-text")).to_have_text("Live")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")
    expect(page.locator("#last-update")).to_contain_text("Updated")

    fake.send_slot(make_slot("a", tomorrow_at(9), version=4, booked=True))
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked")

    # A late, older delta (version 3, available) must not undo the booking.
    fake.send_slot(make_slot("a", tomorrow_at(9), version=3))
    fake.send_slot(make_slot("b", tomorrow_at(11), version=1))
    expect(slot_button(page, "b")).to_have_attribute("data-state", "available")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked")
    expect(slot_button(page, "a")).to_have_attribute("data-version", "4")
    save_screenshot(page, output_dir, "fake-versions")
    assert errors == []


def test_dropped_stream_goes_amber_and_resumes(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")

    # The stream ends and the next two attempts are refused: EventSource gives up
    # (readyState CLOSED), so the client must retry by itself with lastEventId.
    fake.refuse_streams = 2
    fake.slots["a"] = make_slot("a", tomorrow_at(9), version=2, booked=True)
    fake.drop_streams()
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "disconnected")
    expect(page.locator("#conn-text")).to_contain_text("Disconnected")

    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open", timeout=15_000)
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked")
    resumed = fake.stream_requests[-1]
    assert resumed.get("lastEventId", "").startswith("s0:")
    assert resumed["instructorId"] == INSTRUCTOR
    assert errors == []


@pytest.mark.parametrize("as_user", [None, STUDENT])
def test_a_page_that_goes_offline_stops_saying_live_and_resumes_when_back(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str], as_user: str | None
) -> None:
    """The browser loses its network (``offline``): an open stream is not cut by that, and
    the page said *Live* until the watchdog gave up on the silent stream (35 s). It must
    say at once that it is not live, keep the slots it shows, and back online resume,
    showing what changed meanwhile and what comes after."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=as_user)
    expect(page.locator("#conn-text")).to_have_text("Live")

    context.set_offline(True)
    expect(page.locator("#conn-dot")).not_to_have_attribute("data-status", "open", timeout=2000)
    expect(page.locator("#conn-text")).not_to_have_text("Live")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")  # still shown
    fake.slots["a"] = make_slot("a", tomorrow_at(9), version=2, booked=True)  # meanwhile

    context.set_offline(False)
    expect(page.locator("#conn-text")).to_have_text("Live", timeout=5000)
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked")
    assert fake.stream_requests[-1].get("lastEventId", "").startswith("s0:")
    fake.send_slot(make_slot("b", tomorrow_at(11)))
    expect(slot_button(page, "b")).to_have_attribute("data-state", "available")
    assert errors == []


GONE = "This instructor's schedule is no longer available"


@pytest.mark.parametrize("as_user", [None, STUDENT])
def test_a_stream_refused_for_an_unknown_instructor_is_not_asked_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str], as_user: str | None
) -> None:
    """An instructor deleted (or a stale link): the gateway answers the stream 404 before
    it opens, which EventSource hides like a 503. The booking-api's 404 for the schedule
    settles it: the page says so and stops asking for the schedule, instead of asking
    again for ever (a signed-in page opens its user's channel alone, once)."""
    fake, base_url = fake_edge
    fake.unknown_instructor = True
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=as_user)
    expect(page.locator("#conn-text")).to_have_text(GONE)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "gone")
    # the page's back-off (0.5 s, 1 s, 2 s, a random 50-100 % of each) would ask 3 times
    page.wait_for_timeout(3000)
    schedule = f"instructors/{INSTRUCTOR}/schedule"
    asked = [schedule in channels for channels in fake.stream_channels]
    assert asked == ([True, False] if as_user else [True]), fake.stream_channels
    assert len(fake.ticket_requests) == (2 if as_user else 0)
    expect(page.locator("#conn-text")).to_have_text(GONE)
    assert errors == []


def test_a_stream_ended_with_bye_instructor_unknown_is_not_asked_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """An open stream whose instructor is deleted ends with ``bye instructor-unknown``,
    which tells the client not to come back (the push-gateway README's ``bye`` reasons)."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors)
    expect(page.locator("#conn-text")).to_have_text("Live")

    fake.unknown_instructor = True
    fake.send_bye("instructor-unknown")
    expect(page.locator("#conn-text")).to_have_text(GONE)
    expect(slot_button(page, "a")).to_have_count(0)  # no slot left to book
    page.wait_for_timeout(3000)  # the stream's retry: 200 ms, then the back-off
    assert len(fake.stream_requests) == 1, fake.stream_requests
    expect(page.locator("#conn-text")).to_have_text(GONE)
    assert axe_violations(page) == []  # the page as it is left: a message, no grid
    assert errors == []


def booked_notification(n: int) -> NotificationData:
    """The fake student's booking confirmed, the ``n``-th such notification."""
    return NotificationData(
        id=f"6930c1e2000b{n:012d}",
        user_id=STUDENT,
        kind=NotificationKind.BOOKING_CREATED,
        message=f"Your booking number {n} is confirmed.",
        booking_id=f"fake-booking-{n}",
        slot_id="a",
        version=1,
        created_at=datetime.now(UTC),
    )


def wait_for_streams(fake: FakeEdge, count: int, seconds: float = 5.0) -> None:
    """Until ``count`` streams are open (or the time is up: the test's own assertion says
    what is missing)."""
    deadline = time.monotonic() + seconds
    while len(fake.queues) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("gone_by", ["bye", "refused"])
def test_a_signed_in_page_of_an_unknown_instructor_still_gets_its_notifications(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str], gone_by: str
) -> None:
    """A student on a deleted instructor's link (a stream ended with ``bye
    instructor-unknown``, or refused 404 before it opened) sees the schedule is no longer
    available, and still gets their own notifications live: the schedule's end must not
    end the user's channel, which shares the stream. The schedule is never asked again;
    the user's channel alone reconnects as any stream does."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    fake.unknown_instructor = gone_by == "refused"
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    if gone_by == "bye":
        expect(page.locator("#conn-text")).to_have_text("Live")
        fake.unknown_instructor = True
        fake.send_bye("instructor-unknown")
    expect(page.locator("#conn-text")).to_have_text(GONE)
    notes = page.locator("#notif-list li")

    wait_for_streams(fake, 1)
    fake.send_notification(booked_notification(1))
    expect(notes).to_have_count(1)
    expect(notes.first).to_contain_text("number 1")

    # The user's stream breaks: it comes back (a fresh ticket), still without the schedule.
    fake.drop_streams()
    page.wait_for_timeout(100)
    wait_for_streams(fake, 1)
    fake.send_notification(booked_notification(2))
    expect(notes).to_have_count(2)
    expect(notes.first).to_contain_text("number 2")
    expect(page.locator("#conn-text")).to_have_text(GONE)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "gone")
    expect(page.locator("#week")).to_contain_text("no longer available")
    schedule = f"instructors/{INSTRUCTOR}/schedule"
    assert [schedule in channels for channels in fake.stream_channels] == [True, False, False]
    assert fake.stream_channels[-1] == [f"users/{STUDENT}/notifications"]
    assert len(fake.ticket_requests) == 3  # one ticket per connection, never one used twice
    # the page as it is left, a message and the panel, once the new items have slid in (axe
    # measures contrast mid-fade otherwise)
    page.wait_for_function(
        "() => document.getAnimations().every((a) => a.effect.getTiming().iterations === Infinity)"
    )
    assert axe_violations(page) == []
    assert errors == []


def test_a_signed_in_page_streams_with_a_fresh_ticket_each_connect(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    first = fake.stream_requests[-1]
    assert "access_token" not in first
    assert first["ticket"]
    assert fake.ticket_requests == [f"Bearer {STUDENT_TOKEN}"]  # the token went in a header

    # The gateway goes away: the client closes the EventSource (the browser's own retry
    # would present the spent ticket again) and comes back with a new ticket and lastEventId.
    fake.slots["a"] = make_slot("a", tomorrow_at(9), version=2, booked=True)
    fake.drop_streams()
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked", timeout=15_000)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    resumed = fake.stream_requests[-1]
    assert resumed["ticket"] != first["ticket"]
    assert resumed.get("lastEventId", "").startswith("s0:")
    assert len(fake.ticket_requests) == 2
    # no request presented a used ticket (each would have been refused with 401)
    assert [r["ticket"] for r in fake.stream_requests] == [first["ticket"], resumed["ticket"]]
    assert errors == []


def test_a_page_whose_demo_token_nears_expiry_reads_the_reminted_one(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    soon = int(datetime.now(UTC).timestamp()) + 300  # 5 minutes left
    fresh = student_token(int(datetime.now(UTC).timestamp()) + 3600)
    fake.demo_tokens = [student_token(soon), fresh]
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    assert fake.demo_users_reads >= 2  # read again before the first ticket
    assert fake.ticket_requests == [f"Bearer {fresh}"]
    assert errors == []


def test_notifications_of_one_millisecond_are_listed_newest_first(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A booking's confirmation and its cancellation can share their ``createdAt``
    millisecond; the list then orders them by id (ids sort by creation), as the API does,
    not by the order they happened to reach the page."""
    fake, base_url = fake_edge
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    at = datetime.now(UTC).replace(microsecond=123_000)
    kinds = (NotificationKind.BOOKING_CREATED, NotificationKind.BOOKING_CANCELLED)
    for n, kind in enumerate(kinds):
        fake.send_notification(
            NotificationData(
                id=f"6930c1e2000a1{n}0000000000",
                user_id=STUDENT,
                kind=kind,
                message=f"Your booking was {kind.value.split('.')[1]}.",
                booking_id="fake-booking",
                slot_id="a",
                version=1,
                created_at=at,
            )
        )
    notes = page.locator("#notif-list li")
    expect(notes).to_have_count(2)
    expect(notes.first).to_have_class(re.compile(r"\bcancelled\b"))
    expect(notes.nth(1)).to_have_class(re.compile(r"\bcreated\b"))
    assert errors == []


def test_a_booking_the_stream_is_late_with_is_shown_from_the_api(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The page waits for the stream to bring its own booking; when that change is late
    (a loaded machine, a slow gateway) it asks the API after 3 s instead of showing the
    slot bookable again as if the booking had failed."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    slot_button(page, "a").click()  # the fake books it and streams nothing
    expect(slot_button(page, "a")).to_have_attribute("data-state", "mine", timeout=10_000)
    expect(slot_button(page, "a")).to_have_attribute("aria-busy", "false")
    assert errors == []


def test_a_late_http_answer_keeps_the_slots_the_stream_brought_after_it_was_asked(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The page asks the API for the schedule when the stream is late with its own booking.
    A slot created after the API read its answer, whose delta reaches the page before that
    answer, must stay: the answer is older news. What the answer lacks of what the page knew
    before asking — a slot from the first snapshot, or from a delta, deleted since without
    the page hearing of it — does go."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    fake.slots["gone"] = make_slot("gone", tomorrow_at(13))
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    fake.send_slot(make_slot("missed", tomorrow_at(15)))  # its deletion never streamed
    expect(slot_button(page, "missed")).to_have_attribute("data-state", "available")
    del fake.slots["gone"]

    fake.hold_schedule = threading.Event()
    slot_button(page, "a").click()  # the fake books it and streams nothing: asked after 3 s
    assert fake.schedule_read.wait(10)
    fake.send_slot(make_slot("new", tomorrow_at(11)))  # created after the answer was read
    expect(slot_button(page, "new")).to_have_attribute("data-state", "available")
    fake.hold_schedule.set()

    expect(slot_button(page, "a")).to_have_attribute("data-state", "mine")  # answer applied
    expect(slot_button(page, "gone")).to_have_count(0)
    expect(slot_button(page, "missed")).to_have_count(0)
    expect(slot_button(page, "new")).to_have_attribute("data-state", "available")
    assert errors == []


def test_the_streams_own_snapshot_removes_the_slots_it_lacks(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A fresh ``snapshot`` on the stream (a resume the gateway could not serve) replaces
    its window, even slots a delta brought: the stream sends every change after it."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    fake.send_slot(make_slot("deleted", tomorrow_at(11)))  # its deletion is missed
    expect(slot_button(page, "deleted")).to_have_attribute("data-state", "available")

    fake.drop_streams()  # the fake answers every reconnect with a fresh snapshot
    expect(slot_button(page, "deleted")).to_have_count(0)
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")
    assert len(fake.stream_requests) == 2
    assert errors == []


def test_only_the_newest_live_notification_slides_in(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """Each live notification slides in once: the list is drawn again for every new one,
    and the ones already shown must not move again (on main every notification that had
    come live slid in anew with each later one)."""
    fake, base_url = fake_edge
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    sliding = page.locator("#notif-list li.fresh")

    fake.send_notification(booked_notification(1))
    expect(sliding).to_have_count(1)
    fake.send_notification(booked_notification(2))
    expect(page.locator("#notif-list li")).to_have_count(2)
    expect(sliding).to_have_count(1)
    expect(sliding).to_contain_text("number 2")
    fake.send_notification(booked_notification(3))
    expect(page.locator("#notif-list li")).to_have_count(3)
    expect(sliding).to_have_count(1)
    expect(sliding).to_contain_text("number 3")
    assert errors == []


def test_notifications_whose_history_is_gone_are_loaded_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A resume the gateway cannot serve on the notifications channel (the missed events
    are no longer in its history) comes as ``resync`` ``history-unavailable``: the page
    must read the notifications again, or the ones it missed never show."""
    fake, base_url = fake_edge
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    expect(page.locator("#notif-list li")).to_have_count(0)

    fake.notifications.append(cancelled_notification())
    fake.send_resync(f"users/{STUDENT}/notifications", "history-unavailable")
    notes = page.locator("#notif-list li")
    expect(notes).to_have_count(1)
    expect(notes.first).to_contain_text("Your booking was cancelled.")
    assert errors == []


def test_a_reload_of_notifications_that_fails_keeps_the_ones_shown(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The page reads the user's notifications and bookings again after a ``resync``; when
    that read fails (the API down a moment) it must keep what it showed, not empty the
    list (on main: the notifications vanished until the next successful read)."""
    fake, base_url = fake_edge
    fake.notifications.append(cancelled_notification())
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    notes = page.locator("#notif-list li")
    expect(notes).to_have_count(1)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")

    fake.fail_mine = 2
    fake.send_resync(f"users/{STUDENT}/notifications", "history-unavailable")
    for _ in range(50):  # both reads made, and failed
        if fake.fail_mine == 0:
            break
        page.wait_for_timeout(100)
    assert fake.fail_mine == 0
    page.wait_for_timeout(300)
    expect(notes).to_have_count(1)
    assert errors == []


def test_notifications_marked_read_in_one_tab_are_read_in_the_user_s_other_tabs(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """Read flags are no schedule change, so no stream carries them: a second tab of the
    same user must learn them from the first, at once and without asking the API (on main
    its unread badge stayed until it was reloaded)."""
    fake, base_url = fake_edge
    fake.notifications += [cancelled_notification(), booked_notification(1)]
    errors: list[str] = []
    first = open_page(context, base_url, errors, as_user=STUDENT)
    second = open_page(context, base_url, errors, as_user=STUDENT)
    for page in (first, second):
        expect(page.locator("#notif-count")).to_have_text("2")
    asked: list[str] = []
    second.on("request", lambda request: asked.append(f"{request.method} {request.url}"))

    first.locator("#mark-read").click()
    expect(first.locator("#notif-count")).to_be_hidden()
    assert sorted(fake.marked_read) == sorted(n.id for n in fake.notifications)
    expect(second.locator("#notif-count")).to_be_hidden(timeout=2_000)
    expect(second.locator("#notif-list li.unread")).to_have_count(0)
    expect(second.locator("#notif-list li")).to_have_count(2)
    expect(second.locator("#mark-read")).to_be_hidden()
    assert [a for a in asked if "/api/" in a] == []
    assert errors == []


def test_marks_answered_after_another_user_signed_in_stay_out_of_that_user_s_list(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A student presses *Mark all read* and, while the marks are on their way, another
    user signs in on the same page (the user switcher, a shared device): the answers (the
    student's notifications) must not land in the new user's list, nor change their unread
    count (on main they were written into it). The marks themselves are carried out."""
    fake, base_url = fake_edge
    theirs = NotificationData(
        id="6930c1e2000c100000000000",
        user_id=INSTRUCTOR,
        kind=NotificationKind.BOOKING_CREATED,
        message="A student booked your slot.",
        booking_id="fake-booking-9",
        slot_id="a",
        version=1,
        created_at=datetime.now(UTC),
    )
    fake.notifications += [cancelled_notification(), booked_notification(1), theirs]
    students = sorted(n.id for n in fake.notifications if n.user_id == STUDENT)
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#notif-count")).to_have_text("2")

    fake.hold_read = threading.Event()
    page.locator("#mark-read").click()
    deadline = time.monotonic() + 5
    while len(fake.marked_read) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(fake.marked_read) == students
    page.locator("#user-select").select_option(INSTRUCTOR)
    notes = page.locator("#notif-list li")
    expect(notes).to_have_count(1)
    expect(page.locator("#notif-count")).to_have_text("1")

    fake.hold_read.set()
    deadline = time.monotonic() + 5
    while len(fake.answered) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [status for _, status in fake.answered] == ["200", "200"]
    page.wait_for_timeout(300)  # the page's turn to take the answers
    shown = notes.evaluate_all("(items) => items.map((li) => li.dataset.notificationId)")
    assert shown == [theirs.id]
    expect(page.locator("#notif-count")).to_have_text("1")
    expect(page.locator("#notif-list li.unread")).to_have_count(1)

    # the student's marks were carried out: signed in again, theirs show read
    page.locator("#user-select").select_option(STUDENT)
    expect(notes).to_have_count(2)
    expect(page.locator("#notif-count")).to_be_hidden()
    expect(page.locator("#notif-list li.unread")).to_have_count(0)
    assert errors == []


def test_a_booking_answered_after_another_user_signed_in_is_not_theirs(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A student books a slot and, while the answer is on its way, another user signs in
    on the same page: the booking (the student's) must not become the new user's *Yours*,
    nor be announced to them as booked."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")

    fake.hold_book = threading.Event()
    slot_button(page, "a").click()
    deadline = time.monotonic() + 5
    while not fake.bookings and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(fake.bookings) == ["fake-booking"]
    page.locator("#user-select").select_option(INSTRUCTOR)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked")

    fake.hold_book.set()
    deadline = time.monotonic() + 5
    while not fake.answered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.answered == [("POST /api/bookings", "201")]
    page.wait_for_timeout(300)  # the page's turn to take the answer
    said = page.locator("#message").text_content() or ""
    # the slot settles (read again 3 s on, as the stream brings no change) and is drawn
    expect(slot_button(page, "a")).to_have_attribute("aria-busy", "false", timeout=10_000)
    expect(slot_button(page, "a")).to_have_attribute("data-state", "booked")
    assert "Booked" not in said
    assert errors == []


def test_notifications_read_elsewhere_show_read_once_they_are_loaded_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A tab no message reached (another browser marked them read) shows them read once a
    ``resync`` has it read the list again: the read flag comes with a new version, which
    the page must not skip as one it already holds."""
    fake, base_url = fake_edge
    fake.notifications.append(cancelled_notification())
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#notif-count")).to_have_text("1")
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")

    note = fake.notifications[0]
    fake.notifications[0] = note.model_copy(update={"read": True, "version": note.version + 1})
    fake.send_resync(f"users/{STUDENT}/notifications", "history-unavailable")
    expect(page.locator("#notif-count")).to_be_hidden()
    expect(page.locator("#notif-list li.unread")).to_have_count(0)
    assert errors == []


WATCHED_CLIENT = """async (timeoutMs) => {
  const { subscribe } = await import("/slotstream-client.js");
  window.__statuses = [];
  window.__sub = subscribe(%r, {
    heartbeatTimeoutMs: timeoutMs,
    initialBackoffMs: 50,
    maxBackoffMs: 100,
    onStatus: ({ status }) => window.__statuses.push(status),
  });
}"""


def test_the_watchdog_reconnects_a_silent_stream_and_heartbeats_keep_it(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A stream that stays open but carries nothing (a frozen gateway) is closed and
    resumed after ``heartbeatTimeoutMs``; heartbeat events alone keep a quiet one open."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    page = context.new_page()
    # Any document of the fake's origin will do: only the client module runs, not the page.
    page.goto(f"{base_url}/slotstream-client.js")
    page.evaluate(WATCHED_CLIENT % INSTRUCTOR, 1500)
    page.wait_for_function("window.__statuses.includes('open')")
    assert len(fake.stream_requests) == 1

    for _ in range(10):  # 4 s of heartbeats only, every 0.4 s: no reconnect
        fake.send_heartbeat()
        page.wait_for_timeout(400)
    assert len(fake.stream_requests) == 1, page.evaluate("window.__statuses")

    # Silence: the watchdog fires after 1.5 s and the client resumes from the snapshot's id.
    page.wait_for_function("window.__statuses.filter((s) => s === 'open').length >= 2")
    assert len(fake.stream_requests) == 2
    assert fake.stream_requests[1].get("lastEventId") == "s0:1"
    page.evaluate("window.__sub.close()")


# A fake EventSource the scenario drives: ``open()``, ``emit(name, data, id)`` and ``drop()``
# (the stream ended, as after the gateway's ``bye``: the browser would retry by itself).
FAKE_EVENT_SOURCE = """
  const sources = [];
  class FakeEventSource {
    constructor() { this.readyState = 0; this.listeners = {}; sources.push(this); }
    addEventListener(name, listener) { (this.listeners[name] ??= []).push(listener); }
    close() { this.readyState = 2; }
    open() { this.readyState = 1; this.onopen(); }
    emit(name, data, id = "") {
      for (const listener of this.listeners[name] ?? []) {
        listener({ data: JSON.stringify(data), lastEventId: id });
      }
    }
    drop() { this.readyState = 0; this.onerror(); }
  }
  const nth = async (n) => {
    while (sources.length < n) await new Promise((resolve) => setTimeout(resolve, 1));
    return sources[n - 1];
  };
  const snapshot = {
    channel: "instructors/i1/schedule",
    schedule: { instructorId: "i1", from: "2030-01-01T00:00:00Z", to: "2030-01-08T00:00:00Z",
                version: 1, slots: [] },
  };
"""

SIGNED_IN = """
    token: "a.b.c",
    userId: "u1",
    fetch: async () => ({ ok: true, status: 201, json: async () => ({ ticket: "t" }) }),
    eventSourceFactory: (url) => new FakeEventSource(url),
"""

ACCEPTED_THEN_ENDED = (
    """async (healthyAfterMs) => {
  const { subscribe } = await import("/slotstream-client.js");
"""
    + FAKE_EVENT_SOURCE
    + """
  const waits = [];
  const sub = subscribe("i1", {
    initialBackoffMs: 10, maxBackoffMs: 100000, healthyAfterMs,
"""
    + SIGNED_IN
    + """
    onStatus: ({ retryInMs }) => { if (retryInMs != null) waits.push(retryInMs); },
  });
  let n = 0;
  // Six streams the gateway accepts and ends at once (no snapshot from the booking-api).
  for (; n < 6; n += 1) {
    const source = await nth(n + 1);
    source.open();
    source.emit("bye", { reason: "snapshot-unavailable" });
    source.drop();
  }
  const refused = waits.splice(0);
  // One that delivers its snapshot, then ends.
  let source = await nth(++n);
  source.open();
  source.emit("snapshot", snapshot, "s0:1");
  source.drop();
  const afterSnapshot = waits.splice(0);
  // Three quick failures, then one that stays up (heartbeats only) past healthyAfterMs.
  for (let i = 0; i < 3; i += 1) { source = await nth(++n); source.open(); source.drop(); }
  source = await nth(++n);
  source.open();
  await new Promise((resolve) => setTimeout(resolve, healthyAfterMs + 50));
  source.emit("heartbeat", {});
  source.drop();
  const afterQuietStream = waits.splice(0);
  sub.close();
  return { refused, afterSnapshot, afterQuietStream };
}"""
)


def test_a_signed_in_stream_that_keeps_ending_backs_off_longer_each_time(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A gateway that accepts the stream and ends it at once (``bye snapshot-unavailable``)
    must not be asked again every 250-500 ms forever (a ticket POST each time): the wait
    doubles until a stream delivers data, or stays up ``healthyAfterMs``."""
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    result = page.evaluate(ACCEPTED_THEN_ENDED, 300)
    # initialBackoffMs · 2^(n-1), a random 50-100 % of it
    refused = result["refused"]
    assert len(refused) == 6
    assert all(wait >= 10 * 2**i / 2 for i, wait in enumerate(refused)), refused
    assert result["afterSnapshot"][0] <= 10
    # after three quick failures the wait would be 40-80 ms; a stream that was up long
    # enough counts as healthy, so the count starts again
    assert result["afterQuietStream"][-1] <= 10


GATEWAY_SHUTDOWN = (
    """async (random) => {
  const { subscribe } = await import("/slotstream-client.js");
"""
    + FAKE_EVENT_SOURCE
    + """
  Math.random = () => random;
  let wait = null;
  const sub = subscribe("i1", {
"""
    + SIGNED_IN
    + """
    onStatus: ({ retryInMs }) => { wait ??= retryInMs; },
  });
  const source = await nth(1);
  source.open();
  source.emit("snapshot", snapshot, "s0:1");
  source.emit("bye", { reason: "shutdown" });
  source.drop();
  sub.close();
  return wait;
}"""
)


def test_signed_in_pages_come_back_from_a_gateway_shutdown_spread_out(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A gateway shutting down sends ``retry:`` 500 ms + a random share of 5 s so its pages
    do not all reconnect at once; a signed-in page reconnects by itself (tickets are single
    use) and must spread out the same way, not come back within 0.5 s."""
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    waits = [page.evaluate(GATEWAY_SHUTDOWN, random) for random in (0, 0.5, 0.999)]
    assert waits == pytest.approx([500, 3000, 5495], abs=1)


TICKET_REFUSED_FOR_NOW = (
    """async ([status, retryAfter]) => {
  const { subscribe } = await import("/slotstream-client.js");
"""
    + FAKE_EVENT_SOURCE
    + """
  const waits = [];
  let asked = 0;
  const sub = subscribe("i1", {
    initialBackoffMs: 10,
    token: "a.b.c",
    userId: "u1",
    eventSourceFactory: (url) => new FakeEventSource(url),
    fetch: async () => {
      asked += 1;
      return new Response(JSON.stringify({ title: "busy" }), {
        status, headers: { "Retry-After": retryAfter, "Content-Type": "application/problem+json" },
      });
    },
    onStatus: ({ retryInMs }) => { if (retryInMs != null) waits.push(retryInMs); },
  });
  await new Promise((resolve) => setTimeout(resolve, 300));
  sub.close();
  return { waits, asked };
}"""
)


@pytest.mark.parametrize(("status", "retry_after"), [(503, "5"), (429, "2")])
def test_a_ticket_request_answered_retry_after_waits_that_long(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str], status: int, retry_after: str
) -> None:
    """The booking-api answers ``POST /api/stream-tickets`` with ``503`` + ``Retry-After: 5``
    when its ticket store is full (``1`` while it starts), the edge with ``429`` +
    ``Retry-After: 2`` past its write rate. The page must wait that long, not ask again
    after its own 250-500 ms back-off (every page at once, against a server that is full)."""
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    result = page.evaluate(TICKET_REFUSED_FOR_NOW, [status, retry_after])
    assert result["asked"] == 1, result
    assert result["waits"][0] >= int(retry_after) * 1000, result


# The page's request timeouts (``AbortSignal.timeout``) ten times faster, so that a request
# the fake never answers is given up in a test's time; the client's own timers are not
# touched. ``window.__requestTimeouts`` keeps what the page asked for.
FAST_TIMEOUTS = """
const timeout = AbortSignal.timeout.bind(AbortSignal);
window.__requestTimeouts = [];
AbortSignal.timeout = (ms) => { window.__requestTimeouts.push(ms); return timeout(ms / 10); };
"""


def test_a_page_whose_first_reads_are_never_answered_still_opens(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The page reads the demo users and the instructors before anything else; a stuck
    proxy that never answers them must not leave it blank: it says what failed."""
    fake, base_url = fake_edge
    fake.stall |= {"GET /demo-users.json", "GET /api/instructors"}
    context.add_init_script(FAST_TIMEOUTS)
    errors: list[str] = []
    page = open_page(context, base_url, errors)
    expect(page.locator("#message")).to_contain_text(
        "Could not load instructors: The server did not answer in time."
    )
    expect(page.locator("#instructor-select")).to_contain_text("Instructors unavailable")
    assert sorted(fake.abandoned) == ["GET /api/instructors", "GET /demo-users.json"]
    assert max(page.evaluate("window.__requestTimeouts")) <= 10_000
    assert errors == []


def test_a_ticket_request_never_answered_is_given_up_and_asked_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A stream-ticket request that gets no answer (a stuck proxy) must not leave the page
    "Connecting…" for as long as the connection lives: it is given up, the page says it is
    disconnected and retrying, and the next ask opens the stream."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    fake.stall.add("POST /api/stream-tickets")
    context.add_init_script(FAST_TIMEOUTS)
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-text")).to_contain_text("Disconnected — retrying in")
    assert fake.abandoned[:1] == ["POST /api/stream-tickets"]

    fake.stall.clear()
    expect(page.locator("#conn-text")).to_have_text("Live", timeout=15_000)
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")
    assert errors == []


@pytest.mark.parametrize(
    ("action", "before", "after"), [("book", "available", "mine"), ("cancel", "mine", "available")]
)
def test_a_booking_never_answered_says_the_outcome_is_unknown_and_reads_it_again(
    context: BrowserContext,
    fake_edge: tuple[FakeEdge, str],
    action: str,
    before: str,
    after: str,
) -> None:
    """The API made the booking (or the cancellation), but the answer never came back. The
    page must not leave the slot "Saving…" forever, nor claim it failed: it says the outcome
    is unknown and reads the slot and the user's bookings again, which show what happened.
    A booking is asked again a few times first, with the same Idempotency-Key (a DELETE is
    not: it has no key)."""
    fake, base_url = fake_edge
    fake.slots["a"] = make_slot("a", tomorrow_at(9), booked=before == "mine")
    if before == "mine":
        fake.bookings["fake-booking"] = {
            "id": "fake-booking",
            "slotId": "a",
            "studentId": STUDENT,
            "status": "active",
        }
    fake.stall |= {"POST /api/bookings", "DELETE /api/bookings/fake-booking"}
    context.add_init_script(FAST_TIMEOUTS)
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    expect(slot_button(page, "a")).to_have_attribute("data-state", before)

    slot_button(page, "a").click()  # the fake acts on it; no answer, no delta on the stream
    message = page.locator("#message")
    expect(message).to_contain_text("The server did not answer in time", timeout=15_000)
    done = "booked" if action == "book" else "cancelled"
    expect(message).to_contain_text(f"may or may not be {done}")
    expect(message).not_to_contain_text("Could not")
    expect(slot_button(page, "a")).to_have_attribute("data-state", after)
    expect(slot_button(page, "a")).to_have_attribute("aria-busy", "false")
    if action == "book":
        assert 2 <= len(fake.abandoned) <= 4, fake.abandoned
        assert len({key for _, key in fake.keyed}) == 1, fake.keyed
    else:
        assert len(fake.abandoned) == 1, fake.abandoned
    assert len(fake.carried_out) == 1, fake.carried_out
    assert errors == []


def test_a_slot_added_without_an_answer_is_not_reported_as_failed(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The instructor's dialogs write too: a slot the API added whose answer never came
    back must not leave *Add slot* disabled forever; the dialog says the outcome is
    unknown and the schedule, read again, shows the slot."""
    fake, base_url = fake_edge
    fake.stall.add(f"POST /api/instructors/{INSTRUCTOR}/slots")
    context.add_init_script(FAST_TIMEOUTS)
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=INSTRUCTOR)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    page.locator("#add-slot").click()
    page.locator("#slot-submit").click()  # tomorrow at 09:00, one hour

    error = page.locator("#slot-error")
    expect(error).to_contain_text("The server did not answer in time", timeout=15_000)
    expect(error).to_contain_text("the slot may or may not have been added")
    expect(page.locator("#slot-submit")).to_be_enabled()
    expect(slot_button(page, "added")).to_have_attribute("data-state", "available")
    assert set(fake.abandoned) == {f"POST /api/instructors/{INSTRUCTOR}/slots"}
    assert fake.carried_out == [f"POST /api/instructors/{INSTRUCTOR}/slots"]  # then replayed
    assert errors == []


@pytest.fixture
def tokyo(browser: Browser) -> Iterator[BrowserContext]:
    """A context whose viewer is in Tokyo (GMT+9 all year): times in UTC show."""
    context = browser.new_context(locale="en-GB", timezone_id="Asia/Tokyo")
    context.set_default_timeout(10_000)
    try:
        yield context
    finally:
        context.close()


def test_an_overlap_with_a_slot_past_the_loaded_weeks_is_named_in_the_viewer_s_time(
    tokyo: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """An instructor in Tokyo adds a slot two months ahead onto one already there: the page
    holds only the schedule's four weeks, so it cannot look that slot up; the API's 409
    names it (``slotId``, ``slotStart``, ``slotEnd``) and the page must word it in the
    viewer's time, not show ``detail``'s id and UTC times."""
    fake, base_url = fake_edge
    day = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    far = make_slot("far", day + timedelta(days=60))
    fake.slots[far.id] = far
    errors: list[str] = []
    page = open_page(tokyo, base_url, errors, as_user=INSTRUCTOR)
    expect(page.locator("#conn-text")).to_have_text("Live")
    zone = ZoneInfo("Asia/Tokyo")
    start, end = far.start.astimezone(zone), far.end.astimezone(zone)

    page.locator("#add-slot").click()
    dialog = page.locator("#slot-dialog")
    dialog.get_by_label("Date").fill(f"{start:%Y-%m-%d}")
    dialog.get_by_label("Start").fill(f"{start + timedelta(minutes=30):%H:%M}")
    dialog.get_by_role("button", name="Add slot").click()
    alert = dialog.get_by_role("alert")
    when = rf"\w+ {start.day} \w+,? {start:%H:%M}\W+{end:%H:%M} GMT\+9"
    expect(alert).to_have_text(re.compile(rf"^It would overlap the slot of {when}\.$"))
    expect(alert).not_to_have_text(re.compile(r"\+00:00|far"))
    assert "added" not in fake.slots
    assert errors == []


BOOK = "POST /api/bookings"


def open_student_page(
    context: BrowserContext, fake: FakeEdge, base_url: str, errors: list[str]
) -> Page:
    """The student's page, live, with slot ``a`` free to book."""
    fake.slots["a"] = make_slot("a", tomorrow_at(9))
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")
    return page


def expect_booked(page: Page) -> None:
    """The page says the booking worked, as when its first answer arrives."""
    message = page.locator("#message")
    expect(message).to_have_text(re.compile(r"^Booked \w+ \d+ \w+ 09:00\.$"), timeout=15_000)
    expect(message).to_have_attribute("data-kind", "success")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "mine")
    expect(slot_button(page, "a")).to_contain_text("Yours")


def keys_sent(fake: FakeEdge) -> list[str]:
    return [key for request, key in fake.keyed if request == BOOK]


def test_a_booking_whose_answer_is_lost_is_asked_again_with_the_same_key(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The API made the booking; the connection broke before its answer came back (a
    network error, not a timeout). The page asks again with the same Idempotency-Key, gets
    the first answer replayed, and says "Booked" with the slot as *Yours* (on main: "The
    server could not be reached", nothing read again, and the live stream then showed the
    slot taken by someone else)."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["drop"]
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    slot_button(page, "a").click()
    expect_booked(page)
    first, *again = keys_sent(fake)
    assert again == [first], fake.keyed
    assert fake.carried_out.count(BOOK) == 1  # one booking, the retry replayed it
    assert fake.answered == [(BOOK, "201 replayed")]
    assert errors == []


def test_a_booking_refused_for_the_quota_says_so_not_that_the_slot_was_taken(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """A 409 is not always a lost race: the booking-api's ``quota-exceeded`` (the student
    holds the most active bookings allowed) must reach the user as it is, with the slot
    still free to others (on main: "Sorry — … was just taken by someone else")."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["quota-exceeded"]
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    slot_button(page, "a").click()
    message = page.locator("#message")
    expect(message).to_contain_text("you already hold 20 active bookings")
    expect(message).not_to_contain_text("taken by someone else")
    expect(message).to_have_attribute("data-kind", "error")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")
    assert fake.carried_out.count(BOOK) == 0
    assert errors == []


def test_a_retry_that_finds_the_first_booking_still_running_waits_for_its_answer(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The answer is lost while the API is still at work: the retry gets 409
    ``idempotency-in-progress``. That is no lost race ("just taken by someone else"): the
    page waits and asks again until the first answer is replayed."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["slow-drop"]
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    slot_button(page, "a").click()
    expect_booked(page)
    answers = [answer for _, answer in fake.answered]
    assert answers[-1] == "201 replayed", answers
    assert len(answers) >= 2, answers
    assert set(answers[:-1]) == {"409"}, answers  # the first still at work
    assert len(set(keys_sent(fake))) == 1, fake.keyed
    assert fake.carried_out.count(BOOK) == 1
    expect(page.locator("#message")).not_to_contain_text("taken by someone else")
    assert errors == []


def test_a_retry_the_edge_refuses_waits_its_retry_after(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """After a lost answer, the edge's 429 (past its write rate) to the retry says nothing
    of the booking the first try may have made: the page waits the ``Retry-After`` (2 s),
    not its own shorter back-off, and asks again with the same key."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["drop", "rate-limited"]
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    clicked = time.monotonic()
    slot_button(page, "a").click()
    expect_booked(page)
    assert time.monotonic() - clicked >= 2  # the back-off alone: 1.5 s at most
    assert fake.answered == [(BOOK, "429"), (BOOK, "201 replayed")]
    assert len(set(keys_sent(fake))) == 1, fake.keyed
    assert fake.carried_out.count(BOOK) == 1
    assert errors == []


def test_a_booking_no_try_of_which_is_answered_says_the_outcome_is_unknown(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """Every try's connection breaks before the answer: the page must not say the server
    could not be reached (the booking may have been made, and was), but that the outcome is
    unknown, and read the schedule and the user's bookings again, which show it *Yours*."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["drop"] * 10
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    slot_button(page, "a").click()
    message = page.locator("#message")
    expect(message).to_contain_text("may or may not be booked", timeout=15_000)
    expect(message).to_contain_text("The schedule now shows what the server has")
    expect(message).not_to_contain_text("could not be reached")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "mine")
    expect(slot_button(page, "a")).to_have_attribute("aria-busy", "false")
    keys = keys_sent(fake)
    assert 2 <= len(keys) <= 4, fake.keyed  # a few tries, not forever
    assert len(set(keys)) == 1, fake.keyed
    assert fake.carried_out.count(BOOK) == 1
    assert errors == []


def test_a_booking_the_api_timed_out_is_asked_again_with_the_same_key(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The booking-api answers a request that ran past its time limit ``503``
    ``request-timeout`` ("retry with the same Idempotency-Key") and drops the key's record.
    The user cannot do that (a click makes a new key); the page must, and say "Booked"
    when the retry books the slot (on main: "Could not book …: the request took longer")."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["api-timeout"]
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    slot_button(page, "a").click()
    expect_booked(page)
    first, *again = keys_sent(fake)
    assert again == [first], fake.keyed
    assert fake.answered == [(BOOK, "503"), (BOOK, "201")]
    assert fake.carried_out.count(BOOK) == 1
    assert errors == []


def test_a_booking_the_edge_answered_503_after_it_was_made_is_asked_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The API made the booking, but the edge had stopped waiting for its answer and sent
    its own ``503`` (``about:blank``, ``Retry-After: 2``). That says nothing of the booking:
    the page waits the ``Retry-After``, asks again with the same key, gets the booking
    replayed, and says "Booked" (on main: "Could not book …: No server could take the
    request right now", while the slot was the student's)."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = ["edge-timeout"]
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    clicked = time.monotonic()
    slot_button(page, "a").click()
    expect_booked(page)
    assert time.monotonic() - clicked >= 2  # the back-off alone: 0.5 s at most
    first, *again = keys_sent(fake)
    assert again == [first], fake.keyed
    assert fake.answered == [(BOOK, "503"), (BOOK, "201 replayed")]
    assert fake.carried_out.count(BOOK) == 1
    assert errors == []


@pytest.mark.parametrize(
    ("upset", "says", "state"),
    [
        # nothing done: a plain failure, and when to try again
        ("starting", "Could not book", "available"),
        # done or not, the answers do not say: read again, the slot is not the student's
        ("api-timeout", "The service was unavailable", "available"),
        # done, each retry's answer lost at the edge: read again, the slot is *Yours*
        ("edge-timeout", "The service was unavailable", "mine"),
    ],
)
def test_a_booking_every_try_of_which_is_answered_503_says_what_is_known(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str], upset: str, says: str, state: str
) -> None:
    """Every try gets a ``503``. Only the booking-api's own "starting" 503 says nothing was
    done: then the booking failed, and the page says to try again later, never "may or may
    not". Any other 503 leaves the outcome unknown: "may or may not be booked", with the
    schedule and the user's bookings read again (on main, each was "Could not book …"
    after one try)."""
    fake, base_url = fake_edge
    fake.upsets[BOOK] = [upset] * 10
    errors: list[str] = []
    page = open_student_page(context, fake, base_url, errors)

    slot_button(page, "a").click()
    message = page.locator("#message")
    expect(message).to_contain_text(says, timeout=15_000)
    if upset == "starting":
        expect(message).to_have_text(
            re.compile(r"^Could not book \w+ \d+ \w+ 09:00: .*try again in a minute\.$")
        )
    else:
        expect(message).to_contain_text("may or may not be booked")
        expect(message).to_contain_text("The schedule now shows what the server has")
        expect(message).not_to_contain_text("Could not")
    expect(slot_button(page, "a")).to_have_attribute("data-state", state)
    expect(slot_button(page, "a")).to_have_attribute("aria-busy", "false")
    keys = keys_sent(fake)
    assert 2 <= len(keys) <= 4, fake.keyed  # a few tries, not forever
    assert len(set(keys)) == 1, fake.keyed
    assert fake.carried_out.count(BOOK) == (state == "mine")
    assert errors == []


def test_a_cancel_the_edge_answered_503_after_it_was_done_is_not_reported_as_failed(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The API cancelled the booking, but the edge had stopped waiting and sent its own
    ``503``. A ``DELETE`` has no key and is not sent again; the page must not say the
    cancel failed: "may or may not be cancelled", and the slot read again shows it free
    (on main: "Could not cancel …", the slot still *Yours* until the stream caught up)."""
    fake, base_url = fake_edge
    cancel = "DELETE /api/bookings/fake-booking"
    fake.slots["a"] = make_slot("a", tomorrow_at(9), booked=True)
    fake.bookings["fake-booking"] = {
        "id": "fake-booking",
        "slotId": "a",
        "studentId": STUDENT,
        "status": "active",
    }
    fake.upsets[cancel] = ["edge-timeout"]
    errors: list[str] = []
    page = open_page(context, base_url, errors, as_user=STUDENT)
    expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "mine")

    slot_button(page, "a").click()  # the fake cancels it; no delta on the stream
    message = page.locator("#message")
    expect(message).to_contain_text("may or may not be cancelled", timeout=15_000)
    expect(message).to_contain_text("The schedule now shows what the server has")
    expect(message).not_to_contain_text("Could not")
    expect(slot_button(page, "a")).to_have_attribute("data-state", "available")
    expect(slot_button(page, "a")).to_have_attribute("aria-busy", "false")
    assert fake.answered == [(cancel, "503")]
    assert fake.carried_out == [cancel]
    assert errors == []


TICKET_NEVER_ANSWERED = """async (requestTimeoutMs) => {
  const { subscribe } = await import("/slotstream-client.js");
  window.__statuses = [];
  window.__sub = subscribe(%r, {
    token: "a.b.c",
    userId: "u1",
    requestTimeoutMs,
    initialBackoffMs: 10,
    maxBackoffMs: 20,
    onStatus: ({ status }) => window.__statuses.push(status),
  });
}"""


def test_the_client_gives_up_a_ticket_request_after_request_timeout_ms(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """``requestTimeoutMs`` bounds the ticket request; the client then asks again after its
    back-off. ``close()`` gives up the request in flight (a browser has six connections per
    host over HTTP/1.1: requests no one waits for must not hold them)."""
    fake, base_url = fake_edge
    fake.stall.add("POST /api/stream-tickets")
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    page.evaluate(TICKET_NEVER_ANSWERED % INSTRUCTOR, 300)
    page.wait_for_function("window.__statuses.filter((s) => s === 'disconnected').length >= 2")
    assert 2 <= len(fake.stalled) <= 3, fake.stalled
    page.evaluate("window.__sub.close()")
    page.wait_for_timeout(200)
    assert len(fake.abandoned) == len(fake.stalled), (fake.stalled, fake.abandoned)
    page.wait_for_timeout(500)  # nothing asks again once closed
    assert len(fake.abandoned) == len(fake.stalled)


HANDSHAKE_NEVER_ANSWERED = """async () => {
  const { subscribe } = await import("/slotstream-client.js");
  const sockets = [];
  const statuses = [];
  const sub = subscribe("i1", {
    transport: "websocket",
    heartbeatTimeoutMs: 300,
    initialBackoffMs: 10,
    maxBackoffMs: 20,
    // a socket whose opening handshake is never answered: neither open nor closed
    webSocketFactory: (url) => {
      const socket = { url, closed: null, send() {}, close(code) { this.closed = code; } };
      sockets.push(socket);
      return socket;
    },
    onStatus: ({ status }) => statuses.push(status),
  });
  await new Promise((resolve) => setTimeout(resolve, 1000));
  sub.close();
  return { opened: sockets.length, closed: sockets.map((s) => s.closed), statuses };
}"""


def test_a_websocket_whose_handshake_is_never_answered_is_opened_again(
    context: BrowserContext, fake_edge: tuple[FakeEdge, str]
) -> None:
    """The watchdog must also cover a socket that never opens (a proxy that holds the
    upgrade request): with no frame for ``heartbeatTimeoutMs`` it is given up and opened
    again, as an SSE stream is (whose watchdog starts when the request is made)."""
    _, base_url = fake_edge
    page = context.new_page()
    page.goto(f"{base_url}/slotstream-client.js")
    result = page.evaluate(HANDSHAKE_NEVER_ANSWERED)
    assert 2 <= result["opened"] <= 4, result
    assert all(code is not None for code in result["closed"]), result
    assert "disconnected" in result["statuses"], result
