"""The page for instructors managing their schedule, watched live by a guest; and a page
that reads well: no truncated slot text at three widths, zero serious accessibility
violations (axe-core), "Sign in to book" for guests, notifications that name people."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from scripts.devstack import REPO, DemoUser, DevStack
from tests.e2e.conftest import save_screenshot

pytestmark = pytest.mark.e2e

AXE = REPO / ".venv" / "node" / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (1280, 768, 390)
LIVE_MS = 1_000  # every change must reach the other page within a second
Opener = Callable[..., Page]

# Elements whose text must never be cut: the slot buttons, their parts and the tools.
TRUNCATED = """
() => [...document.querySelectorAll(
  "button.slot, .slot-time, .slot-label, .slot-action, .tool-button, .notification p"
)].filter((el) => el.scrollWidth > el.clientWidth)
  .map((el) => `${el.className}: "${el.textContent}" ${el.scrollWidth}>${el.clientWidth}`)
"""


@pytest.fixture
def opener(browser: Browser) -> Iterator[Callable[..., Opener]]:
    """``opener(width)(stack, user, instructor_id)`` opens the page in a fresh context of
    that width (en-GB, Europe/London unless told); no JavaScript errors allowed."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def at_width(width: int, locale: str = "en-GB", timezone: str = "Europe/London") -> Opener:
        context = browser.new_context(
            viewport={"width": width, "height": 900},
            locale=locale,
            timezone_id=timezone,
            is_mobile=width < 500,
            has_touch=width < 500,
            # axe-core is injected as a script the page's Content-Security-Policy (rightly)
            # does not allow; the policy itself is tested in tests/security.
            bypass_csp=True,
        )
        context.set_default_timeout(10_000)
        contexts.append(context)

        def open_page(
            stack: DevStack, user: DemoUser | None, instructor_id: str, transport: str = "sse"
        ) -> Page:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            query = f"instructor={instructor_id}&transport={transport}"
            query += f"&as={user.id}" if user else ""
            page.goto(f"{stack.base_url}/?{query}")
            expect(page.locator("body")).to_have_attribute("data-ready", "true")
            expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
            expect(page.locator("button.slot").first).to_be_visible()
            return page

        return open_page

    yield at_width
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def role(stack: DevStack, name: str) -> list[DemoUser]:
    return [u for u in stack.users if u.role == name]


def slot_at(page: Page, text: str) -> Locator:
    return page.locator("button.slot", has_text=text)


