// The Book-Now page: instructor picker, week grid, one-click book/cancel, live updates.
import { lang, t } from "./i18n.js";
import { Status, decodeTokenClaims, retryAfterMs, subscribe } from "./slotstream-client.js";

const $ = (id) => document.getElementById(id);
const DAY_MS = 86_400_000;

const state = {
  users: [], // demo users: {id, name, role, token}
  user: null, // the signed-in demo user, or null for a guest
  instructors: [],
  instructorId: null,
  weekStart: startOfWeek(new Date()),
  weekChosen: false, // the user navigated weeks: stop jumping to the next free slot
  sub: null,
  myBookingIds: new Set(), // active bookings of the signed-in student
  bookingInfo: new Map(), // booking id → {studentId, studentName} (own bookings, private booking events)
  pending: new Set(), // slot ids with a request in flight
  editing: null, // {slotId, version} of the slot the slot dialog moves, or null (adding)
  cancelling: null, // the booked slot the cancel dialog is about
  changed: new Set(), // slot ids to highlight briefly
  notifications: new Map(), // id → NotificationData
  mineOf: null, // the user whose bookings and notifications are held (null: a guest's, none)
  readChannel: null, // BroadcastChannel to that user's other tabs: the ids marked read
};

const fmtDay = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
const fmtDayLong = new Intl.DateTimeFormat(undefined, { weekday: "long", day: "numeric", month: "long" });
const fmtTime = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const fmtClock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
// Every time on the page is in the viewer's time zone and locale; this names the zone.
const viewerZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const fmtWhen = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
  timeZoneName: "short",
});
const LENGTHS = [15, 30, 45, 60, 90, 120]; // minutes offered for a new or moved slot

/** "09:00 – 10:00" in the viewer's locale (spaces let it wrap in a narrow column). */
function timeRange(start, end) {
  return fmtTime.formatRange ? fmtTime.formatRange(start, end) : `${fmtTime.format(start)} – ${fmtTime.format(end)}`;
}

/** "Wed, 2 Dec, 09:00 GMT" (start) or a range with the end time. */
function whenText(start, end) {
  return end ? fmtWhen.formatRange(start, end) : fmtWhen.format(start);
}

function startOfWeek(date) {
  const d = new Date(date.getFullYear(), date.getMonth(), date.getDate());
  d.setDate(d.getDate() - ((d.getDay() + 6) % 7)); // Monday
  return d;
}

function addDays(date, days) {
  const d = new Date(date);
  d.setDate(d.getDate() + days);
  return d;
}

// ---------------------------------------------------------------- HTTP

// Every request of the page is given up after this long: a stuck proxy or a dead
// connection never fails by itself, and the page would stay blank or a slot "Saving…" for
// as long as the TCP connection lives. Well below the edge's 30 s: nobody waits that long.
const REQUEST_TIMEOUT_MS = 10_000;

// A POST that got no answer, or a 502/503/504 that does not say what was done, may have
// been carried out. It is sent again with the same Idempotency-Key: the booking-api
// answers a retry with the first request's answer (or runs it, when the first never
// reached it or failed with a 5xx), and with 409 "idempotency-in-progress" while the first
// is still running. The booking-api's 503 while it starts (STARTING) comes before it does
// anything: sent again the same way, but no unknown outcome. At most WRITE_TRIES tries,
// all within WRITE_WINDOW_MS of the first, RETRY_BACKOFF_MS · 2^(n-1) apart (a random
// 50–100 % of it, so pages cut off together do not come back together) or the answer's
// Retry-After when longer: a few extra requests per click at most, within the edge's write
// rate (5/s, a burst of 50 queued).
const WRITE_TRIES = 4;
const WRITE_WINDOW_MS = 20_000;
const RETRY_BACKOFF_MS = 500;
const IN_PROGRESS = "urn:slotstream:problem:idempotency-in-progress";
// The booking-api's 409 for a slot someone else holds (a lost race); its other 409s
// (quota-exceeded, booking-cancelled, a booking already cancelled) say something else.
const TAKEN = "urn:slotstream:problem:conflict";
// Raised before a request is looked at (booking-api: ServiceStarting in get_service).
// Its other 503s may come after a write: "request-timeout", "storage-unavailable" (a store
// error mid-request, e.g. a cancel whose slot could not be freed after the booking was
// cancelled); the edge's own 503 (about:blank) and a proxy's 502/504 also come after an
// upstream timed out on a request it was sent.
const STARTING = "urn:slotstream:problem:starting";
const UNAVAILABLE = [502, 503, 504];

// Why a write may or may not have been carried out: no answer in time, the connection
// broke before the answer came, or a 502/503/504 that does not say what was done.
const NO_ANSWER = {
  timeout: "The server did not answer in time",
  network: "The connection broke before the server answered",
  unavailable: "The service was unavailable",
};

