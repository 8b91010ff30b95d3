// Tether browser client: one session over the gateway's WebSocket (docs/protocol.md §10).
//
//   import { TetherClient } from '/client/tether.js';
//   const client = new TetherClient({ session: 'support-42', token });
//   client.on('message', ({ message }) => render(message));
//   client.connect();
//   await client.send('Where is my order?');
//
// It reconnects with exponential backoff and jitter, resumes from its position (kept in
// localStorage per session, with the view it belongs to, so a reloaded page resumes
// instead of replaying everything), merges compacted replays without duplicating text
// (./merge.js), resends unacknowledged frames with the same ids after a reconnect, keeps
// unacknowledged user messages in storage too (so a reload or a closed tab loses none), and
// reports messages, runs, approvals, presence, the agent's state and its own connection
// state as events. No dependencies, no build step; types in ./tether.d.ts.

import {
  agentState,
  applyCaughtUp,
  applyEvent,
  applyHello,
  applyPresence,
  cloneView,
  createView,
  membersFromHello,
  messageList,
  parseView,
  pendingApprovals,
  activeRun,
} from './merge.js';

export * from './merge.js';

/** Close codes after which reconnecting with the same request is pointless (§13). */
export const FATAL_CLOSE_CODES = Object.freeze([4400, 4401, 4403]);

/** Storage key of the index of stored sessions (key -> last save, Unix ms). */
export const STORAGE_INDEX_KEY = 'tether:v1:~sessions'; // '~' is never in a session id

/** Stored user messages not yet acknowledged are kept under `{storageKey}{OUTBOX_SUFFIX}`. */
export const OUTBOX_SUFFIX = ':outbox';

/** A stored user message older than this (ms) is dropped instead of resent (24 h). */
export const DEFAULT_OUTBOX_MAX_AGE = 24 * 60 * 60 * 1000;

/** Ids must match this (§2). */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,128}$/;

/** @type {Required<BackoffOptions>} */
export const DEFAULT_BACKOFF = Object.freeze({ initial: 250, max: 15000, factor: 2, jitter: 0.5 });

/**
 * @typedef {object} BackoffOptions
 * @property {number} [initial]  first delay, ms (250)
 * @property {number} [max]      cap, ms (15000)
 * @property {number} [factor]   growth per attempt (2)
 * @property {number} [jitter]   fraction of the delay taken off at random, 0..1 (0.5)
 *
 * @typedef {'idle' | 'connecting' | 'replaying' | 'live' | 'reconnecting' | 'closed' | 'failed'} ConnectionState
 *
 * @typedef {{getItem(key: string): string | null, setItem(key: string, value: string): void, removeItem(key: string): void}} StorageLike
 *
 * @typedef {object} ClientOptions
 * @property {string} session
 * @property {string | (() => string | Promise<string>)} token  a JWT, or a function that returns a fresh one for every connect
 * @property {string} [url]          gateway base URL (http(s):// or ws(s)://); default: this page's origin
 * @property {StorageLike | null} [storage]  where the position, view and unacknowledged user messages are kept; default localStorage; null: nowhere
 * @property {string} [storageKey]   default `tether:v1:{session}` (the outbox: that plus `:outbox`)
 * @property {number} [outboxMaxAge] ms after which a stored, unacknowledged message is dropped instead of resent (24 h)
 * @property {number} [maxStoredSessions]  sessions kept in storage, least recently saved dropped first (20)
 * @property {string} [device]       a device name shown in presence
 * @property {BackoffOptions} [backoff]
 * @property {number} [pingInterval] ms between client pings once live (20000); no frame for twice that: reconnect
 * @property {number} [helloTimeout] ms to wait for `hello` after connecting (10000)
 * @property {typeof WebSocket} [WebSocket]  a WebSocket implementation (default the global one)
 * @property {() => number} [random] random source in [0, 1) for jitter and ids
 */

