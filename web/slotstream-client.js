// Slotstream browser client: one Server-Sent Events connection per page that keeps an
// instructor's schedule (and, when logged in, the user's notifications) up to date.
//
//   import { subscribe } from "./slotstream-client.js";
//   const sub = subscribe("i1", { onChange: ({ schedule, error, isConnected }) => render(schedule) });
//   sub.close();
//
// The API is documented in web/README.md. No dependencies, no build step.

/** Connection states, in the order a healthy connection goes through them. */
export const Status = Object.freeze({
  CONNECTING: "connecting", // first attempt, nothing received yet
  OPEN: "open", // connected, receiving live updates
  RECONNECTING: "reconnecting", // lost the stream; EventSource is retrying (amber)
  DISCONNECTED: "disconnected", // the server refused or closed for good; we retry after a delay (red)
  CLOSED: "closed", // close() was called
  // The instructor does not exist (deleted, a stale link): the schedule is never asked again.
  // Final: a signed-in user's own channel goes on alone, its reconnects not shown.
  GONE: "gone",
});

const DEFAULTS = Object.freeze({
  baseUrl: "",
  token: null, // a JWT, or a function returning one (or a promise of one), asked before each connect
  userId: null,
  initialBackoffMs: 500,
  maxBackoffMs: 15000,
  // The stream-ticket request is given up after this long and asked again after the
  // back-off: a stuck proxy or a dead connection never fails by itself, and the page would
  // stay "connecting" for as long as the TCP connection lives.
  requestTimeoutMs: 10000,
  // The gateway sends a `heartbeat` event every 15 s; nothing at all for two of them plus
  // slack, counted from when the stream is asked for, means the stream is dead even if the
  // socket looks open (a frozen gateway, a proxy holding a half-open connection or the
  // request itself): close it and reconnect.
  heartbeatTimeoutMs: 35000,
  // A connection counts as working once it delivered data, or stayed up this long (a resume
  // with nothing missed brings no data): only then does the back-off start again from
  // initialBackoffMs. Longer than the gateway's catch-up timeout (10 s), after which it ends
  // a stream it could not serve (bye snapshot-unavailable).
  healthyAfterMs: 30000,
  // A gateway shutting down tells its streams to come back after GATEWAY_SHUTDOWN_RETRY_MS
  // plus a random share of GATEWAY_SHUTDOWN_RETRY_JITTER_MS (`retry:`), so they reconnect
  // spread out. EventSource does not show `retry:` to scripts and a WebSocket close (1001)
  // carries none: where the client reconnects by itself (signed in over SSE, WebSocket) it
  // waits shutdownRetryMs plus a random share of shutdownJitterMs (the gateway's defaults).
  shutdownRetryMs: 500,
  shutdownJitterMs: 5000,
  eventSourceFactory: (url) => new EventSource(url),
  fetch: (url, init) => fetch(url, init),
});

/** Events that carry the stream's data (each with an id): the connection works. */
const DATA_EVENTS = new Set(["snapshot", "slot", "booking", "notification", "resync"]);

/** The ticket endpoint refused the token: retrying with it cannot help. */
class SignInExpired extends Error {}