class ApiError extends Error {
  /**
   * `lost` ("timeout", "network" or "unavailable"): no answer said what was done, so a
   * write may or may not have been carried out. `type`: the problem+json type, if any;
   * `inTheWay`: the slot an overlap's `409` names ({slotId, slotStart, slotEnd}), if any.
   */
  constructor(status, detail, lost = null, type = null, inTheWay = null) {
    super(detail);
    this.status = status;
    this.lost = lost;
    this.type = type;
    this.inTheWay = inTheWay;
  }
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** One try: `{response, payload}`, or `{lost}` when no answer came. */
async function send(path, init, timeoutMs) {
  try {
    const response = await fetch(path, { ...init, signal: AbortSignal.timeout(timeoutMs) });
    const text = await response.text();
    let payload = null;
    try {
      payload = text ? JSON.parse(text) : null;
    } catch {
      payload = null;
    }
    return { response, payload };
  } catch (error) {
    return { lost: error.name === "TimeoutError" ? "timeout" : "network" };
  }
}

/** The booking-api's 503 while it starts: nothing was done, ask again after Retry-After. */
function starting({ response, payload }) {
  return response?.status === 503 && payload?.type === STARTING;
}

/**
 * Why this try says nothing of whether the write was carried out, or null for a real
 * answer (or STARTING): no answer (`lost`); the first try still running; a 502/503/504
 * other than STARTING; or, once a try went unanswered, a refusal of the retry that decides
 * nothing (the edge's 429, any 5xx: the booking-api keeps no answer of those, so the first
 * try's outcome is still unknown).
 */
function unknownOutcome(result, lostBefore) {
  const { response, payload, lost } = result;
  if (lost) return lost;
  if (response.status === 409 && payload?.type === IN_PROGRESS) return "timeout";
  if (lostBefore && (response.status === 429 || response.status >= 500)) return lostBefore;
  if (UNAVAILABLE.includes(response.status) && !starting(result)) return "unavailable";
  return null;
}

async function api(method, path, body, extraHeaders = {}) {
  const headers = { Accept: "application/json", ...extraHeaders };
  if (state.user) headers.Authorization = `Bearer ${await freshToken()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method === "POST") headers["Idempotency-Key"] = newIdempotencyKey();
  const init = { method, headers, body: body === undefined ? undefined : JSON.stringify(body) };
  const deadline = Date.now() + WRITE_WINDOW_MS;
  let lost = null;
  let result;
  for (let tries = 1; ; tries += 1) {
    result = await send(path, init, Math.min(REQUEST_TIMEOUT_MS, deadline - Date.now()));
    lost = unknownOutcome(result, lost);
    if (!(lost || starting(result)) || method !== "POST" || tries >= WRITE_TRIES) break;
    const backoff = RETRY_BACKOFF_MS * 2 ** (tries - 1) * (0.5 + Math.random() / 2);
    const wait = Math.max(backoff, result.response ? retryAfterMs(result.response) : 0);
    // a retry needs a fair share of a request's time left to be worth sending
    if (deadline - (Date.now() + wait) < REQUEST_TIMEOUT_MS / 4) break;
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
  if (lost && method !== "GET") throw new ApiError(0, `${NO_ANSWER[lost]}.`, lost);
  if (result.lost === "timeout") throw new ApiError(0, "The server did not answer in time.", result.lost);
  if (result.lost) throw new ApiError(0, "The server could not be reached. Check your connection and try again.", result.lost);
  const { response, payload } = result;
  if (starting(result)) throw new ApiError(503, "The service is starting up; try again in a minute.");
  if (!response.ok) {
    const detail = payload?.detail || payload?.title || `${response.status} ${response.statusText}`;
    const inTheWay = payload?.slotStart && payload?.slotEnd ? payload : null;
    throw new ApiError(response.status, detail, null, payload?.type ?? null, inTheWay);
  }
  return payload;
}

/** List bodies may be a bare array or wrapped ({items: […]} and similar). */
function itemsOf(payload, ...keys) {
  if (Array.isArray(payload)) return payload;
  for (const key of ["items", ...keys]) if (Array.isArray(payload?.[key])) return payload[key];
  return [];
}

// ---------------------------------------------------------------- messages

let messageTimer = null;
function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(messageTimer);
  messageTimer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 4000);
}

/** Say `text` to screen readers, in `language` (the page's own words are English). */
function announce(text, language = "en") {
  const el = $("announcer");
  el.textContent = "";
  const span = document.createElement("span");
  span.lang = language;
  span.textContent = text;
  // A fresh text node after a tick makes screen readers announce repeated messages too.
  setTimeout(() => el.replaceChildren(span), 50);
}

function describeSlot(slot) {
  const start = new Date(slot.start);
  return `${fmtDayLong.format(start)} ${fmtTime.format(start)}`;
}

// ---------------------------------------------------------------- users and instructors

async function readDemoUsers() {
  const response = await fetch("demo-users.json", { cache: "no-store", signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  if (!response.ok) return [];
  const body = await response.json();
  return itemsOf(body, "users")
    .map((u) => {
      const claims = decodeTokenClaims(u.token) || {};
      return { id: u.id || claims.sub, name: u.name || claims.name || claims.sub, role: u.role || claims.role, token: u.token };
    })
    .filter((u) => u.id && u.token);
}

// Demo tokens live an hour and `make demo` re-mints demo-users.json every 15 minutes:
// a token with less than TOKEN_REFRESH_MS left is swapped for the file's current one.
const TOKEN_REFRESH_MS = 10 * 60_000;

async function freshToken() {
  const user = state.user;
  if (!user) return null;
  const exp = decodeTokenClaims(user.token)?.exp;
  if (exp && exp * 1000 - Date.now() < TOKEN_REFRESH_MS) {
    try {
      const renewed = (await readDemoUsers()).find((u) => u.id === user.id);
      if (renewed) user.token = renewed.token;
    } catch {
      // keep the old token: the server says when it no longer accepts it
    }
  }
  return user.token;
}

async function loadUsers() {
  try {
    state.users = await readDemoUsers();
  } catch {
    state.users = [];
  }
  const select = $("user-select");
  for (const role of ["student", "instructor", "admin"]) {
    const group = document.createElement("optgroup");
    group.label = `${role[0].toUpperCase()}${role.slice(1)}s`;
    for (const u of state.users.filter((x) => x.role === role)) {
      const option = new Option(u.name, u.id);
      group.append(option);
    }
    if (group.children.length) select.append(group);
  }
}

async function loadInstructors() {
  const select = $("instructor-select");
  try {
    state.instructors = itemsOf(await api("GET", "/api/instructors"), "instructors");
  } catch (error) {
    select.replaceChildren(new Option("Instructors unavailable", ""));
    showMessage(`Could not load instructors: ${error.message}`);
    return;
  }
  select.replaceChildren(...state.instructors.map((i) => new Option(i.name, i.id)));
  select.disabled = state.instructors.length === 0;
  if (!state.instructors.length) select.replaceChildren(new Option("No instructors yet", ""));
}

function studentNameOf(bookingId) {
  const info = state.bookingInfo.get(bookingId);
  if (!info) return null;
  return info.studentName || state.users.find((u) => u.id === info.studentId)?.name || "a student";
}

function rememberBooking(booking) {
  state.bookingInfo.set(booking.id, { studentId: booking.studentId, studentName: booking.studentName ?? null });
}

// ---------------------------------------------------------------- URL state

function readUrl() {
  const params = new URLSearchParams(location.search);
  return { instructor: params.get("instructor"), as: params.get("as") };
}

function writeUrl() {
  const params = new URLSearchParams();
  if (state.instructorId) params.set("instructor", state.instructorId);
  if (state.user) params.set("as", state.user.id);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

// ---------------------------------------------------------------- live connection

// "sse" (default) or "websocket": `?transport=websocket` once, or remembered in localStorage.
const TRANSPORT =
  new URLSearchParams(location.search).get("transport") ?? localStorage.getItem("slotstream.transport") ?? "sse";

function connect() {
  state.sub?.close();
  state.changed.clear();
  if (!state.instructorId) {
    state.sub = null;
    renderStatus({ status: Status.CLOSED, attempt: 0 });
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "No instructors yet. Start `make demo` (it seeds some) or create one through the API.";
    $("week").replaceChildren(empty);
    $("week").setAttribute("aria-busy", "false");
    return;
  }
  renderStatus({ status: Status.CONNECTING, attempt: 0 });
  $("week").setAttribute("aria-busy", "true");
  state.sub = subscribe(state.instructorId, {
    transport: TRANSPORT,
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
    token: state.user ? freshToken : null,
    userId: state.user?.id ?? null,
    onStatus: onStatus,
    onSchedule: onSchedule,
    onBooking: onBookingEvent,
    onNotification: (event) => addNotifications([event.data], true),
    onPresence: ({ count }) => {
      $("viewers").textContent = `${count} viewing`;
    },
    onError: ({ error }) => showMessage(error.message),
    onResync: onResync,
  });
}

function onStatus(detail) {
  renderStatus(detail);
  if (detail.status === Status.GONE) showGone();
}

/** The instructor was deleted (or the link is stale): the slots shown are no more. */
function showGone() {
  const gone = document.createElement("p");
  gone.className = "empty";
  gone.textContent = "This instructor's schedule is no longer available. Pick another instructor.";
  $("week").replaceChildren(gone);
  $("week").setAttribute("aria-busy", "false");
}

/**
 * The gateway could not resume a channel. The schedule's fresh snapshot follows by itself;
 * the notifications channel gets nothing more (`history-unavailable`: the missed events
 * are gone), so the page reads the user's notifications and bookings again.
 */
function onResync({ channel }) {
  if (state.user && channel === `users/${state.user.id}/notifications`) loadMine().then(renderWeek);
  else announce("The schedule is being refreshed.");
}

function onSchedule({ schedule, kind, slot, previous }) {
  $("week").setAttribute("aria-busy", "false");
  $("last-update").textContent = `Updated ${fmtClock.format(state.sub.lastUpdate)}`;
  $("last-update").dateTime = state.sub.lastUpdate.toISOString();
  if (kind === "snapshot") {
    if (!state.weekChosen) jumpToFirstOpenWeek(schedule);
  } else if (slot) {
    state.pending.delete(slot.id);
    state.changed.add(slot.id);
    setTimeout(() => {
      state.changed.delete(slot.id);
      document.querySelector(`[data-slot-id="${CSS.escape(slot.id)}"]`)?.classList.remove("changed");
    }, 1600);
    if (previous && previous.status !== slot.status) {
      if (slot.status === "booked" && !isMine(slot)) announce(`${describeSlot(slot)} was just booked.`);
      if (slot.status === "available") announce(`${describeSlot(slot)} is available again.`);
    }
  }
  renderWeek();
}

function onBookingEvent(event) {
  const booking = event.data;
  rememberBooking(booking);
  if (state.user && booking.studentId === state.user.id) {
    if (booking.status === "active") state.myBookingIds.add(booking.id);
    else state.myBookingIds.delete(booking.id);
  }
  renderWeek();
}

function jumpToFirstOpenWeek(schedule) {
  const now = Date.now();
  const weekEnd = addDays(state.weekStart, 7).getTime();
  const upcoming = schedule.list().filter((s) => Date.parse(s.end) > now);
  if (!upcoming.length) return;
  const hasThisWeek = upcoming.some((s) => Date.parse(s.start) < weekEnd && Date.parse(s.start) >= state.weekStart.getTime());
  if (!hasThisWeek) state.weekStart = startOfWeek(new Date(upcoming[0].start));
}

function renderStatus({ status, attempt, retryInMs }) {
  const dot = $("conn-dot");
  const text = $("conn-text");
  dot.dataset.status = status;
  $("live-status").dataset.status = status;
  const labels = {
    [Status.CONNECTING]: "Connecting…",
    [Status.OPEN]: "Live",
    [Status.RECONNECTING]: `Reconnecting (attempt ${Math.max(attempt, 1)})…`,
    [Status.DISCONNECTED]: `Disconnected — retrying in ${Math.max(1, Math.round((retryInMs ?? 0) / 1000))} s`,
    [Status.CLOSED]: "Not connected",
    [Status.GONE]: "This instructor's schedule is no longer available",
  };
  const titles = {
    [Status.OPEN]: "Receiving live updates",
    [Status.GONE]: "The instructor does not exist any more: there is nothing to follow",
  };
  text.textContent = labels[status] ?? status;
  text.title = titles[status] ?? "Updates are paused until the connection is back";
}

// ---------------------------------------------------------------- the week grid

function isMine(slot) {
  return slot.status === "booked" && slot.bookingId && state.myBookingIds.has(slot.bookingId);
}

function slotState(slot) {
  if (slot.status === "available") return "available";
  return isMine(slot) ? "mine" : "booked";
}

function canCancel(slot) {
  if (!state.user || slot.status !== "booked") return false;
  if (isMine(slot) || state.user.role === "admin") return true;
  return state.user.role === "instructor" && state.user.id === slot.instructorId;
}

function canBook(slot) {
  return slot.status === "available" && state.user?.role !== "instructor";
}

/** The signed-in user edits this schedule: its instructor, or an admin. */
function canManage() {
  if (!state.user || !state.instructorId) return false;
  return state.user.role === "admin" || (state.user.role === "instructor" && state.user.id === state.instructorId);
}

function renderWeek() {
  const week = $("week");
  const start = state.weekStart;
  const end = addDays(start, 7);
  $("week-label").textContent = `${fmtDay.format(start)} – ${fmtDay.format(addDays(end, -1))}`;
  if (!state.sub || !state.sub.schedule.loaded || state.sub.status === Status.GONE) return;
  const slots = state.sub.schedule.list().filter((s) => {
    const t = Date.parse(s.start);
    return t >= start.getTime() && t < end.getTime();
  });
  const today = new Date().toDateString();
  const days = [];
  for (let i = 0; i < 7; i += 1) {
    const day = addDays(start, i);
    const dayEnd = addDays(day, 1);
    const column = document.createElement("div");
    column.className = "day";
    if (day.toDateString() === today) column.classList.add("today");
    column.setAttribute("role", "group");
    const heading = document.createElement("h3");
    heading.id = `day-${i}`;
    heading.textContent = fmtDay.format(day);
    column.setAttribute("aria-labelledby", heading.id);
    const list = document.createElement("ul");
    const ofDay = slots.filter((s) => Date.parse(s.start) >= day.getTime() && Date.parse(s.start) < dayEnd.getTime());
    for (const slot of ofDay) list.append(renderSlot(slot));
    if (!ofDay.length) {
      const none = document.createElement("li");
      none.className = "no-slots";
      none.textContent = "No slots";
      list.append(none);
    }
    column.append(heading, list);
    days.push(column);
  }
  // Keep keyboard focus on the same slot (or slot tool) across re-renders.
  const focused = document.activeElement?.dataset ?? {};
  week.replaceChildren(...days);
  if (focused.slotId) week.querySelector(`[data-slot-id="${CSS.escape(focused.slotId)}"]`)?.focus();
  else if (focused.for && focused.tool) {
    week.querySelector(`[data-for="${CSS.escape(focused.for)}"][data-tool="${CSS.escape(focused.tool)}"]`)?.focus();
  }
}

function renderSlot(slot) {
  const item = document.createElement("li");
  item.className = "slot-item";
  const kind = slotState(slot);
  const start = new Date(slot.start);
  const end = new Date(slot.end);
  const past = end.getTime() < Date.now();
  const pending = state.pending.has(slot.id);
  const button = document.createElement("button");
  button.type = "button";
  button.className = `slot ${kind}`;
  if (state.changed.has(slot.id)) button.classList.add("changed");
  button.dataset.slotId = slot.id;
  button.dataset.state = kind;
  button.dataset.version = String(slot.version);
  let action = null;
  let label;
  if (kind === "available") {
    label = past ? "Past" : "Open";
    if (!past && !state.user) action = "signin";
    else if (!past && canBook(slot)) action = "book";
  } else if (kind === "mine") {
    label = "Yours";
    action = "cancel";
  } else {
    const student = state.user && state.user.role !== "student" ? studentNameOf(slot.bookingId) : null;
    label = student ? `Booked by ${student}` : "Booked";
    if (canCancel(slot)) action = "cancel";
  }
  const actionText = { book: "Book", cancel: "Cancel", signin: "Sign in to book" }[action] ?? "";
  const timeEl = document.createElement("span");
  timeEl.className = "slot-time";
  timeEl.textContent = timeRange(start, end);
  const labelEl = document.createElement("span");
  labelEl.className = "slot-label";
  labelEl.textContent = pending ? "Saving…" : label;
  button.append(timeEl, labelEl);
  if (action && !pending) {
    const actionEl = document.createElement("span");
    actionEl.className = "slot-action";
    actionEl.textContent = actionText;
    button.append(actionEl);
  }
  const when = `${fmtDayLong.format(start)}, ${timeRange(start, end)}`;
  button.setAttribute("aria-label", action ? `${actionText}: ${when} (${label})` : `${when}: ${label}`);
  button.setAttribute("aria-busy", String(pending));
  if (!action || pending) {
    button.setAttribute("aria-disabled", "true");
  } else {
    button.dataset.action = action;
  }
  if (past) button.classList.add("past");
  item.append(button);
  if (canManage() && slot.status === "available" && !past && !pending) {
    const tools = document.createElement("div");
    tools.className = "slot-tools";
    for (const [tool, text] of [["move", "Move"], ["remove", "Remove"]]) {
      const toolButton = document.createElement("button");
      toolButton.type = "button";
      toolButton.className = `tool-button ${tool}`;
      toolButton.dataset.tool = tool;
      toolButton.dataset.for = slot.id;
      toolButton.textContent = text;
      toolButton.setAttribute("aria-label", `${text} the slot ${when}`);
      tools.append(toolButton);
    }
    item.append(tools);
  }
  return item;
}

function askToSignIn() {
  showMessage("Choose a student under “Signed in as” to book a slot.", "info");
  $("user-select").focus();
}

async function onSlotClick(event) {
  const tool = event.target.closest("button[data-tool]");
  if (tool) {
    const target = state.sub?.schedule.get(tool.dataset.for);
    if (target && tool.dataset.tool === "move") openSlotDialog(target);
    else if (target) await removeSlot(target);
    return;
  }
  const button = event.target.closest("button.slot");
  if (!button) return;
  const slot = state.sub?.schedule.get(button.dataset.slotId);
  if (!slot) return;
  const action = button.dataset.action;
  if (!state.user) {
    if (slot.status === "available") askToSignIn();
    return;
  }
  if (!action) return;
  if (action === "cancel" && !isMine(slot)) {
    openCancelDialog(slot);
    return;
  }
  // the answer is this user's: when another signed in meanwhile (the user switcher), their
  // bookings and messages are left alone; the slot still settles (the schedule is shared)
  const userId = state.mineOf;
  state.pending.add(slot.id);
  renderWeek();
  try {
    if (action === "book") {
      const booking = await api("POST", "/api/bookings", { slotId: slot.id });
      if (state.mineOf === userId) {
        if (booking?.id) {
          state.myBookingIds.add(booking.id);
          rememberBooking(booking);
        }
        announce(`Booked ${describeSlot(slot)}.`);
        showMessage(`Booked ${describeSlot(slot)}.`, "success");
      }
    } else {
      await api("DELETE", `/api/bookings/${encodeURIComponent(slot.bookingId)}`);
      if (state.mineOf === userId) {
        state.myBookingIds.delete(slot.bookingId);
        announce(`Cancelled ${describeSlot(slot)}.`);
        showMessage(`Cancelled the booking for ${describeSlot(slot)}.`, "success");
      }
    }
    // The stream brings the new slot state; while it is down, fetch it instead.
    if (!state.sub?.isConnected) await refreshOverHttp();
    else setTimeout(() => settlePending(slot.id), 3000);
  } catch (error) {
    if (error.lost) {
      const done = action === "book" ? "booked" : "cancelled";
      const text = await noAnswer(error, `${describeSlot(slot)} may or may not be ${done}`, { mine: true });
      state.pending.delete(slot.id);
      showMessage(text);
      renderWeek();
      return;
    }
    state.pending.delete(slot.id);
    if (error.status === 409 && action === "book" && error.type === TAKEN) {
      showMessage(`Sorry — ${describeSlot(slot)} was just taken by someone else. Pick another slot.`);
      await refreshOverHttp();
    } else if (error.status === 409) {
      showMessage(`Could not ${action} ${describeSlot(slot)}: ${error.message}`);
      await refreshOverHttp();
    } else if (error.status === 401) {
      showMessage("Your demo sign-in has expired. Restart the demo or pick the user again.");
    } else if (error.status === 403) {
      showMessage(`Not allowed: ${error.message}`);
    } else {
      showMessage(`Could not ${action} ${describeSlot(slot)}: ${error.message}`);
    }
    renderWeek();
  }
}

/** The stream normally brings the change a request made (and so settles its slot); when it
 * has not within 3 s (a slow or stalled stream), the slot is fetched over HTTP, so a booking
 * that succeeded is never shown bookable again as if it had failed. */
async function settlePending(slotId) {
  if (!state.pending.has(slotId)) return;
  await refreshOverHttp();
  if (state.pending.delete(slotId)) renderWeek();
}

/** Read the schedule over HTTP and merge it; true when that worked. */
async function refreshOverHttp() {
  if (!state.sub) return false;
  let read = false;
  try {
    const { schedule } = state.sub;
    const askedAt = schedule.deltas;
    const snapshot = await api("GET", `/api/instructors/${encodeURIComponent(state.instructorId)}/schedule`);
    schedule.applySnapshot(snapshot, askedAt);
    for (const slot of snapshot.slots) state.pending.delete(slot.id);
    read = true;
  } catch {
    // The stream will catch up when it is back.
  }
  renderWeek();
  return read;
}

/**
 * A write got no answer (`ApiError.lost`: every try timed out, lost its connection or got
 * a 502/503/504 that does not say what was done, or the first was still running when the
 * last was refused): the server may have carried it out, so it is not reported as
 * failed. The schedule (with `mine`, also the user's bookings: a
 * booking made meanwhile then shows as "Yours") is read again, and the text returned says
 * what is known: `what` ("… may or may not be booked"), and whether the page now shows
 * the server's state.
 */
async function noAnswer(error, what, { mine = false } = {}) {
  const [read] = await Promise.all([refreshOverHttp(), mine ? loadMine() : null]);
  const shown = read
    ? "The schedule now shows what the server has: check it before you try again."
    : "The schedule could not be read again either: it updates by itself once the connection is back.";
  return `${NO_ANSWER[error.lost]}: ${what}. ${shown}`;
}

// ---------------------------------------------------------------- notifications and bookings

/**
 * The signed-in user's bookings and notifications, read again (after sign-in, and after a
 * resync of their notifications). Another user's are dropped at once; the same user's
 * are replaced only by a read that succeeded, so a moment of API trouble keeps what the
 * page showed instead of emptying it.
 */
async function loadMine() {
  const userId = state.user?.id ?? null;
  if (state.mineOf !== userId) {
    state.mineOf = userId;
    state.myBookingIds.clear();
    state.notifications.clear();
    $("notif-list").replaceChildren();
    state.readChannel?.close();
    state.readChannel = userId ? readChannelOf(userId) : null;
  }
  const panel = $("notifications");
  panel.hidden = !state.user;
  if (!state.user) return;
  const [bookings, notifications] = await Promise.allSettled([
    api("GET", "/api/users/me/bookings"),
    api("GET", "/api/users/me/notifications"),
  ]);
  if (state.mineOf !== userId) return; // another user signed in meanwhile
  if (bookings.status === "fulfilled") {
    state.myBookingIds.clear();
    for (const b of itemsOf(bookings.value, "bookings")) {
      rememberBooking(b);
      if (b.status === "active" && b.studentId === state.user.id) state.myBookingIds.add(b.id);
    }
  }
  if (notifications.status === "fulfilled") addNotifications(itemsOf(notifications.value, "notifications"), false);
  renderNotifications();
}

function addNotifications(list, live) {
  for (const n of list) {
    if (!n || (state.user && n.userId && n.userId !== state.user.id)) continue;
    const held = state.notifications.get(n.id);
    if (held && held.version >= n.version) continue;
    state.notifications.set(n.id, { ...n, live: live && !held });
    if (live && !held) announce(notificationText(n), n.slotStart ? lang : "en");
  }
  renderNotifications();
}

function renderNotifications() {
  const list = $("notif-list");
  // newest first; within one millisecond by id (ids sort by creation), as the API lists them
  const all = [...state.notifications.values()].sort(
    (a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt) || (a.id < b.id) - (a.id > b.id),
  );
  const unread = all.filter((n) => !n.read).length;
  const badge = $("notif-count");
  badge.hidden = unread === 0;
  badge.textContent = String(unread);
  badge.setAttribute("aria-label", t("unread", unread));
  $("notif-empty").hidden = all.length > 0;
  $("mark-read").hidden = unread === 0;
  list.replaceChildren(
    ...all.slice(0, 50).map((n) => {
      const item = document.createElement("li");
      item.className = `notification ${n.kind === "booking.cancelled" ? "cancelled" : "created"}`;
      if (!n.read) item.classList.add("unread");
      // a live one slides in once: the list is drawn again for each later change
      if (n.live) item.classList.add("fresh");
      n.live = false;
      item.dataset.notificationId = n.id;
      const title = document.createElement("strong");
      title.textContent = t(n.kind === "booking.cancelled" ? "cancelled" : "created");
      const text = document.createElement("p");
      text.textContent = notificationText(n);
      if (!n.slotStart) text.lang = "en";
      const time = document.createElement("time");
      time.dateTime = n.createdAt;
      time.textContent = fmtClock.format(new Date(n.createdAt));
      item.append(title, text, time);
      return item;
    }),
  );
}

/**
 * A notification in the viewer's language (web/i18n.js), time zone and locale, from its
 * structured fields: who (the instructor for a student, the student for an instructor),
 * when, why. The API's English `message` (UTC times) is the fallback for notifications
 * without those fields.
 */
function notificationText(n) {
  if (!n.slotStart) return n.message;
  const fields = {
    when: whenText(new Date(n.slotStart), n.slotEnd ? new Date(n.slotEnd) : null),
    student: n.studentName || undefined,
    teacher: n.instructorName || undefined,
    by: n.cancelledBy || undefined,
  };
  const asInstructor = state.user?.role === "instructor";
  if (n.kind === "booking.created") return t(asInstructor ? "studentBooked" : "youBooked", fields);
  const text = t(asInstructor ? "studentCancelled" : "yoursCancelled", fields);
  return n.reason ? `${text} ${t("reason", n.reason)}` : text;
}

/** The notification panel speaks the viewer's language (`lang` tells screen readers which);
 * the rest of the page is English, with dates and times in the browser's locale. */
function localizeNotifications() {
  $("notifications").lang = lang;
  $("notif-title").firstChild.textContent = `${t("notifications")} `;
  $("mark-read").textContent = t("markRead");
  $("notif-empty").textContent = t("empty");
}

/**
 * The same user's other tabs of this page (same origin) hear which notifications one of
 * them marked read: the stream carries no read flags (they are no schedule change), so
 * their unread badge would stay until a reload. The channel is named per user, so two
 * users' tabs never mix, and carries the ids alone. None where the browser lacks
 * BroadcastChannel.
 */
function readChannelOf(userId) {
  if (typeof BroadcastChannel !== "function") return null;
  const channel = new BroadcastChannel(`slotstream.notifications-read.${userId}`);
  channel.onmessage = ({ data }) => {
    if (state.mineOf !== userId || !Array.isArray(data?.ids)) return;
    for (const id of data.ids) {
      const held = state.notifications.get(id);
      if (held && !held.read) state.notifications.set(id, { ...held, read: true });
    }
    renderNotifications();
  };
  return channel;
}

/**
 * Marks the signed-in user's unread notifications read, one POST each. The answers are
 * that user's notifications: when another user signed in while they were on their way (the
 * user switcher), they are dropped — the marks were made, and the first user's list shows
 * them read at its next sign-in — never written into the new user's list.
 */
async function markAllRead() {
  const userId = state.mineOf;
  const unread = [...state.notifications.values()].filter((n) => !n.read);
  const results = await Promise.allSettled(
    unread.map((n) => api("POST", `/api/users/me/notifications/${encodeURIComponent(n.id)}/read`)),
  );
  if (state.mineOf !== userId) return; // another user signed in meanwhile
  results.forEach((result, i) => {
    if (result.status === "fulfilled" && result.value?.id) {
      state.notifications.set(result.value.id, result.value);
    } else if (result.status === "fulfilled") {
      state.notifications.set(unread[i].id, { ...unread[i], read: true });
    }
  });
  const marked = unread.filter((_, i) => results[i].status === "fulfilled").map((n) => n.id);
  if (marked.length > 0) state.readChannel?.postMessage({ ids: marked });
  if (results.some((r) => r.status === "rejected")) showMessage("Some notifications could not be marked as read.");
  renderNotifications();
}

// ---------------------------------------------------------------- managing the schedule

function renderManage() {
  $("manage").hidden = !canManage();
  if (canManage()) loadScheduleBookings();
}

/** Who booked the slots of the schedule shown (its instructor and admins may know). */
async function loadScheduleBookings() {
  try {
    const bookings = await api("GET", `/api/instructors/${encodeURIComponent(state.instructorId)}/bookings`);
    for (const b of itemsOf(bookings, "bookings")) rememberBooking(b);
    renderWeek();
  } catch {
    // Names then come from the live booking events only.
  }
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function localDate(date) {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

function localTime(date) {
  return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A date and a time typed by the viewer, in the viewer's time zone. */
function fromLocal(date, time) {
  return new Date(`${date}T${time}`);
}

function fillLengths(select, minutes) {
  const options = LENGTHS.includes(minutes) ? LENGTHS : [...LENGTHS, minutes].sort((a, b) => a - b);
  select.replaceChildren(...options.map((m) => new Option(m < 60 || m % 60 ? `${m} minutes` : `${m / 60} hour${m > 60 ? "s" : ""}`, String(m))));
  select.value = String(minutes);
}

function formError(id, text) {
  const box = $(id);
  box.textContent = text ?? "";
  box.hidden = !text;
}

function openSlotDialog(slot = null) {
  state.editing = slot ? { slotId: slot.id, version: slot.version } : null;
  const start = slot ? new Date(slot.start) : nextFreeStart();
  const minutes = slot ? Math.round((Date.parse(slot.end) - Date.parse(slot.start)) / 60_000) : 60;
  $("slot-dialog-title").textContent = slot ? `Move the slot of ${whenText(start)}` : "Add slot";
  $("slot-submit").textContent = slot ? "Move slot" : "Add slot";
  $("slot-date").value = localDate(start);
  $("slot-start").value = localTime(start);
  fillLengths($("slot-length"), minutes);
  formError("slot-error", null);
  $("slot-dialog").showModal();
}

/** A sensible default for "Add slot": tomorrow at 09:00, or the week shown if later. */
function nextFreeStart() {
  const tomorrow = addDays(new Date(), 1);
  const base = state.weekStart > tomorrow ? state.weekStart : tomorrow;
  return new Date(base.getFullYear(), base.getMonth(), base.getDate(), 9, 0);
}

/**
 * An overlap's `409`: the slot in the way as the page shows slots, from the problem's
 * `slotStart` and `slotEnd` (the page need not hold it: it may lie past the weeks loaded).
 * The API's detail names it by id and UTC times, which match nothing the viewer sees.
 */
function overlapText(error) {
  const other = error.status === 409 ? error.inTheWay : null;
  return other ? `It would overlap the slot of ${whenText(new Date(other.slotStart), new Date(other.slotEnd))}.` : error.message;
}

async function submitSlot(event) {
  event.preventDefault();
  const start = fromLocal($("slot-date").value, $("slot-start").value);
  if (Number.isNaN(start.getTime())) {
    formError("slot-error", "Choose a date and a start time.");
    return;
  }
  const end = new Date(start.getTime() + Number($("slot-length").value) * 60_000);
  const body = { start: start.toISOString(), end: end.toISOString() };
  const editing = state.editing;
  $("slot-submit").disabled = true;
  try {
    if (editing) {
      await api("PATCH", `/api/slots/${encodeURIComponent(editing.slotId)}`, body, { "If-Match": `"${editing.version}"` });
      showMessage(`Moved the slot to ${whenText(start, end)}.`, "success");
    } else {
      await api("POST", `/api/instructors/${encodeURIComponent(state.instructorId)}/slots`, body);
      showMessage(`Added a slot on ${whenText(start, end)}.`, "success");
    }
    announce(editing ? "Slot moved." : "Slot added.");
    $("slot-dialog").close();
    state.weekChosen = true;
    state.weekStart = startOfWeek(start);
    if (!state.sub?.isConnected) await refreshOverHttp();
    else renderWeek();
  } catch (error) {
    if (error.lost) {
      formError("slot-error", await noAnswer(error, `the slot may or may not have been ${editing ? "moved" : "added"}`));
    } else if (error.status === 412) {
      formError("slot-error", "This slot changed in the meantime. Close this form and try again.");
      await refreshOverHttp();
    } else {
      formError("slot-error", overlapText(error));
    }
  } finally {
    $("slot-submit").disabled = false;
  }
}

const WEEKDAYS = [1, 2, 3, 4, 5, 6, 0]; // Monday first, as Date.getDay() numbers them

function openWeekDialog() {
  const days = $("week-days");
  if (!days.children.length) {
    const names = new Intl.DateTimeFormat(undefined, { weekday: "long" });
    const monday = startOfWeek(new Date());
    WEEKDAYS.forEach((weekday, i) => {
      const label = document.createElement("label");
      label.className = "check";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = String(weekday);
      box.checked = weekday >= 1 && weekday <= 5;
      label.append(box, ` ${names.format(addDays(monday, i))}`);
      days.append(label);
    });
  }
  const next = addDays(startOfWeek(new Date()), 7);
  $("week-of").value = localDate(state.weekStart > next ? state.weekStart : next);
  fillLengths($("week-length"), 60);
  formError("week-error", null);
  $("week-dialog").showModal();
}

/** Every checked weekday × every start time in the chosen week, skipping past times. */
function weekPattern() {
  const times = $("week-times").value.split(/[,\s]+/).filter(Boolean);
  const bad = times.filter((t) => !/^([01]?\d|2[0-3]):[0-5]\d$/.test(t));
  if (!times.length || bad.length) throw new Error(`Start times look like 09:00 or 14:30${bad.length ? ` (not “${bad[0]}”)` : ""}.`);
  const weekdays = [...$("week-days").querySelectorAll("input:checked")].map((b) => Number(b.value));
  if (!weekdays.length) throw new Error("Choose at least one day.");
  const first = fromLocal($("week-of").value, "00:00");
  if (Number.isNaN(first.getTime())) throw new Error("Choose the week's first day.");
  const minutes = Number($("week-length").value);
  // Checked here, in the times as typed: the API's refusal names both slots in UTC.
  const byStart = times.map((t) => [t, Number(t.split(":")[0]) * 60 + Number(t.split(":")[1])]).sort((a, b) => a[1] - b[1]);
  for (let i = 1; i < byStart.length; i += 1) {
    const [[early, from], [late, to]] = [byStart[i - 1], byStart[i]];
    if (to - from < minutes) throw new Error(`${early} and ${late} are less than ${$("week-length").selectedOptions[0].text} apart: those slots would overlap.`);
  }
  const slots = [];
  for (let i = 0; i < 7; i += 1) {
    const day = addDays(first, i);
    if (!weekdays.includes(day.getDay())) continue;
    for (const time of times) {
      const start = fromLocal(localDate(day), time.padStart(5, "0"));
      if (start.getTime() <= Date.now()) continue;
      slots.push({ start: start.toISOString(), end: new Date(start.getTime() + minutes * 60_000).toISOString() });
    }
  }
  if (!slots.length) throw new Error("All of these times are in the past.");
  return { slots, first };
}

async function submitWeek(event) {
  event.preventDefault();
  let pattern;
  try {
    pattern = weekPattern();
  } catch (error) {
    formError("week-error", error.message);
    return;
  }
  $("week-submit").disabled = true;
  try {
    const created = itemsOf(
      await api("POST", `/api/instructors/${encodeURIComponent(state.instructorId)}/slots:batch`, { slots: pattern.slots }),
    );
    $("week-dialog").close();
    showMessage(`Added ${created.length} slots in the week of ${fmtDayLong.format(pattern.first)}.`, "success");
    announce(`Added ${created.length} slots.`);
    state.weekChosen = true;
    state.weekStart = startOfWeek(pattern.first);
    if (!state.sub?.isConnected) await refreshOverHttp();
    else renderWeek();
  } catch (error) {
    if (error.lost) formError("week-error", await noAnswer(error, "the slots may or may not have been added"));
    else formError("week-error", error.status === 409 ? `Nothing was added: ${overlapText(error)}` : error.message);
  } finally {
    $("week-submit").disabled = false;
  }
}

async function removeSlot(slot) {
  state.pending.add(slot.id);
  renderWeek();
  try {
    await api("DELETE", `/api/slots/${encodeURIComponent(slot.id)}`);
    announce(`Removed the slot of ${describeSlot(slot)}.`);
    showMessage(`Removed the slot of ${describeSlot(slot)}.`, "success");
    if (!state.sub?.isConnected) await refreshOverHttp();
    else setTimeout(() => settlePending(slot.id), 3000);
  } catch (error) {
    const text = error.lost
      ? await noAnswer(error, `the slot of ${describeSlot(slot)} may or may not be removed`)
      : `Could not remove ${describeSlot(slot)}: ${error.message}`;
    state.pending.delete(slot.id);
    showMessage(text);
    renderWeek();
  }
}

function openCancelDialog(slot) {
  state.cancelling = slot;
  const student = studentNameOf(slot.bookingId);
  $("cancel-what").textContent = `${whenText(new Date(slot.start), new Date(slot.end))}${student ? `, booked by ${student}` : ""}.`;
  $("cancel-reason").value = "";
  formError("cancel-error", null);
  $("cancel-dialog").showModal();
}

async function submitCancel(event) {
  event.preventDefault();
  const slot = state.cancelling;
  if (!slot) return;
  const reason = $("cancel-reason").value.trim();
  $("cancel-submit").disabled = true;
  try {
    await api("DELETE", `/api/bookings/${encodeURIComponent(slot.bookingId)}`, reason ? { reason } : undefined);
    $("cancel-dialog").close();
    announce(`Cancelled ${describeSlot(slot)}.`);
    showMessage(`Cancelled the booking for ${describeSlot(slot)}; the student is notified.`, "success");
    if (!state.sub?.isConnected) await refreshOverHttp();
  } catch (error) {
    const cancelled = `${describeSlot(slot)} may or may not be cancelled`;
    formError("cancel-error", error.lost ? await noAnswer(error, cancelled) : error.message);
  } finally {
    $("cancel-submit").disabled = false;
  }
}

// ---------------------------------------------------------------- wiring

async function chooseUser(userId) {
  state.user = state.users.find((u) => u.id === userId) ?? null;
  $("user-select").value = state.user?.id ?? "";
  await loadMine();
  writeUrl();
  connect();
  renderManage();
  renderWeek();
}

function chooseInstructor(instructorId) {
  state.instructorId = instructorId || null;
  state.weekChosen = false;
  state.weekStart = startOfWeek(new Date());
  $("instructor-select").value = state.instructorId ?? "";
  $("viewers").textContent = "";
  $("last-update").textContent = "";
  writeUrl();
  connect();
  renderManage();
  renderWeek();
}

function moveWeek(days) {
  state.weekChosen = true;
  state.weekStart = days === 0 ? startOfWeek(new Date()) : addDays(state.weekStart, days);
  renderWeek();
}

async function main() {
  $("week").addEventListener("click", onSlotClick);
  $("prev-week").addEventListener("click", () => moveWeek(-7));
  $("next-week").addEventListener("click", () => moveWeek(7));
  $("this-week").addEventListener("click", () => moveWeek(0));
  $("instructor-select").addEventListener("change", (e) => chooseInstructor(e.target.value));
  $("user-select").addEventListener("change", (e) => chooseUser(e.target.value));
  $("mark-read").addEventListener("click", markAllRead);
  localizeNotifications();
  $("add-slot").addEventListener("click", () => openSlotDialog());
  $("add-week").addEventListener("click", openWeekDialog);
  $("slot-form").addEventListener("submit", submitSlot);
  $("week-form").addEventListener("submit", submitWeek);
  $("cancel-form").addEventListener("submit", submitCancel);
  for (const close of document.querySelectorAll("dialog [data-close]")) {
    close.addEventListener("click", () => close.closest("dialog").close());
  }
  $("tz-note").textContent = `Times in ${viewerZone}`;
  window.addEventListener("offline", () => state.sub?.connectionLost());
  window.addEventListener("online", () => state.sub?.reconnectNow());
  setInterval(() => renderWeek(), 60_000); // slots move into the past

  await Promise.all([loadUsers(), loadInstructors()]);
  const wanted = readUrl();
  state.user = state.users.find((u) => u.id === wanted.as) ?? null;
  $("user-select").value = state.user?.id ?? "";
  const ownInstructor = state.user?.role === "instructor" ? state.user.id : null;
  const pick = [wanted.instructor, ownInstructor, state.instructors[0]?.id].find(
    (id) => id && state.instructors.some((i) => i.id === id),
  );
  await loadMine();
  chooseInstructor(pick ?? null);
  document.body.dataset.ready = "true";
}

main();