def week_of(page: Page, monday: date) -> None:
    """Show the week starting ``monday`` (weeks are Monday to Sunday)."""
    page.locator("#this-week").click()
    for _ in range((monday - date.today() + timedelta(days=date.today().weekday())).days // 7):
        page.locator("#next-week").click()
    expect(page.locator("#week-label")).to_contain_text(str(monday.day))


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_an_instructor_edits_the_schedule_and_a_guest_sees_it_live(
    stack: DevStack, opener: Callable[[int], Opener], output_dir: Path, transport: str
) -> None:
    teacher = role(stack, "instructor")[2]
    open_page = opener(1280)
    own = open_page(stack, teacher, teacher.id, transport)
    guest = open_page(stack, None, teacher.id, transport)
    # A week the seed leaves empty (it fills the next seven days), one per transport, all
    # inside the snapshot window (the next 28 days).
    weeks_ahead = {"sse": 2, "websocket": 3}[transport]
    monday = date.today() - timedelta(days=date.today().weekday() - 7 * weeks_ahead)
    week_of(guest, monday)
    expect(own.locator("#manage")).to_be_visible()
    expect(guest.locator("#manage")).to_be_hidden()

    # Add one slot: date, start, length.
    own.get_by_role("button", name="Add slot").click()
    dialog = own.locator("#slot-dialog")
    dialog.get_by_label("Date").fill(monday.isoformat())
    dialog.get_by_label("Start").fill("06:00")
    dialog.get_by_label("Length").select_option("30")
    dialog.get_by_role("button", name="Add slot").click()
    expect(slot_at(guest, "06:00")).to_have_count(1, timeout=LIVE_MS)
    expect(slot_at(guest, "06:00")).to_contain_text("06:30")
    expect(dialog).to_be_hidden()

    # Add a week of slots: Monday to Friday at 07:00 and 08:00, 30 minutes each.
    own.get_by_role("button", name="Add a week of slots").click()
    week = own.locator("#week-dialog")
    week.get_by_label("Week starting").fill(monday.isoformat())
    week.get_by_label("Start times").fill("07:00, 08:00")
    week.get_by_label("Length").select_option("30")
    week.get_by_role("button", name="Add slots").click()
    expect(slot_at(guest, "07:00")).to_have_count(5, timeout=LIVE_MS)
    expect(slot_at(guest, "08:00")).to_have_count(5, timeout=LIVE_MS)
    expect(own.get_by_role("alert")).to_contain_text("Added 10 slots")

    # Move the single slot to 05:00 (its length stays).
    moving = slot_at(own, "06:00")
    slot_id = moving.get_attribute("data-slot-id")
    own.locator(f'[data-for="{slot_id}"][data-tool="move"]').click()
    dialog.get_by_label("Start").fill("05:00")
    dialog.get_by_role("button", name="Move slot").click()
    moved = guest.locator(f'button.slot[data-slot-id="{slot_id}"]')
    expect(moved).to_contain_text("05:00", timeout=LIVE_MS)
    expect(moved).to_contain_text("05:30")
    expect(slot_at(guest, "06:00")).to_have_count(0)

    # Remove one of the week's slots.
    removed = slot_at(own, "08:00").first.get_attribute("data-slot-id")
    own.locator(f'[data-for="{removed}"][data-tool="remove"]').click()
    expect(guest.locator(f'button.slot[data-slot-id="{removed}"]')).to_have_count(
        0, timeout=LIVE_MS
    )
    expect(slot_at(guest, "08:00")).to_have_count(4)
    save_screenshot(own, output_dir, "instructor-edited")
    save_screenshot(guest, output_dir, "guest-watching-edits")


def test_a_move_from_a_stale_version_is_refused_clearly(
    stack: DevStack, opener: Callable[[int], Opener]
) -> None:
    teacher = role(stack, "instructor")[2]
    own = opener(1280)(stack, teacher, teacher.id)
    first = own.locator("button.slot.available").first
    slot_id = first.get_attribute("data-slot-id")
    own.locator(f'[data-for="{slot_id}"][data-tool="move"]').click()
    # The slot changes under the open form (another tab of the same instructor moves it).
    status = own.evaluate(
        """async ([iid, id, token]) => {
          const schedule = await (await fetch(`/api/instructors/${iid}/schedule`)).json();
          const { start } = schedule.slots.find((s) => s.id === id);
          const r = await fetch(`/api/slots/${id}`, {method: "PATCH",
            headers: {"Content-Type": "application/json", "If-Match": "*",
                      Authorization: `Bearer ${token}`},
            body: JSON.stringify({ start })});
          return r.status;
        }""",
        [teacher.id, slot_id, teacher.token],
    )
    assert status == 200
    dialog = own.locator("#slot-dialog")
    dialog.get_by_label("Start").fill("06:00")
    dialog.get_by_role("button", name="Move slot").click()
    expect(dialog.get_by_role("alert")).to_contain_text("changed in the meantime")


def test_an_overlap_names_the_other_slot_in_the_viewer_s_time(
    stack: DevStack, opener: Callable[..., Opener]
) -> None:
    """Moving or adding a slot onto another one says which slot is in the way as the page
    shows it (the viewer's time), not as the API's detail has it: an id and UTC times
    ("overlaps slot 6b10… (2026-12-03T15:00:00+00:00 to …)") that match nothing on a page
    in Tokyo."""
    teacher = role(stack, "instructor")[1]
    tokyo = ZoneInfo("Asia/Tokyo")
    own = opener(1280, timezone="Asia/Tokyo")(stack, teacher, teacher.id)
    free = own.locator("button.slot.available")
    moving, target = (free.nth(i).get_attribute("data-slot-id") for i in (0, 1))
    schedule = httpx.get(f"{stack.base_url}/api/instructors/{teacher.id}/schedule").json()
    start = next(
        datetime.fromisoformat(s["start"]).astimezone(tokyo)
        for s in schedule["slots"]
        if s["id"] == target
    )
    in_the_way = re.compile(f"overlap the slot of .* {start.day} .*{start:%H:%M}")
    raw = re.compile(r"\+00:00|[0-9a-f]{24}")

    own.locator(f'[data-for="{moving}"][data-tool="move"]').click()
    dialog = own.locator("#slot-dialog")
    dialog.get_by_label("Date").fill(f"{start:%Y-%m-%d}")
    dialog.get_by_label("Start").fill(f"{start:%H:%M}")
    dialog.get_by_role("button", name="Move slot").click()
    expect(dialog.get_by_role("alert")).to_have_text(in_the_way)
    expect(dialog.get_by_role("alert")).not_to_have_text(raw)
    dialog.get_by_role("button", name="Close").click()

    own.get_by_role("button", name="Add a week of slots").click()
    week = own.locator("#week-dialog")
    week.get_by_label("Week starting").fill(f"{start:%Y-%m-%d}")
    for box in week.get_by_role("checkbox").all():
        box.set_checked(box.get_attribute("value") == f"{start:%w}")
    week.get_by_label("Start times").fill(f"{start:%H:%M}")
    week.get_by_role("button", name="Add slots").click()
    expect(week.get_by_role("alert")).to_have_text(in_the_way)
    expect(week.get_by_role("alert")).not_to_have_text(raw)

    # Two start times of the week closer than the length: named as typed, not in UTC.
    week.get_by_label("Start times").fill("09:00, 09:30")
    week.get_by_label("Length").select_option("60")
    week.get_by_role("button", name="Add slots").click()
    expect(week.get_by_role("alert")).to_contain_text("09:00 and 09:30")
    expect(week.get_by_role("alert")).not_to_have_text(raw)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_page_reads_well_at_every_width(
    stack: DevStack, opener: Callable[[int], Opener], output_dir: Path, width: int
) -> None:
    """No slot text is cut (issue 13: "09:00 AM–10:0…", "Yours" running into "CANCEL"),
    guests see "Sign in to book", notifications name the instructor and the time, and
    axe-core finds no serious or critical violation."""
    teacher = role(stack, "instructor")[0]
    ada = role(stack, "student")[0]
    open_page = opener(width)
    student = open_page(stack, ada, teacher.id)
    slot_id = student.locator('button.slot[data-action="book"]').first.get_attribute("data-slot-id")
    assert slot_id
    # Enough notifications to make their list scroll (it must then be keyboard-reachable).
    for _ in range(4):
        made = httpx.post(
            f"{stack.base_url}/api/bookings", json={"slotId": slot_id}, headers=bearer(ada)
        )
        assert made.status_code == 201, made.text
        gone = httpx.delete(
            f"{stack.base_url}/api/bookings/{made.json()['id']}", headers=bearer(ada)
        )
        assert gone.status_code == 200, gone.text
    booked = student.locator(f'button.slot[data-slot-id="{slot_id}"]')
    expect(booked).to_have_attribute("data-state", "available")
    booked.click()
    expect(booked).to_have_attribute("data-state", "mine")
    expect(booked).to_contain_text("Yours")
    note = student.locator("#notif-list li").first
    expect(note).to_contain_text(f"You booked {teacher.name} on ")
    expect(note).not_to_contain_text(slot_id)
    expect(note).not_to_contain_text("UTC")
    own = open_page(stack, teacher, teacher.id)
    expect(own.locator(f'button.slot[data-slot-id="{slot_id}"]')).to_contain_text(
        f"Booked by {ada.name}"
    )
    guest = open_page(stack, None, teacher.id)
    expect(guest.locator('button.slot[data-action="book"]')).to_have_count(0)
    expect(guest.locator('button.slot[data-action="signin"]').first).to_contain_text(
        "Sign in to book"
    )
    try:
        for name, page in (("student", student), ("instructor", own), ("guest", guest)):
            assert page.evaluate(TRUNCATED) == [], f"{name} page at {width}px"
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            violations = axe_violations(page)
            assert violations == [], f"{name} page at {width}px: {json.dumps(violations)}"
            save_screenshot(page, output_dir, f"readable-{name}-{width}")
    finally:
        booked.click()
        expect(booked).to_have_attribute("data-state", "available")


def test_notifications_follow_the_viewers_language_and_time_zone(
    stack: DevStack, opener: Callable[..., Opener]
) -> None:
    """A German viewer in Berlin reads their notifications in German with Berlin times
    (issue 13: "notifications in the viewer's language and time zone"), and the panel says
    which language it is in; the same student in en-GB and London reads English."""
    teacher = role(stack, "instructor")[1]
    student = role(stack, "student")[-1]
    german = opener(1280, locale="de-DE", timezone="Europe/Berlin")(stack, student, teacher.id)
    slot = german.locator('button.slot[data-action="book"]').first
    slot_id = slot.get_attribute("data-slot-id")
    slot.click()
    booked = german.locator(f'button.slot[data-slot-id="{slot_id}"]')
    expect(booked).to_have_attribute("data-state", "mine")
    try:
        mine = httpx.get(f"{stack.base_url}/api/users/me/notifications", headers=bearer(student))
        start = datetime.fromisoformat(max(mine.json(), key=lambda n: n["createdAt"])["slotStart"])
        berlin = f"{start.astimezone(ZoneInfo('Europe/Berlin')):%H:%M}"
        london = f"{start.astimezone(ZoneInfo('Europe/London')):%H:%M}"
        made = german.locator("#notif-list li").first
        expect(made.locator("strong")).to_have_text("Neue Buchung")
        expect(made).to_contain_text(f"Sie haben einen Termin bei {teacher.name} am ")
        expect(made).to_contain_text(berlin)
        expect(made.locator("p")).to_contain_text(re.compile(r"MES?Z gebucht\.$"))
        expect(german.locator("#notifications")).to_have_attribute("lang", "de")
        expect(german.locator("#notif-title")).to_contain_text("Benachrichtigungen")
        english = opener(1280)(stack, student, teacher.id)
        expect(english.locator("#notifications")).to_have_attribute("lang", "en")
    finally:  # the instructor cancels, with a reason, so that the slot is free again
        for booking in httpx.get(
            f"{stack.base_url}/api/users/me/bookings", headers=bearer(student)
        ).json():
            if booking["slotId"] == slot_id and booking["status"] == "active":
                gone = httpx.request(
                    "DELETE",
                    f"{stack.base_url}/api/bookings/{booking['id']}",
                    json={"reason": "Krank"},
                    headers=bearer(teacher),
                )
                assert gone.status_code == 200, gone.text
    cancelled = german.locator("#notif-list li").first
    expect(cancelled.locator("strong")).to_have_text("Buchung storniert")
    expect(cancelled.locator("p")).to_have_text(
        re.compile(
            f"^Ihre Buchung bei {teacher.name} am .*{berlin}.* wurde von {teacher.name} "
            "storniert. Grund: „Krank“$"
        )
    )
    in_english = english.locator("#notif-list li").first
    expect(in_english.locator("strong")).to_have_text("Booking cancelled")
    expect(in_english.locator("p")).to_have_text(
        re.compile(
            f"^Your booking with {teacher.name} on .*{london}.* was cancelled by {teacher.name}"
            ". Reason: “Krank”$"
        )
    )
    expect(booked).to_have_attribute("data-state", "available")


def bearer(user: DemoUser) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.token}"}


def axe_violations(page: Page) -> list[dict[str, object]]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not AXE.exists():
        pytest.fail(f"axe-core is missing at {AXE}: run `make axe` (make test does)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => {
          const { violations } = await axe.run(document, { resultTypes: ["violations"] });
          return violations
            .filter((v) => v.impact === "serious" || v.impact === "critical")
            .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                           nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
        }"""
    )
    assert isinstance(result, list)
    return result