/** No ticket now; `retryAfterMs` is the server's `Retry-After` (0 when it gave none). */
class TicketUnavailable extends Error {
  constructor(message, retryAfterMs = 0) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

/** A response's `Retry-After` (seconds or an HTTP date) in milliseconds, else 0. */
export function retryAfterMs(response) {
  const value = response.headers?.get?.("Retry-After");
  if (!value) return 0;
  const seconds = Number(value);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - Date.now();
  return ms > 0 ? ms : 0;
}

/**
 * Decode the (unverified) claims of a JWT, for display only: the server verifies tokens.
 * @param {string} token
 * @returns {{sub: string, role: string, name?: string, exp?: number} | null}
 */
export function decodeTokenClaims(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

/**
 * The merged view of one instructor's schedule. Slots are keyed by id and only ever
 * replaced by a newer version, so a late or repeated delta can never move a slot back.
 */
export class Schedule {
  constructor(instructorId) {
    this.instructorId = instructorId;
    /** @type {Map<string, object>} slot id → SlotData (deleted slots kept as tombstones) */
    this.slots = new Map();
    this.version = 0;
    this.from = null;
    this.to = null;
    this.loaded = false;
    /** Slot deltas applied so far: take it before asking for a snapshot (`askedAt`). */
    this.deltas = 0;
    /** @type {Map<string, number>} slot id → `deltas` when its last delta was applied */
    this._deltaAt = new Map();
  }

  /**
   * Replace the state in the snapshot's window with the snapshot, keeping any slot we
   * already hold in a newer version. A held slot the snapshot lacks goes (deleted, or moved
   * out of the window), unless a delta brought it after `askedAt`, the `deltas` count when
   * the snapshot was asked for (an HTTP answer): the snapshot may have been read before that
   * change was made. Server times cannot tell: a slot's `updatedAt` is stamped before its
   * write commits, the snapshot's `generatedAt` after its read, maybe on another replica's
   * clock; and versions count per slot (a new slot is 1). But a delta is streamed only once
   * its write is committed, so one that arrived before the request is in the answer.
   * The stream's own snapshot omits `askedAt`: the stream follows it with every change
   * made after it was read, so what it lacks is gone.
   */
  applySnapshot(snapshot, askedAt = this.deltas) {
    const next = new Map();
    for (const slot of snapshot.slots) {
      const held = this.slots.get(slot.id);
      next.set(slot.id, held && held.version > slot.version ? held : slot);
    }
    for (const [id, held] of this.slots) {
      if (next.has(id)) continue;
      // Outside the window the snapshot says nothing: those deltas are newer news.
      if (!this._inWindow(held, snapshot) || this._deltaAt.get(id) > askedAt) next.set(id, held);
      else this._deltaAt.delete(id);
    }
    this.slots = next;
    this.from = snapshot.from;
    this.to = snapshot.to;
    this.version = Math.max(this.version, snapshot.version || 0);
    this.loaded = true;
  }

  /** Apply one slot delta; returns the previous state when it changed something, else undefined. */
  applySlot(slot) {
    if (slot.instructorId !== this.instructorId) return undefined;
    const held = this.slots.get(slot.id);
    if (held && held.version >= slot.version) return undefined;
    this.slots.set(slot.id, slot);
    this.version = Math.max(this.version, slot.version);
    this.deltas += 1;
    this._deltaAt.set(slot.id, this.deltas);
    return held ?? null;
  }

  /** Visible slots (not deleted), sorted by start time. */
  list() {
    return [...this.slots.values()]
      .filter((s) => s.status !== "deleted")
      .sort((a, b) => Date.parse(a.start) - Date.parse(b.start));
  }

  get(slotId) {
    return this.slots.get(slotId);
  }

  _inWindow(slot, snapshot) {
    const start = Date.parse(slot.start);
    return start >= Date.parse(snapshot.from) && start < Date.parse(snapshot.to);
  }
}

/**
 * A live subscription. Listen with callbacks (options) or with addEventListener on:
 * "change" ({schedule, error, isConnected, status, attempt}), "schedule" (snapshot or
 * delta applied), "slot", "booking", "notification" (CloudEvents), "presence" ({count}),
 * "status" ({status, attempt, retryInMs}), "error" ({error}).
 */
export class Subscription extends EventTarget {
  constructor(instructorId, options = {}) {
    super();
    if (!instructorId) throw new TypeError("subscribe() needs an instructor id");
    this.options = { ...DEFAULTS, ...options };
    this.instructorId = instructorId;
    this.schedule = new Schedule(instructorId);
    this.error = null;
    this.status = Status.CONNECTING;
    /** Failed attempts since a connection last worked (shown as "reconnecting (attempt N)"). */
    this.attempt = 0;
    this._openedAt = null; // when the current connection opened
    this.lastEventId = null;
    this.lastUpdate = null;
    this.viewers = null;
    this._source = null;
    this._retryTimer = null;
    this._retryAt = null;
    this._watchdogTimer = null;
    /** Aborts the ticket request or instructor check in flight, if any (a new connect, close()). */
    this._request = null;
    /** Bumped by every connect and by close(): a ticket that arrives late is dropped. */
    this._generation = 0;
    this._connect();
  }

  /** True while the stream is open and delivering live updates. */
  get isConnected() {
    return this.status === Status.OPEN;
  }

  /** True when signed in: private channels, opened with a stream ticket. */
  get isPrivate() {
    return Boolean(this.options.token);
  }

  get scheduleChannel() {
    return `instructors/${this.instructorId}/schedule`;
  }

  /** The signed-in user's own channel (notifications, bookings), when there is a userId. */
  get notificationsChannel() {
    const { userId } = this.options;
    return this.isPrivate && userId ? `users/${userId}/notifications` : null;
  }

  /** The channels a connection carries: the schedule's (until it is GONE) and the user's. */
  get channels() {
    const schedule = this.status === Status.GONE ? null : this.scheduleChannel;
    return [schedule, this.notificationsChannel].filter(Boolean);
  }

  /**
   * The URL of the next connection: the public schedule, or /v1/events with a single-use
   * stream ticket when signed in. The bearer token itself never goes into a URL.
   */
  url(ticket = null) {
    const { baseUrl } = this.options;
    const params = new URLSearchParams();
    let path;
    if (this.isPrivate) {
      path = "/v1/events";
      for (const channel of this.channels) params.append("channel", channel);
      if (ticket) params.set("ticket", ticket);
    } else {
      path = "/api/book-now/schedule-updates";
      params.set("instructorId", this.instructorId);
    }
    if (this.lastEventId) params.set("lastEventId", this.lastEventId);
    return `${baseUrl}${path}?${params}`;
  }

  /** Stop for good: closes the stream and cancels any pending retry. */
  close() {
    this._stop();
    this._setStatus(Status.CLOSED);
  }

  /**
   * The booking-api does not know the instructor: the schedule is never asked again. The
   * signed-in user's channel shared its connection and goes on alone (their bookings still
   * get confirmed and cancelled), reconnecting as any stream does; without one, stop.
   */
  _gone() {
    this._setStatus(Status.GONE);
    if (this.notificationsChannel) this._keepNotifications();
    else this._stop();
  }

  /** SSE: the stream carried the schedule (it ended, or was refused): a new one without it. */
  _keepNotifications() {
    this._stop();
    this._connect();
  }

  _stop() {
    this._generation += 1;
    this._request?.abort();
    this._request = null;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    clearTimeout(this._watchdogTimer);
    this._watchdogTimer = null;
    if (this._source) this._source.close();
    this._source = null;
  }

  /** Reconnect now (e.g. the user pressed "Retry" or the browser came back online). */
  reconnectNow() {
    if ([Status.CLOSED, Status.OPEN].includes(this.status)) return;
    // GONE: only the user's channel can be waiting for a reconnect.
    if (this.status === Status.GONE && this._retryTimer === null) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._connect();
  }

  /**
   * The connection is known to be lost (the page calls it on the browser's `offline`
   * event): the browser does not cut an open stream or socket when its network goes, and
   * the page would say "live" until the watchdog gives up on the silence. Close it now and
   * reconnect after the back-off (a spurious `offline` costs one reconnect; `online` calls
   * reconnectNow() to skip the wait). Closed, or GONE with no channel of the user's: nothing
   * is connected.
   */
  connectionLost() {
    if (this.status === Status.CLOSED) return;
    if (this.status === Status.GONE && !this.notificationsChannel) return;
    this._stop();
    this._countFailure();
    this._scheduleRetry(Status.RECONNECTING);
  }

  _connect() {
    if (this._source) this._source.close();
    this._source = null;
    const generation = ++this._generation;
    this._request?.abort();
    this._request = null;
    if (!this.isPrivate) {
      this._open(this.url());
      return;
    }
    // A fresh ticket for every (re)connect: each one opens a single stream. The request is
    // given up after requestTimeoutMs (then retried below), or when this connect is replaced.
    const request = new AbortController();
    this._request = request;
    const signal = AbortSignal.any([request.signal, AbortSignal.timeout(this.options.requestTimeoutMs)]);
    this._fetchTicket(signal).then(
      (ticket) => {
        if (generation !== this._generation) return;
        this._request = null;
        this._open(this.url(ticket));
      },
      (error) => {
        if (generation !== this._generation) return;
        this._request = null;
        this.attempt += 1;
        if (error instanceof SignInExpired) {
          // Retrying cannot help: the server refuses this token every time. (GONE stays:
          // what the page shows is the schedule's end, and `error` says the rest.)
          this._fail(error);
          if (this.status !== Status.GONE) this._setStatus(Status.CLOSED);
          return;
        }
        // A busy server's `Retry-After` (a full ticket store, the edge's rate limit) is
        // waited out: every page asking again at once would keep it busy.
        this._scheduleRetry(Status.DISCONNECTED, error.retryAfterMs ?? 0);
      },
    );
  }

  /** POST /api/stream-tickets with the bearer token (in a header) → a 30 s single-use ticket. */
  async _fetchTicket(signal) {
    const { baseUrl } = this.options;
    const token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    if (!token) throw new SignInExpired("You are signed out: sign in again to get live updates.");
    const response = await this.options.fetch(`${baseUrl}/api/stream-tickets`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      cache: "no-store",
      signal,
    });
    if (response.status === 401) {
      throw new SignInExpired("Your sign-in has expired: sign in again to get live updates.");
    }
    if (!response.ok) {
      throw new TicketUnavailable(`no stream ticket (HTTP ${response.status})`, retryAfterMs(response));
    }
    const body = await response.json();
    if (typeof body.ticket !== "string" || !body.ticket) throw new Error("no stream ticket in the answer");
    return body.ticket;
  }

  _open(url) {
    const source = this.options.eventSourceFactory(url);
    this._source = source;
    let bye = null; // the reason of the server's `bye`, when it said goodbye
    let opened = false;
    this._armWatchdog(source);
    source.onopen = () => {
      if (source !== this._source) return;
      opened = true;
      this._armWatchdog(source);
      this._openedAt = Date.now();
      this.error = null;
      this._setStatus(Status.OPEN);
    };
    source.onerror = () => {
      if (source !== this._source) return;
      this._countFailure();
      if (source.readyState === EventSource.CLOSED || this.isPrivate) {
        // The browser gave up (HTTP error, wrong content type, proxy error page), or the
        // stream was opened with a ticket, which the browser's own retry would present a
        // second time (refused: tickets are single-use). Reconnect ourselves, with a fresh
        // ticket, after a back-off, from the last event we saw.
        const gaveUp = source.readyState === EventSource.CLOSED;
        source.close();
        this._source = null;
        const wait = bye === "shutdown" ? this._shutdownDelay() : 0;
        const status = gaveUp ? Status.DISCONNECTED : Status.RECONNECTING;
        // The user's stream after GONE carries no schedule: nothing to check.
        if (opened || this.status === Status.GONE) this._scheduleRetry(status, wait);
        else this._retryUnlessGone(status);
      } else {
        // EventSource retries by itself and sends Last-Event-ID.
        this._setStatus(Status.RECONNECTING);
      }
    };
    const on = (name, handler) =>
      source.addEventListener(name, (event) => {
        if (source !== this._source) return;
        this._armWatchdog(source);
        if (event.lastEventId) this.lastEventId = event.lastEventId;
        let payload;
        try {
          payload = JSON.parse(event.data);
        } catch (error) {
          this._fail(new Error(`unreadable ${name} frame: ${error.message}`));
          return;
        }
        if (DATA_EVENTS.has(name)) this._delivered();
        handler(payload);
      });
    on("snapshot", (frame) => this._onSnapshot(frame));
    on("slot", (event) => this._onSlot(event));
    on("booking", (event) => this._emit("booking", event));
    on("notification", (event) => this._emit("notification", event));
    on("presence", (frame) => this._onPresence(frame));
    on("resync", (frame) => this._emit("resync", frame));
    on("bye", (frame) => {
      bye = frame.reason;
      this._emit("bye", frame);
      if (bye === "instructor-unknown") this._gone();
    });
    on("heartbeat", () => {});
  }

  /**
   * A stream refused before it opened. EventSource hides the status, so the gateway's 404
   * (unknown instructor) looks like its 503: ask the booking-api, whose 404 for the schedule
   * settles it (GONE). Any other answer, or none within requestTimeoutMs → the back-off.
   * A one-second window in the past: the answer is an empty schedule, cheap to read.
   */
  _retryUnlessGone(status) {
    const generation = this._generation;
    const request = new AbortController();
    this._request = request;
    const { baseUrl, requestTimeoutMs } = this.options;
    const url =
      `${baseUrl}/api/instructors/${encodeURIComponent(this.instructorId)}/schedule` +
      "?from=2000-01-01T00:00:00Z&to=2000-01-01T00:00:01Z";
    const signal = AbortSignal.any([request.signal, AbortSignal.timeout(requestTimeoutMs)]);
    this.options
      .fetch(url, { headers: { Accept: "application/json" }, cache: "no-store", signal })
      .then(
        (response) => response.status === 404,
        () => false,
      )
      .then((gone) => {
        if (generation !== this._generation) return;
        this._request = null;
        if (gone) this._gone();
        else this._scheduleRetry(status);
      });
  }

  /** (Re)start the countdown to a reconnect; every frame of the current source resets it. */
  _armWatchdog(source) {
    clearTimeout(this._watchdogTimer);
    this._watchdogTimer = setTimeout(() => {
      this._watchdogTimer = null;
      if (source !== this._source) return;
      source.close();
      this._source = null;
      this._countFailure();
      this._scheduleRetry(Status.RECONNECTING);
    }, this.options.heartbeatTimeoutMs);
  }

  /** The connection delivered data: it works, so the next failure is the first again. */
  _delivered() {
    this.attempt = 0;
  }

  /**
   * The connection ended: one more failed attempt, unless it had stayed up `healthyAfterMs`
   * (then it worked, and this is the first). Not reset on open: a server that accepts and
   * then refuses or ends at once would otherwise be retried at the initial back-off forever.
   */
  _countFailure() {
    if (this._openedAt !== null && Date.now() - this._openedAt >= this.options.healthyAfterMs) this.attempt = 0;
    this._openedAt = null;
    this.attempt += 1;
  }

  /** A gateway shut down: come back in its window, spread out like the pages it served. */
  _shutdownDelay() {
    const { shutdownRetryMs, shutdownJitterMs } = this.options;
    return shutdownRetryMs + Math.round(Math.random() * shutdownJitterMs);
  }

  /** Reconnect after the back-off, or after `minDelayMs` if that is longer. */
  _scheduleRetry(status = Status.DISCONNECTED, minDelayMs = 0) {
    this._retryAfter(this._retryDelay(minDelayMs), status, () => {
      this._setStatus(Status.RECONNECTING);
      this._connect();
    });
  }

  /** The wait before the next attempt: the back-off for `attempt`, at least `minDelayMs`. */
  _retryDelay(minDelayMs = 0) {
    const { initialBackoffMs, maxBackoffMs } = this.options;
    // Capped exponential backoff with full jitter: many pages dropped at once by one
    // failing gateway must not all come back in the same instant.
    const ceiling = Math.min(maxBackoffMs, initialBackoffMs * 2 ** Math.min(this.attempt - 1, 16));
    return Math.max(minDelayMs, Math.round(ceiling / 2 + (Math.random() * ceiling) / 2));
  }

  /** Show `status` with the wait, then `action()` after `delay` ms (replacing a pending retry). */
  _retryAfter(delay, status, action) {
    clearTimeout(this._retryTimer);
    this._retryAt = Date.now() + delay;
    this._setStatus(status, delay);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      action();
    }, delay);
  }

  _onSnapshot(frame) {
    const snapshot = frame.schedule;
    if (!snapshot || snapshot.instructorId !== this.instructorId) return;
    this.schedule.applySnapshot(snapshot);
    this._touch();
    this._emit("schedule", { schedule: this.schedule, kind: "snapshot" });
  }

  _onSlot(event) {
    const slot = event.data;
    if (!slot) return;
    const previous = this.schedule.applySlot(slot);
    if (previous === undefined) return; // stale or foreign: never move backwards
    this._touch();
    this._emit("slot", event);
    this._emit("schedule", { schedule: this.schedule, kind: "delta", slot, previous });
  }

  _onPresence(frame) {
    if (frame.channel !== `instructors/${this.instructorId}/schedule`) return;
    this.viewers = frame.count;
    this._emit("presence", { count: frame.count });
  }

  _touch() {
    this.lastUpdate = new Date();
  }

  _fail(error) {
    this.error = error;
    this._emit("error", { error });
  }

  _setStatus(status, retryInMs = null) {
    if (this.status === Status.GONE && status !== Status.CLOSED) return; // final but for close()
    this.status = status;
    this._emit("status", { status, attempt: this.attempt, retryInMs });
  }

  _emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
    const callback = this.options[`on${name[0].toUpperCase()}${name.slice(1)}`];
    if (typeof callback === "function") callback(detail, this);
    if (name !== "change") {
      this._emit("change", {
        schedule: this.schedule,
        error: this.error,
        isConnected: this.isConnected,
        status: this.status,
        attempt: this.attempt,
      });
    }
  }
}