/**
 * Delay before reconnect attempt `attempt` (0 first): `initial * factor^attempt`, capped at
 * `max`, minus up to `jitter` of it at random (so clients cut off together spread out).
 * @param {number} attempt
 * @param {BackoffOptions} [options]
 * @param {() => number} [random]
 * @returns {number} ms
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const o = { ...DEFAULT_BACKOFF, ...options };
  const base = Math.min(o.max, o.initial * Math.pow(o.factor, Math.max(0, attempt)));
  return Math.max(0, Math.round(base * (1 - o.jitter * random())));
}

const ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyz';

/**
 * A random id: `prefix` plus 25 characters of [0-9a-z] (like the Python SDK's ids).
 * @param {string} prefix
 * @returns {string}
 */
export function newId(prefix = '') {
  const bytes = new Uint8Array(25);
  globalThis.crypto.getRandomValues(bytes);
  let out = prefix;
  for (const byte of bytes) out += ALPHABET[byte % 36];
  return out;
}

/** An `error` frame (or a refused request) as an Error. */
export class TetherError extends Error {
  /**
   * @param {string} code     the error code (§13), e.g. `approval_closed`
   * @param {string} message
   * @param {string | null} [id]  the id of the frame it answers
   */
  constructor(code, message, id = null) {
    super(message);
    this.name = 'TetherError';
    this.code = code;
    this.id = id;
  }
}

/**
 * @typedef {object} Ack
 * @property {'ack'} [type]
 * @property {string} id
 * @property {number} seq
 * @property {boolean} duplicate
 * @property {string} [approval]
 * @property {string} [option]
 *
 * @typedef {object} PendingMessage   a message sent but not yet seen in the log
 * @property {string} id
 * @property {string} text
 * @property {number} ts
 *
 * @typedef {{frame: Record<string, any>, resolve: (ack: Ack) => void, reject: (error: Error) => void, sent: boolean, tries?: number}} OutboxEntry
 */

/**
 * A connection to one session that survives network cuts, gateway restarts and reloads.
 *
 * Events (`client.on(type, fn)` calls `fn(detail)`; or `addEventListener`, detail in
 * `event.detail`): `state`, `hello`, `reset`, `event`, `message`, `run`, `approval`,
 * `control`, `caughtup`, `presence`, `agentstate`, `pending`, `ack`, `error`, `change`.
 */
export class TetherClient extends EventTarget {
  /** @param {ClientOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.session !== 'string' || !ID_PATTERN.test(options.session)) {
      throw new TypeError('session must match [A-Za-z0-9_-]{1,128}');
    }
    if (typeof options.token !== 'string' && typeof options.token !== 'function') {
      throw new TypeError('token must be a string or a function returning one');
    }
    this.session = options.session;
    /** @private */ this._token = options.token;
    /** @private */ this._url = wsBase(options.url);
    /** @private */ this._storage = options.storage === undefined ? defaultStorage() : options.storage;
    /** @private */ this._storageKey = options.storageKey ?? `tether:v1:${options.session}`;
    /** @private */ this._outboxKey = `${this._storageKey}${OUTBOX_SUFFIX}`;
    /** @private */ this._outboxMaxAge = options.outboxMaxAge ?? DEFAULT_OUTBOX_MAX_AGE;
    /** @private */ this._maxStored = Math.max(1, options.maxStoredSessions ?? 20);
    /** @private */ this._device = options.device ?? '';
    /** @private */ this._backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    /** @private */ this._pingInterval = options.pingInterval ?? 20000;
    /** @private */ this._helloTimeout = options.helloTimeout ?? 10000;
    /** @private */ this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** @private */ this._random = options.random ?? Math.random;

