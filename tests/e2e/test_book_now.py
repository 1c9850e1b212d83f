"""The Book-Now page in a real browser against the demo stack (nginx, two gateways, …)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect

from scripts.devstack import REPO, DemoUser, DevStack
from tests.e2e.conftest import save_screenshot

pytestmark = pytest.mark.e2e

# Records every state of the connection dot, so a test can tell that a page really went
# through "reconnecting"/"disconnected" even when it recovers quickly.
STATUS_RECORDER = """
window.__statuses = [];
new MutationObserver(() => {
  const dot = document.getElementById("conn-dot");
  if (dot) window.__statuses.push(dot.dataset.status);
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-status"] });
"""


@pytest.fixture
def open_page(
    context: BrowserContext, stack: DevStack
) -> Iterator[Callable[[str, DemoUser | None], Page]]:
    """Open the page for an instructor (as a demo user, or a guest); no JS errors allowed."""
    errors: list[str] = []

    def opener(instructor_id: str, user: DemoUser | None = None, transport: str = "sse") -> Page:
        page = context.new_page()
        page.add_init_script(STATUS_RECORDER)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        query = f"instructor={instructor_id}" + (f"&as={user.id}" if user else "")
        query += f"&transport={transport}"
        page.goto(f"{stack.base_url}/?{query}")
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
        expect(page.locator("button.slot").first).to_be_visible()
        # Set by this test once, after load (not by an init script, which a reload re-runs):
        # still there later means the page was not reloaded in between.
        page.evaluate("() => { window.__loadId = crypto.randomUUID(); }")
        return page

    yield opener
    assert errors == [], f"JavaScript errors on the page: {errors}"


def slot(page: Page, slot_id: str) -> Locator:
    return page.locator(f'button.slot[data-slot-id="{slot_id}"]')


def first_bookable(page: Page) -> str:
    """The id of the first slot the page offers to book (in the week it shows)."""
    button = page.locator('button.slot[data-action="book"]').first
    expect(button).to_be_visible()
    slot_id = button.get_attribute("data-slot-id")
    assert slot_id
    return slot_id


def instructors(stack: DevStack) -> list[DemoUser]:
    return [u for u in stack.users if u.role == "instructor"]


def students(stack: DevStack) -> list[DemoUser]:
    return [u for u in stack.users if u.role == "student"]


def api_book(stack: DevStack, user: DemoUser, slot_id: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/api/bookings",
        json={"slotId": slot_id},
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=10,
    )


def api_cancel(stack: DevStack, user: DemoUser, booking_id: str) -> None:
    response = httpx.delete(
        f"{stack.base_url}/api/bookings/{booking_id}",
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("transport", ["sse", "websocket"])
def test_a_booking_in_one_page_shows_in_the_other_within_a_second(
    stack: DevStack, open_page: Callable[..., Page], output_dir: Path, transport: str
) -> None:
    teacher = instructors(stack)[0]
    ada, ben = students(stack)[:2]
    booker = open_page(teacher.id, ada, transport)
    watcher = open_page(teacher.id, ben, transport)
    slot_id = first_bookable(booker)
    expect(slot(watcher, slot_id)).to_have_attribute("data-state", "available")
    # Presence is counted across both gateways (the pages may be on different ones).
    expect(watcher.locator("#viewers")).to_have_text("2 viewing", timeout=10_000)

    slot(booker, slot_id).click()
    expect(slot(watcher, slot_id)).to_have_attribute("data-state", "booked", timeout=1_000)
    expect(slot(booker, slot_id)).to_have_attribute("data-state", "mine")
    expect(slot(watcher, slot_id)).not_to_have_attribute("data-action", "cancel")
    save_screenshot(booker, output_dir, "same-instructor-booked-booker")

    slot(booker, slot_id).click()  # "Yours · Cancel"
    expect(slot(watcher, slot_id)).to_have_attribute("data-state", "available", timeout=1_000)
    expect(slot(booker, slot_id)).to_have_attribute("data-state", "available")
    save_screenshot(booker, output_dir, "same-instructor-final-booker")
    save_screenshot(watcher, output_dir, "same-instructor-final-watcher")


def test_two_instructors_are_isolated(
    stack: DevStack, open_page: Callable[[str, DemoUser | None], Page], output_dir: Path
) -> None:
    first, second = instructors(stack)[:2]
    ada = students(stack)[0]
    page_a = open_page(first.id, ada)
    page_b = open_page(second.id, ada)
    versions_b = page_b.locator("button.slot").evaluate_all(
        "buttons => buttons.map(b => [b.dataset.slotId, b.dataset.version, b.dataset.state])"
    )
    updated_b = page_b.locator("#last-update").text_content()

    slot_id = first_bookable(page_a)
    slot(page_a, slot_id).click()
    expect(slot(page_a, slot_id)).to_have_attribute("data-state", "mine")
    assert slot(page_b, slot_id).count() == 0
    page_b.wait_for_timeout(1_000)  # time for a misrouted event to arrive, if any
    assert (
        page_b.locator("button.slot").evaluate_all(
            "buttons => buttons.map(b => [b.dataset.slotId, b.dataset.version, b.dataset.state])"
        )
        == versions_b
    )
    assert page_b.locator("#last-update").text_content() == updated_b
    save_screenshot(page_a, output_dir, "isolated-instructor-a")
    save_screenshot(page_b, output_dir, "isolated-instructor-b")

    slot(page_a, slot_id).click()
    expect(slot(page_a, slot_id)).to_have_attribute("data-state", "available")


def test_instructor_sees_a_booking_notification_live(
    stack: DevStack, open_page: Callable[[str, DemoUser | None], Page], output_dir: Path
) -> None:
    teacher = instructors(stack)[0]
    ben = students(stack)[1]
    own = open_page(teacher.id, teacher)
    student_page = open_page(teacher.id, ben)
    expect(own.locator("#notifications")).to_be_visible()
    before = own.locator("#notif-list li").count()

    slot_id = first_bookable(student_page)
    slot(student_page, slot_id).click()
    expect(slot(student_page, slot_id)).to_have_attribute("data-state", "mine")

    newest = own.locator("#notif-list li").first
    expect(own.locator("#notif-list li")).to_have_count(before + 1)
    expect(newest).to_contain_text("New booking")
    expect(newest).to_contain_text(ben.name)
    # The instructor sees who booked, and may cancel it.
    expect(slot(own, slot_id)).to_contain_text(f"Booked by {ben.name}")
    save_screenshot(own, output_dir, "instructor-notified")

    # The instructor cancels with a reason, which reaches the student.
    slot(own, slot_id).click()
    dialog = own.locator("#cancel-dialog")
    expect(dialog).to_contain_text(f"booked by {ben.name}")
    dialog.get_by_label("Reason for the student (optional)").fill("I am ill, sorry")
    dialog.get_by_role("button", name="Cancel booking").click()
    expect(slot(student_page, slot_id)).to_have_attribute("data-state", "available")
    told = student_page.locator("#notif-list li").first
    expect(told).to_contain_text("Booking cancelled")
    expect(told).to_contain_text(f"Your booking with {teacher.name} on ")
    expect(told).to_contain_text("I am ill, sorry")
    expect(own.locator("#notif-list li").first).to_contain_text("Booking cancelled")
    expect(own.locator("#notif-count")).to_be_visible()
    own.get_by_role("button", name="Mark all read").click()
    expect(own.locator("#notif-count")).to_be_hidden()
    expect(own.locator("#notif-list li.unread")).to_have_count(0)
    save_screenshot(own, output_dir, "instructor-final")


def test_a_booking_conflict_shows_a_clear_message(
    stack: DevStack, open_page: Callable[[str, DemoUser | None], Page], output_dir: Path
) -> None:
    teacher = instructors(stack)[0]
    ada, ben = students(stack)[:2]
    page = open_page(teacher.id, ada)
    slot_id = first_bookable(page)
    taken: list[str] = []

    def someone_else_first(route: Route) -> None:
        # Ben books the same slot between Ada's click and her request reaching the API.
        response = api_book(stack, ben, slot_id)
        assert response.status_code == 201, response.text
        taken.append(response.json()["id"])
        route.continue_()

    page.route("**/api/bookings", someone_else_first)
    slot(page, slot_id).click()
    message = page.get_by_role("alert")
    expect(message).to_contain_text("was just taken by someone else")
    expect(slot(page, slot_id)).to_have_attribute("data-state", "booked")
    save_screenshot(page, output_dir, "conflict")
    api_cancel(stack, ben, taken[0])
    expect(slot(page, slot_id)).to_have_attribute("data-state", "available")


def test_pages_survive_a_gateway_crash_without_reload(
    stack: DevStack, open_page: Callable[[str, DemoUser | None], Page], output_dir: Path
) -> None:
    teacher = instructors(stack)[0]
    ada, ben = students(stack)[:2]
    # Round robin over two gateways: of four pages, some are on gateway 1.
    pages = [open_page(teacher.id, user) for user in (ada, ben, None, None)]
    slot_id = first_bookable(pages[0])
    booking_id = None
    load_ids = [page.evaluate("window.__loadId") for page in pages]
    assert all(load_ids), load_ids
    killed = stack.kill_gateway(1)
    try:
        # Book while the pages that were on gateway 1 are reconnecting.
        response = api_book(stack, ben, slot_id)
        assert response.status_code == 201, response.text
        booking_id = response.json()["id"]

        for page, state in zip(pages, ("booked", "mine", "booked", "booked"), strict=True):
            expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
            expect(slot(page, slot_id)).to_have_attribute("data-state", state, timeout=15_000)
        histories = [page.evaluate("window.__statuses") for page in pages]
        interrupted = [h for h in histories if {"reconnecting", "disconnected"} & set(h)]
        assert interrupted, f"no page noticed the crash: {histories}"
        after = [page.evaluate("window.__loadId ?? null") for page in pages]
        assert after == load_ids, "a page was reloaded"
        for number, page in enumerate(pages):
            save_screenshot(page, output_dir, f"gateway-crash-page-{number}")
    finally:
        # The stack's supervisor brings the crashed gateway back by itself.
        stack.wait_restarted("push-gateway-1", killed)
    api_cancel(stack, ben, booking_id)
    for page in pages:
        expect(slot(page, slot_id)).to_have_attribute("data-state", "available")


@pytest.mark.skipif(
    os.environ.get("SLOTSTREAM_UPDATE_SCREENSHOT") != "1",
    reason="set SLOTSTREAM_UPDATE_SCREENSHOT=1 to refresh docs/screenshot.png",
)
def test_readme_screenshot(
    stack: DevStack, open_page: Callable[[str, DemoUser | None], Page]
) -> None:
    teacher = instructors(stack)[0]
    ada, ben = students(stack)[:2]
    page = open_page(teacher.id, ada)
    bookable = page.locator('button.slot[data-action="book"]')
    ids = [bookable.nth(i).get_attribute("data-slot-id") for i in (1, 8, 10, 16, 23, 30)]
    mine, *theirs = (i for i in ids if i)
    assert api_book(stack, ada, mine).status_code == 201
    for slot_id in theirs:
        assert api_book(stack, ben, slot_id).status_code == 201
    expect(slot(page, theirs[-1])).to_have_attribute("data-state", "booked")
    expect(slot(page, mine)).to_have_attribute("data-state", "mine")
    expect(page.locator("#notif-list li")).not_to_have_count(0)
    page.wait_for_timeout(2_000)  # let the highlight animation finish
    page.screenshot(path=str(REPO / "docs" / "screenshot.png"))


def test_keyboard_and_phone(stack: DevStack, browser: Browser, output_dir: Path) -> None:
    """On a phone-sized screen the week is one column without sideways scrolling, and a
    slot can be booked and cancelled with the keyboard alone."""
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-GB"
    )
    try:
        teacher = instructors(stack)[1]
        ada = students(stack)[0]
        page = phone.new_page()
        page.goto(f"{stack.base_url}/?instructor={teacher.id}&as={ada.id}")
        expect(page.locator("#conn-dot")).to_have_attribute("data-status", "open")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        slot_id = first_bookable(page)
        slot(page, slot_id).focus()
        page.keyboard.press("Enter")
        expect(slot(page, slot_id)).to_have_attribute("data-state", "mine")
        expect(page.locator("#announcer")).to_contain_text(re.compile("booked", re.IGNORECASE))
        expect(slot(page, slot_id)).to_be_focused()
        save_screenshot(page, output_dir, "phone-booked")

        page.keyboard.press("Space")
        expect(slot(page, slot_id)).to_have_attribute("data-state", "available")
    finally:
        phone.close()