// ---------------------------------------------------------------- WebSocket transport

/** WebSocket close codes the gateway uses (services/push-gateway/README.md). */
export const CloseCode = Object.freeze({
  SHUTDOWN: 1001,
  UNSUPPORTED_DATA: 1003,
  INVALID_DATA: 1007,
  POLICY: 1008,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  TOKEN_EXPIRED: 4001,
  PING_TIMEOUT: 4002,
  SLOW_CONSUMER: 4008,
});

const WS_DEFAULTS = Object.freeze({
  webSocketFactory: (url) => new WebSocket(url),
});

/**
 * The same subscription over the gateway's WebSocket (`GET /v1/ws`): one connection,
 * when signed in an `auth` op with a fresh stream ticket (fetched by the base class before
 * every connect, as for SSE), then one `subscribe` op per channel, each resumed from the
 * `id` of the last message it received (`since`). Events, merge by version, statuses and
 * callbacks are the SSE ones; only the connection (`url`, `_open`, `_stop`) differs.
 */
export class WebSocketSubscription extends Subscription {
  constructor(instructorId, options = {}) {
    super(instructorId, { ...WS_DEFAULTS, ...options });
  }

  /**
   * ws(s)://…/v1/ws on the page's origin, or on `baseUrl`'s. The ticket is kept for the
   * `auth` message rather than put in the URL.
   */
  url(ticket = null) {
    this._ticket = ticket;
    const base = new URL(this.options.baseUrl || "/", globalThis.location?.href);
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    base.pathname = `${base.pathname.replace(/\/$/, "")}/v1/ws`;
    base.search = "";
    return base.toString();
  }