    /** The merged view: messages, runs, approvals, controls, position and epoch. */
    this.view = this._restore();
    /** @type {Record<string, import('./merge.js').Member>} who is in the session, by connection */
    this.members = {};
    /** @type {Map<string, PendingMessage>} own messages sent but not yet in the log */
    this.pending = new Map();
    /** @type {ConnectionState} */
    this.state = 'idle';
    /** @type {import('./merge.js').AgentState} */
    this.agentState = agentState(this.members, this.view);
    /** Reconnect attempts since the last time the connection was live. */
    this.attempt = 0;
    /** @type {Record<string, any> | null} the last `hello` */
    this.hello = null;

    /** @private @type {WebSocket | null} */ this._ws = null;
    /** @private @type {import('./merge.js').View | null} the view before the current replay */ this._base = null;
    /** @private @type {Map<string, OutboxEntry>} */ this._outbox = new Map();
    /** @private @type {any} */ this._retryTimer = null;
    /** @private @type {any} */ this._resendTimer = null;
    /** @private @type {any} */ this._helloTimer = null;
    /** @private @type {any} */ this._pingTimer = null;
    /** @private @type {any} */ this._saveTimer = null;
    /** @private */ this._lastFrameAt = 0;
    /** @private */ this._pings = 0;
    /** @private */ this._stopped = true;
    /** @private @type {Record<string, any> | null} */ this._lastError = null;
    /** @private */ this._onWake = () => this.wake();
    /** @private */ this._onPageHide = () => this.save();
    /** @private */ this._onVisible = () => {
      if (globalThis.document?.visibilityState === 'visible') this.wake();
    };
    /** @private @type {Set<string>} ids of user messages this client put in (or took from) storage */
    this._persisted = new Set();
    /** @private @type {PendingMessage[]} stored messages too old to resend (reported on connect) */
    this._expired = [];
    this._restoreOutbox();
  }

  // ---- public API ----------------------------------------------------------------------

  /**
   * Listen to an event; returns a function that stops listening.
   * @param {string} type
   * @param {(detail: any) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    /** @param {Event} event */
    const handler = (event) => listener(/** @type {CustomEvent} */ (event).detail);
    this.addEventListener(type, handler);
    return () => this.removeEventListener(type, handler);
  }

  /** Open the connection (and keep it open until `close()`). */
  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    globalThis.addEventListener?.('online', this._onWake);
    globalThis.addEventListener?.('pagehide', this._onPageHide);
    globalThis.document?.addEventListener?.('visibilitychange', this._onVisible);
    for (const message of this._expired.splice(0)) {
      const hours = Math.round(this._outboxMaxAge / 3600000);
      this._emit('error', { code: 'outbox_expired', message: `a message not sent within ${hours} h was dropped: ${message.text.slice(0, 80)}`, id: message.id });
    }
    void this._open();
  }

  /**
   * Close for good: no reconnect; unacknowledged requests are rejected (`closed`). Stored
   * user messages stay stored: the next client of this session resends them.
   */
  close() {
    this._stopped = true;
    globalThis.removeEventListener?.('online', this._onWake);
    globalThis.removeEventListener?.('pagehide', this._onPageHide);
    globalThis.document?.removeEventListener?.('visibilitychange', this._onVisible);
    clearTimeout(this._retryTimer);
    clearTimeout(this._resendTimer);
    const ws = this._ws;
    if (ws !== null) {
      this._detach(ws);
      try {
        ws.close(1000, 'closed by client');
      } catch {
        // already closing
      }
      this._closed(ws, 1000, 'closed by client');
    }
    for (const entry of this._outbox.values()) entry.reject(new TetherError('closed', 'the client was closed'));
    this._outbox.clear();
    this.save();
    this._setState('closed');
  }

  /** Reconnect now if waiting to (the network is back, the page is visible again). */
  wake() {
    if (this.state === 'reconnecting' && !this._stopped) {
      clearTimeout(this._retryTimer);
      void this._open();
    }
  }

  /**
   * Forget the stored position and view (the next connect replays everything). Unacknowledged
   * user messages stay stored.
   */
  forget() {
    this._base = null;
    this.view = createView();
    try {
      this._storage?.removeItem(this._storageKey);
    } catch {
      // storage unavailable
    }
    this._emit('reset', { reason: 'forget' });
    this._emit('change', { kind: 'reset' });
  }

  /** @returns {import('./merge.js').Message[]} the messages, in order */
  messages() {
    return messageList(this.view);
  }

  /** @returns {import('./merge.js').Approval[]} approvals waiting for an answer */
  approvals() {
    return pendingApprovals(this.view);
  }

  /** @returns {import('./merge.js').Run | null} the run in progress, if any */
  activeRun() {
    return activeRun(this.view);
  }

  /**
   * Send a user message. Resolves with the `ack` (`duplicate` when that id was stored
   * before); queued while disconnected and resent with the same id after a reconnect, and
   * kept in storage until acknowledged, so a reloaded page resends it. Never throws: when
   * storage fails, the message is kept in memory only.
   * @param {string} text
   * @param {{id?: string}} [options]
   * @returns {Promise<Ack>}
   */
  send(text, options = {}) {
    if (typeof text !== 'string') return Promise.reject(new TypeError('text must be a string'));
    const id = options.id ?? newId('u-');
    if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
      return Promise.reject(new TetherError('invalid_id', 'id must match [A-Za-z0-9_-]{1,128}'));
    }
    /** @type {PendingMessage} */
    const message = { id, text, ts: Date.now() };
    this.pending.set(id, message);
    this._storeMessage(message);
    this._emit('pending', { pending: [...this.pending.values()] });
    return this._request({ type: 'send', id, text });
  }

  /**
   * Ask the agent to stop a run (default: the session's active run).
   * @param {{run?: string, id?: string}} [options]
   * @returns {Promise<Ack>}
   */
  cancel(options = {}) {
    /** @type {Record<string, any>} */
    const frame = { type: 'cancel', id: options.id ?? newId('c-') };
    if (options.run) frame.run = options.run;
    return this._request(frame);
  }

  /**
   * Give the running agent an extra instruction.
   * @param {string} text
   * @param {{run?: string, id?: string}} [options]
   * @returns {Promise<Ack>}
   */
  steer(text, options = {}) {
    /** @type {Record<string, any>} */
    const frame = { type: 'steer', id: options.id ?? newId('st-'), text };
    if (options.run) frame.run = options.run;
    return this._request(frame);
  }

  /**
   * Answer an approval with one of its options. Rejects with `approval_closed` when
   * another answer (or the expiry) came first.
   * @param {string} approval
   * @param {string} option
   * @param {{run?: string, id?: string}} [options]
   * @returns {Promise<Ack>}
   */
  approve(approval, option, options = {}) {
    const run = options.run ?? this.view.approvals[approval]?.run;
    if (!run) return Promise.reject(new TetherError('unknown_approval', `approval ${approval} is not known`));
    return this._request({ type: 'approve', id: options.id ?? newId('ap-'), approval, run, option });
  }

  /** Write the position and view to storage now (only between replays: they must agree). */
  save() {
    clearTimeout(this._saveTimer);
    this._saveTimer = null;
    if (this._storage === null || this._base !== null) return;
    try {
      this._storage.setItem(this._storageKey, JSON.stringify(this.view));
      this._prune();
    } catch {
      try {
        this._storage.removeItem(this._storageKey); // never a stale view with a newer position
      } catch {
        // storage unavailable
      }
    }
  }

  // ---- connection ----------------------------------------------------------------------

  /** @private */
  async _open() {
    clearTimeout(this._retryTimer);
    this._setState('connecting');
    let token;
    try {
      token = typeof this._token === 'function' ? await this._token() : this._token;
    } catch (error) {
      this._emit('error', { code: 'token', message: String(error), id: null });
      this._retry(0, 'token');
      return;
    }
    if (this._stopped || this.state !== 'connecting') return;
    const params = new URLSearchParams({ token, since: String(this.view.position) });
    if (this.view.position > 0 && this.view.epoch) params.set('epoch', this.view.epoch);
    if (this._device) params.set('device', this._device);
    const url = `${this._url}/v1/sessions/${encodeURIComponent(this.session)}/ws?${params}`;
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (error) {
      this._lastError = { code: 'bad_url', message: String(error) };
      this._setState('failed', { code: 0, reason: String(error) });
      return;
    }
    this._ws = ws;
    this._lastError = null;
    ws.onmessage = (event) => this._onMessage(ws, event.data);
    ws.onclose = (event) => this._closed(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    this._helloTimer = setTimeout(() => this._drop(ws, 4000, 'no hello'), this._helloTimeout);
  }

  /**
   * @private
   * @param {WebSocket} ws
   * @param {unknown} data
   */
  _onMessage(ws, data) {
    if (ws !== this._ws || typeof data !== 'string') return;
    this._lastFrameAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame === null || typeof frame !== 'object') return;
    switch (frame.type) {
      case 'hello':
        return this._onHello(frame);
      case 'event':
        return this._onEvent(frame);
      case 'caught_up':
        return this._onCaughtUp(ws, frame);
      case 'presence':
        if (applyPresence(this.members, frame)) {
          this._emit('presence', { members: Object.values(this.members), frame });
          this._updateAgentState();
        }
        return;
      case 'ack':
        return this._onAck(frame);
      case 'error':
        return this._onError(frame);
      default:
        return; // pong and unknown frame types
    }
  }

  /**
   * @private
   * @param {Record<string, any>} frame
   */
  _onHello(frame) {
    clearTimeout(this._helloTimer);
    this.hello = frame;
    if (applyHello(this.view, /** @type {{epoch: string, recovered: boolean}} */ (frame))) {
      this._emit('reset', { reason: 'not_recovered' });
    }
    this._base = cloneView(this.view);
    this.members = membersFromHello(frame.presence);
    this._setState('replaying');
    this._emit('hello', frame);
    this._emit('presence', { members: Object.values(this.members), frame });
    this._updateAgentState();
    this._emit('change', { kind: 'hello' });
  }

  /**
   * @private
   * @param {Record<string, any>} frame
   */
  _onEvent(frame) {
    const replay = this._base !== null;
    const change = applyEvent(this.view, frame.seq, frame.event);
    if (change === null) return;
    this._emit('event', { seq: frame.seq, event: frame.event, replay });
    if (change.kind === 'message' && change.id !== undefined) {
      const message = this.view.messages[change.id];
      if (this.pending.delete(change.id)) this._emit('pending', { pending: [...this.pending.values()] });
      if (this._persisted.has(change.id) && message.role === 'user') this._unstoreMessage(change.id);
      this._emit('message', { message, event: frame.event, seq: frame.seq, replay });
    } else if (change.kind === 'run' && change.id !== undefined) {
      this._emit('run', { run: this.view.runs[change.id], event: frame.event, seq: frame.seq, replay });
    } else if (change.kind === 'approval' && change.id !== undefined) {
      this._emit('approval', { approval: this.view.approvals[change.id], event: frame.event, seq: frame.seq, replay });
    } else if (change.kind === 'control') {
      this._emit('control', { control: this.view.controls[this.view.controls.length - 1], event: frame.event, seq: frame.seq, replay });
    }
    this._updateAgentState();
    this._emit('change', { kind: change.kind, id: change.id, replay });
    if (!replay) this._saveSoon();
  }

  /**
   * @private
   * @param {WebSocket} ws
   * @param {Record<string, any>} frame
   */
  _onCaughtUp(ws, frame) {
    applyCaughtUp(this.view, frame.seq);
    this._base = null;
    this.attempt = 0;
    this._setState('live');
    this._emit('caughtup', { seq: frame.seq });
    this.save();
    this._settleKnownSends();
    this._flush();
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._ping(ws), this._pingInterval);
  }

  /**
   * @private
   * @param {Record<string, any>} frame
   */
  _onAck(frame) {
    const entry = this._outbox.get(frame.id);
    if (entry !== undefined) {
      this._outbox.delete(frame.id);
      entry.resolve(/** @type {Ack} */ (frame));
    }
    if (this._persisted.has(frame.id)) this._unstoreMessage(frame.id);
    if (this.pending.has(frame.id) && this.view.messages[frame.id] !== undefined) {
      this.pending.delete(frame.id);
      this._emit('pending', { pending: [...this.pending.values()] });
    }
    this._emit('ack', frame);
  }

  /**
   * @private
   * @param {Record<string, any>} frame
   */
  _onError(frame) {
    this._lastError = frame;
    const id = typeof frame.id === 'string' ? frame.id : null;
    const entry = id !== null ? this._outbox.get(id) : undefined;
    if (id !== null && entry !== undefined && frame.code === 'unavailable') {
      // JetStream did not answer: nothing was refused. Keep it queued and send it again
      // with the same id after a backoff (the log dedupes it if it was stored after all).
      entry.sent = false;
      entry.tries = (entry.tries ?? 0) + 1;
      this._resendLater(backoffDelay(entry.tries - 1, this._backoff, this._random));
    } else if (id !== null && entry !== undefined) {
      this._outbox.delete(id);
      entry.reject(new TetherError(String(frame.code), String(frame.message ?? ''), id));
      if (this.pending.delete(id)) this._emit('pending', { pending: [...this.pending.values()] });
      if (this._persisted.has(id)) this._unstoreMessage(id); // refused: a resend would be too
    }
    this._emit('error', { code: frame.code, message: frame.message, id });
  }

  /**
   * @private
   * @param {WebSocket} ws
   */
  _ping(ws) {
    if (ws !== this._ws) return;
    if (Date.now() - this._lastFrameAt > 2 * this._pingInterval) {
      this._drop(ws, 4000, 'no answer to pings');
      return;
    }
    this._sendFrame(ws, { type: 'ping', id: `p${++this._pings}` });
  }

  /**
   * Give up on a socket at once (a half-open connection may take minutes to report close).
   * @private
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  _drop(ws, code, reason) {
    if (ws !== this._ws) return;
    this._detach(ws);
    try {
      ws.close(code, reason);
    } catch {
      // already closed
    }
    this._closed(ws, code, reason);
  }

  /**
   * @private
   * @param {WebSocket} ws
   */
  _detach(ws) {
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
  }

  /**
   * The socket is gone: roll back a replay cut short, then reconnect (or stop).
   * @private
   * @param {WebSocket} ws
   * @param {number} code
   * @param {string} reason
   */
  _closed(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._helloTimer);
    clearInterval(this._pingTimer);
    for (const entry of this._outbox.values()) entry.sent = false;
    if (this._base !== null) {
      // A compacted replay is only consistent as a whole: restore the view it started from.
      this.view = this._base;
      this._base = null;
      this._emit('reset', { reason: 'rollback' });
      this._emit('change', { kind: 'reset' });
    }
    if (this._stopped) return;
    const fatal = FATAL_CLOSE_CODES.includes(code) && !(code === 4401 && typeof this._token === 'function');
    if (fatal) {
      const error = this._lastError ?? { code: String(code), message: reason };
      this._setState('failed', { code, reason, error });
      return;
    }
    this._retry(code, reason);
  }

  /**
   * @private
   * @param {number} code
   * @param {string} reason
   */
  _retry(code, reason) {
    const delay = backoffDelay(this.attempt, this._backoff, this._random);
    this.attempt += 1;
    this._setState('reconnecting', { code, reason, delay, attempt: this.attempt });
    this._retryTimer = setTimeout(() => void this._open(), delay);
  }

  // ---- requests ------------------------------------------------------------------------

  /**
   * @private
   * @param {Record<string, any>} frame
   * @returns {Promise<Ack>}
   */
  _request(frame) {
    if (typeof frame.id !== 'string' || !ID_PATTERN.test(frame.id)) {
      return Promise.reject(new TetherError('invalid_id', 'id must match [A-Za-z0-9_-]{1,128}'));
    }
    return new Promise((resolve, reject) => {
      this._outbox.set(frame.id, { frame, resolve, reject, sent: false });
      this._flush();
    });
  }

  /**
   * Before resending after a (re)connect: a user message already in the replayed view was
   * stored (its ack was lost, or another tab or an earlier page sent it). It is settled as a
   * duplicate instead of resent, since JetStream dedupes by id only within its duplicate
   * window (600 s) and a resend after that would be stored twice.
   * @private
   */
  _settleKnownSends() {
    for (const [id, entry] of this._outbox) {
      const message = this.view.messages[id];
      if (entry.sent || entry.frame.type !== 'send' || message === undefined || message.role !== 'user') continue;
      this._outbox.delete(id);
      if (this._persisted.has(id)) this._unstoreMessage(id);
      if (this.pending.delete(id)) this._emit('pending', { pending: [...this.pending.values()] });
      entry.resolve({ type: 'ack', id, seq: message.firstSeq, duplicate: true });
    }
  }

  /**
   * @private
   * @param {number} delay
   */
  _resendLater(delay) {
    if (this._resendTimer !== null || this._stopped) return;
    this._resendTimer = setTimeout(() => {
      this._resendTimer = null;
      this._flush();
    }, delay);
  }

  /** @private */
  _flush() {
    const ws = this._ws;
    if (ws === null || this.state !== 'live') return;
    for (const entry of this._outbox.values()) {
      if (!entry.sent) entry.sent = this._sendFrame(ws, entry.frame);
    }
  }

  /**
   * @private
   * @param {WebSocket} ws
   * @param {Record<string, any>} frame
   * @returns {boolean}
   */
  _sendFrame(ws, frame) {
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- helpers -------------------------------------------------------------------------

  /** @private @returns {import('./merge.js').View} */
  _restore() {
    if (this._storage === null) return createView();
    try {
      return parseView(this._storage.getItem(this._storageKey)) ?? createView();
    } catch {
      return createView();
    }
  }

  /**
   * Take the user messages a previous page (or another tab) of this session stored but did
   * not see acknowledged: shown as pending and resent once live, unless already in the view
   * (then dropped) or older than `outboxMaxAge` (dropped, reported as an `outbox_expired`
   * error on connect).
   * @private
   */
  _restoreOutbox() {
    const stored = this._readOutbox();
    if (stored.length === 0) return;
    const now = Date.now();
    let dropped = false;
    for (const message of stored.sort((a, b) => a.ts - b.ts)) {
      const known = this.view.messages[message.id];
      if ((known !== undefined && known.role === 'user') || now - message.ts > this._outboxMaxAge) {
        if (known === undefined) this._expired.push(message);
        dropped = true;
        continue;
      }
      if (this._outbox.has(message.id)) continue;
      this._persisted.add(message.id);
      this.pending.set(message.id, message);
      const frame = { type: 'send', id: message.id, text: message.text };
      this._outbox.set(message.id, { frame, resolve: () => {}, reject: () => {}, sent: false });
    }
    if (dropped) this._writeOutbox(stored.filter((m) => this._persisted.has(m.id)));
  }

  /**
   * The stored outbox (shared by every tab of the session), valid entries only.
   * @private
   * @returns {PendingMessage[]}
   */
  _readOutbox() {
    if (this._storage === null) return [];
    try {
      const parsed = JSON.parse(this._storage.getItem(this._outboxKey) ?? 'null');
      if (parsed === null || parsed.v !== 1 || !Array.isArray(parsed.messages)) return [];
      return parsed.messages.filter(
        (/** @type {any} */ m) =>
          m !== null && typeof m === 'object' && typeof m.id === 'string' && ID_PATTERN.test(m.id) && typeof m.text === 'string' && typeof m.ts === 'number',
      );
    } catch {
      return []; // unavailable or corrupt
    }
  }

  /**
   * Replace the stored outbox. On failure (quota) this session's stored view is given up
   * first (it can be replayed; a message cannot), then the outbox lives in memory only.
   * @private
   * @param {PendingMessage[]} messages
   * @returns {boolean} stored
   */
  _writeOutbox(messages) {
    const storage = this._storage;
    if (storage === null) return false;
    const write = () => {
      if (messages.length === 0) storage.removeItem(this._outboxKey);
      else storage.setItem(this._outboxKey, JSON.stringify({ v: 1, messages }));
    };
    try {
      write();
      return true;
    } catch {
      try {
        storage.removeItem(this._storageKey);
        write();
        return true;
      } catch {
        return false;
      }
    }
  }

  /**
   * Add one message to the stored outbox (read, add, write: tabs share the key, so each
   * keeps the others' entries).
   * @private
   * @param {PendingMessage} message
   */
  _storeMessage(message) {
    if (this._storage === null) return;
    const messages = this._readOutbox().filter((m) => m.id !== message.id);
    messages.push(message);
    if (!this._writeOutbox(messages)) return;
    this._persisted.add(message.id);
    try {
      this._prune();
    } catch {
      // the index is best effort
    }
  }

  /**
   * Remove one message from the stored outbox (acknowledged, seen in the log, or refused).
   * @private
   * @param {string} id
   */
  _unstoreMessage(id) {
    this._persisted.delete(id);
    const messages = this._readOutbox();
    const rest = messages.filter((m) => m.id !== id);
    if (rest.length !== messages.length) this._writeOutbox(rest);
  }

  /**
   * Record this session in the index and drop the least recently saved ones beyond
   * `maxStoredSessions` (a demo that opens many sessions must not fill the quota).
   * @private
   */
  _prune() {
    const storage = /** @type {StorageLike} */ (this._storage);
    /** @type {Record<string, number>} */
    let index = {};
    try {
      const parsed = JSON.parse(storage.getItem(STORAGE_INDEX_KEY) ?? '{}');
      if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) index = parsed;
    } catch {
      // a corrupt index starts over
    }
    index[this._storageKey] = Date.now();
    const keys = Object.keys(index).sort((a, b) => (index[b] || 0) - (index[a] || 0));
    for (const key of keys.slice(this._maxStored)) {
      if (key === this._storageKey) continue;
      storage.removeItem(key);
      storage.removeItem(`${key}${OUTBOX_SUFFIX}`);
      delete index[key];
    }
    storage.setItem(STORAGE_INDEX_KEY, JSON.stringify(index));
  }

  /** @private */
  _saveSoon() {
    if (this._saveTimer === null) this._saveTimer = setTimeout(() => this.save(), 250);
  }

  /** @private */
  _updateAgentState() {
    const next = agentState(this.members, this.view);
    if (next !== this.agentState) {
      const previous = this.agentState;
      this.agentState = next;
      this._emit('agentstate', { state: next, previous });
    }
  }

  /**
   * @private
   * @param {ConnectionState} state
   * @param {Record<string, any>} [extra]
   */
  _setState(state, extra = {}) {
    const previous = this.state;
    this.state = state;
    if (previous !== state || state === 'reconnecting') this._emit('state', { state, previous, ...extra });
  }

  /**
   * @private
   * @param {string} type
   * @param {any} detail
   */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * @param {string | undefined} url
 * @returns {string}
 */
function wsBase(url) {
  if (url === undefined) {
    const location = globalThis.location;
    if (location === undefined) throw new TypeError('url is required outside a browser page');
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`;
  }
  return url.replace(/\/+$/, '').replace(/^http(s?):/, 'ws$1:');
}

/** @returns {StorageLike | null} */
function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    return null; // blocked (sandboxed iframe, privacy settings)
  }
}