  _stop() {
    const socket = this._socket;
    this._socket = null;
    super._stop();
    socket?.close(1000, "closed by the page");
  }

  _open(url) {
    this._since ??= new Map(); // channel → id of the last message received on it
    this._asked ??= new Set(); // channels a subscribe was ever sent for
    this._refused = new Set(); // channels whose subscribe was refused for now, to send again
    this._unresumed = new Set(); // subscribed again without `since`: announce once accepted
    this._socket?.close(1000, "replaced");
    const ticket = this._ticket;
    const socket = this.options.webSocketFactory(url);
    this._socket = socket;
    // From the start, as for SSE: a proxy that holds the upgrade request never opens the
    // socket nor closes it, and the browser waits as long as the TCP connection lives.
    this._armWatchdog();
    socket.onopen = () => {
      if (socket !== this._socket) return;
      if (ticket) this._send({ op: "auth", ticket });
      for (const channel of this.channels) this._subscribe(channel);
      this._openedAt = Date.now();
      this.error = null;
      this._setStatus(Status.OPEN);
      this._armWatchdog();
    };
    socket.onmessage = (message) => {
      if (socket !== this._socket) return;
      this._armWatchdog();
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        this._fail(new Error(`unreadable message: ${error.message}`));
        return;
      }
      this._onMessage(frame);
    };
    socket.onclose = (event) => {
      if (socket !== this._socket) return;
      this._socket = null;
      clearTimeout(this._watchdogTimer);
      if (this.status === Status.CLOSED) return;
      const refused = event.code === CloseCode.POLICY;
      if (refused) this._fail(new Error(`refused: ${event.reason}`));
      // As with SSE: a connection that was open and broke is RECONNECTING (amber); one
      // that never opened or was refused is DISCONNECTED.
      const broke = this.status === Status.OPEN && !refused;
      this._countFailure();
      const wait = event.code === CloseCode.SHUTDOWN ? this._shutdownDelay() : 0;
      this._scheduleRetry(broke ? Status.RECONNECTING : Status.DISCONNECTED, wait);
    };
  }

  _onMessage({ event, id, data }) {
    const channel =
      event === "snapshot" || event === "resync" || event === "presence"
        ? data?.channel
        : event === "slot"
          ? this.scheduleChannel
          : event === "booking" || event === "notification"
            ? this.notificationsChannel
            : null;
    if (id && channel) {
      this._since.set(channel, id);
      this.lastEventId = id;
    }
    if (DATA_EVENTS.has(event)) this._delivered();
    switch (event) {
      case "snapshot":
        return this._onSnapshot(data);
      case "slot":
        return this._onSlot(data);
      case "booking":
      case "notification":
      case "resync":
      case "bye":
        return this._emit(event, data);
      case "presence":
        return this._onPresence(data);
      case "subscribed":
        return this._onSubscribed(data);
      case "error":
        return this._onRefused(data);
      default: // unsubscribed, authenticated, heartbeat, pong
        return undefined;
    }
  }

  /**
   * Resumed from the last id received on the channel (`since`), when there is one. A
   * notifications channel has none until a notification comes (it gets no snapshot), and
   * subscribed again without one it starts at the end of the log: what came meanwhile is
   * missed. Once accepted, that is announced as the gateway does when it cannot resume a
   * notifications channel (`resync` `history-unavailable`), so the page reads it again.
   */
  _subscribe(channel) {
    const since = this._since.get(channel);
    if (!since && channel === this.notificationsChannel && this._asked.has(channel)) this._unresumed.add(channel);
    this._asked.add(channel);
    this._send(since ? { op: "subscribe", channel, since } : { op: "subscribe", channel });
  }

  /** A subscribe was accepted: live again once no channel waits to be subscribed again. */
  _onSubscribed({ channel }) {
    if (this._unresumed.delete(channel)) this._emit("resync", { channel, reason: "history-unavailable" });
    if (!this._refused.delete(channel) || this._refused.size) return;
    this._setStatus(Status.OPEN);
  }

  /**
   * The gateway refused an op; the connection stays open. A subscribe to one of our
   * channels refused for now (503 "gateway is starting" while its Kafka partitions are not
   * assigned, 429 past the subscribe rate) is sent again after the back-off, or after the
   * message's `retryAfter` seconds if longer; until it is accepted the status is not OPEN.
   * A 404 for the schedule channel: the booking-api does not know the instructor (GONE).
   * Any other refusal (400, 401, 403, 404, 409) is an `error`: it would be refused again.
   */
  _onRefused(data) {
    if (data.op === "subscribe" && data.channel === this.scheduleChannel && data.status === 404) {
      this._gone();
      return;
    }
    const ours = data.channel === this.scheduleChannel || data.channel === this.notificationsChannel;
    const forNow = data.status === 429 || data.status >= 500;
    if (data.op !== "subscribe" || !ours || !forNow) {
      this._fail(new Error(`${data.channel}: ${data.detail}`));
      return;
    }
    this._refused.add(data.channel);
    this.attempt += 1;
    const socket = this._socket;
    this._retryAfter(this._retryDelay((data.retryAfter ?? 0) * 1000), Status.DISCONNECTED, () => {
      if (socket !== this._socket) return;
      this._setStatus(Status.RECONNECTING);
      for (const channel of this._refused) this._subscribe(channel);
    });
  }

  /**
   * The gateway ended the schedule's subscription alone (`error` 404): the user's goes on, on
   * this socket, and is the only one subscribed again after a reconnect (`channels`).
   */
  _keepNotifications() {
    this._refused.delete(this.scheduleChannel);
  }

  _send(op) {
    this._socket?.send(JSON.stringify(op));
  }

  _armWatchdog() {
    clearTimeout(this._watchdogTimer);
    const socket = this._socket;
    this._watchdogTimer = setTimeout(() => {
      this._watchdogTimer = null;
      if (socket !== this._socket || !socket) return;
      // Nothing for too long: a half-open connection. Replace it (resuming with `since`).
      socket.onclose({ code: CloseCode.PING_TIMEOUT, reason: "no heartbeat" });
      socket.close(4000, "no heartbeat");
    }, this.options.heartbeatTimeoutMs);
  }
}

/**
 * Subscribe to an instructor's schedule.
 * @param {string} instructorId
 * @param {object} [options] transport ("sse", the default, or "websocket"), baseUrl, token
 *   (a JWT or a function returning one), userId, initialBackoffMs, maxBackoffMs,
 *   requestTimeoutMs, eventSourceFactory, fetch, webSocketFactory, heartbeatTimeoutMs, and callbacks
 *   onChange, onSchedule, onSlot, onBooking,
 *   onNotification, onPresence, onStatus, onError, onResync, onBye.
 * @returns {Subscription}
 */
export function subscribe(instructorId, options = {}) {
  if (options.transport === "websocket") return new WebSocketSubscription(instructorId, options);
  return new Subscription(instructorId, options);
}
