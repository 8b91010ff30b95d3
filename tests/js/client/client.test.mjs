// Unit tests of the client (services/gateway/static/tether.js) against a fake WebSocket.
import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { TetherClient, TetherError, backoffDelay, newId } from '../../../services/gateway/static/tether.js';

/** A WebSocket stand-in: the test plays the server. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }
  send(data) {
    if (this.closed) throw new Error('closed');
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = '') {
    this.closed = { code, reason };
  }
  // server side
  frame(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = '') {
    this.closed = { code, reason };
    this.onclose?.({ code, reason });
  }
}

class MemoryStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(key) {
    return this.items.get(key) ?? null;
  }
  setItem(key, value) {
    this.items.set(key, value);
  }
  removeItem(key) {
    this.items.delete(key);
  }
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(predicate, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(2);
  }
}

/** Every client a test made is closed after it, even when the test fails (no timer left). */
const made = [];
afterEach(() => {
  for (const c of made.splice(0)) c.close();
});

function client(options = {}) {
  FakeSocket.all = [];
  const c = new TetherClient({
    session: 'demo-1',
    token: 'tok',
    url: 'http://gw.test:8080',
    storage: new MemoryStorage(),
    WebSocket: FakeSocket,
    backoff: { initial: 5, max: 40 },
    ...options,
  });
  made.push(c);
  return c;
}

const hello = (extra = {}) => ({ type: 'hello', protocol: 1, session: 'demo-1', epoch: 'E1', head: 0, since: 0, recovered: true, presence: [], ...extra });
const ev = (seq, event) => ({ type: 'event', seq, event: { v: 1, session: 'demo-1', ...event } });

test('backoffDelay grows exponentially, is capped and jittered', () => {
  assert.equal(backoffDelay(0, {}, () => 0), 250);
  assert.equal(backoffDelay(3, {}, () => 0), 2000);
  assert.equal(backoffDelay(30, {}, () => 0), 15000);
  assert.equal(backoffDelay(3, {}, () => 0.999999), 1000);
  assert.equal(backoffDelay(2, { initial: 100, factor: 3, jitter: 0 }), 900);
});

test('newId follows the id rules', () => {
  assert.match(newId('u-'), /^u-[0-9a-z]{25}$/);
  assert.notEqual(newId(), newId());
});

test('connects, applies the replay, goes live, keeps the position in storage', async () => {
  const storage = new MemoryStorage();
  const c = client({ storage });
  const states = [];
  c.on('state', ({ state }) => states.push(state));
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  const ws = FakeSocket.all[0];
  assert.equal(ws.url.origin, 'ws://gw.test:8080');
  assert.equal(ws.url.pathname, '/v1/sessions/demo-1/ws');
  assert.equal(ws.url.searchParams.get('token'), 'tok');
  assert.equal(ws.url.searchParams.get('since'), '0');
  assert.equal(ws.url.searchParams.get('epoch'), null);
  ws.frame(hello({ presence: [{ role: 'agent', participant: 'bot', connection: 'a1', state: 'idle' }] }));
  assert.equal(c.agentState, 'idle');
  ws.frame(ev(3, { type: 'message.created', message: 'q1', role: 'user', participant: 'al', text: 'hi' }));
  ws.frame(ev(5, { type: 'message.snapshot', message: 'm1', role: 'agent', run: 'r1', text: 'Hel', status: 'streaming', i: 1 }));
  ws.frame({ type: 'caught_up', seq: 6 });
  ws.frame(ev(7, { type: 'message.delta', message: 'm1', i: 2, text: 'lo' }));
  assert.deepEqual(c.messages().map((m) => m.text), ['hi', 'Hello']);
  assert.deepEqual(states, ['connecting', 'replaying', 'live']);
  c.save();
  const saved = JSON.parse(storage.getItem('tether:v1:demo-1'));
  assert.equal(saved.position, 7);
  assert.equal(saved.epoch, 'E1');
  assert.equal(saved.messages.m1.text, 'Hello');
  c.close();
  assert.equal(c.state, 'closed');

  // A reloaded page: the same storage, so it resumes with since and epoch.
  const again = client({ storage });
  assert.equal(again.messages()[1].text, 'Hello');
  again.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  assert.equal(FakeSocket.all[0].url.searchParams.get('since'), '7');
  assert.equal(FakeSocket.all[0].url.searchParams.get('epoch'), 'E1');
  again.close();
});

test('reconnects with backoff after a gateway restart and resumes without duplicates', async () => {
  const c = client();
  const delays = [];
  c.on('state', (d) => d.state === 'reconnecting' && delays.push(d.delay));
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  let ws = FakeSocket.all[0];
  ws.frame(hello());
  ws.frame(ev(1, { type: 'message.start', message: 'm', role: 'agent' }));
  ws.frame(ev(2, { type: 'message.delta', message: 'm', i: 0, text: 'one ' }));
  ws.frame({ type: 'caught_up', seq: 2 });
  ws.frame(ev(3, { type: 'message.delta', message: 'm', i: 1, text: 'two ' }));
  ws.serverClose(1012, 'restarting');
  assert.equal(c.state, 'reconnecting');
  await waitFor(() => FakeSocket.all.length === 2, 'a second socket');
  ws = FakeSocket.all[1];
  assert.equal(ws.url.searchParams.get('since'), '3');
  ws.frame(hello({ since: 3 }));
  ws.frame(ev(5, { type: 'message.delta', message: 'm', i: 3, from_i: 2, text: 'three four ' }));
  ws.frame({ type: 'caught_up', seq: 5 });
  ws.frame(ev(5, { type: 'message.delta', message: 'm', i: 3, text: 'four ' })); // repeated: ignored
  ws.frame(ev(6, { type: 'message.complete', message: 'm', role: 'agent', text: 'one two three four' }));
  assert.equal(c.messages()[0].text, 'one two three four');
  assert.equal(delays.length, 1);
  assert.ok(delays[0] >= 2 && delays[0] <= 5, `delay ${delays[0]}`);
  assert.equal(c.attempt, 0);
  c.close();
});

test('backoff grows while connects keep failing', async () => {
  const c = client({ random: () => 0 });
  const delays = [];
  c.on('state', (d) => d.state === 'reconnecting' && delays.push(d.delay));
  c.connect();
  for (let n = 1; n <= 5; n++) {
    await waitFor(() => FakeSocket.all.length === n, `socket ${n}`);
    FakeSocket.all[n - 1].serverClose(1011, 'unavailable');
  }
  assert.deepEqual(delays, [5, 10, 20, 40, 40]);
  c.close();
});

test('a replay cut short is rolled back, so the retry duplicates nothing', async () => {
  const c = client();
  const resets = [];
  c.on('reset', (d) => resets.push(d.reason));
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  let ws = FakeSocket.all[0];
  ws.frame(hello());
  ws.frame(ev(4, { type: 'message.created', message: 'q', role: 'user', text: 'q?' }));
  ws.frame(ev(6, { type: 'message.delta', message: 'other', text: 'x', i: 0 }));
  ws.serverClose(1006, '');
  assert.deepEqual(resets, ['rollback']);
  assert.equal(c.view.position, 0);
  assert.equal(c.messages().length, 0);
  await waitFor(() => FakeSocket.all.length === 2, 'a second socket');
  ws = FakeSocket.all[1];
  assert.equal(ws.url.searchParams.get('since'), '0');
  c.close();
});

test('a hello that is not recovered resets the view', async () => {
  const storage = new MemoryStorage();
  storage.setItem('tether:v1:demo-1', JSON.stringify({ v: 1, epoch: 'OLD', position: 90, messages: { z: { id: 'z', role: 'user', text: 'gone', status: 'complete', i: null, seq: 90, firstSeq: 90, ts: 0 } }, order: ['z'], runs: {}, approvals: {}, controls: [] }));
  const c = client({ storage });
  const resets = [];
  c.on('reset', (d) => resets.push(d.reason));
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  const ws = FakeSocket.all[0];
  assert.equal(ws.url.searchParams.get('epoch'), 'OLD');
  ws.frame(hello({ epoch: 'NEW', recovered: false }));
  assert.deepEqual(resets, ['not_recovered']);
  ws.frame(ev(1, { type: 'message.created', message: 'a', role: 'user', text: 'fresh' }));
  ws.frame({ type: 'caught_up', seq: 1 });
  assert.deepEqual(c.messages().map((m) => m.text), ['fresh']);
  c.close();
});

test('auth failures stop reconnecting (state failed, with the error)', async () => {
  const c = client();
  let failed = null;
  c.on('state', (d) => d.state === 'failed' && (failed = d));
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  FakeSocket.all[0].frame({ type: 'error', code: 'unauthorized', message: 'token expired' });
  FakeSocket.all[0].serverClose(4401, 'token expired');
  assert.equal(c.state, 'failed');
  assert.equal(failed.error.code, 'unauthorized');
  await tick(30);
  assert.equal(FakeSocket.all.length, 1);
  c.close();
});

test('a token function is called for every connect, and 4401 then retries', async () => {
  let n = 0;
  const c = client({ token: async () => `t${++n}` });
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  assert.equal(FakeSocket.all[0].url.searchParams.get('token'), 't1');
  FakeSocket.all[0].serverClose(4401, 'token expired');
  await waitFor(() => FakeSocket.all.length === 2, 'a second socket');
  assert.equal(FakeSocket.all[1].url.searchParams.get('token'), 't2');
  c.close();
});

test('sends wait for live, resolve on ack, are resent with the same id after a cut, not once in the log', async () => {
  const c = client();
  const pending = [];
  c.on('pending', (d) => pending.push(d.pending.length));
  const sent = c.send('hello?', { id: 'q-1' });
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  let ws = FakeSocket.all[0];
  ws.frame(hello());
  assert.equal(ws.sent.length, 0, 'nothing is sent before caught_up');
  ws.frame({ type: 'caught_up', seq: 0 });
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'q-1', text: 'hello?' }]);
  ws.serverClose(1006);
  await waitFor(() => FakeSocket.all.length === 2, 'a second socket');
  ws = FakeSocket.all[1];
  ws.frame(hello());
  ws.frame({ type: 'caught_up', seq: 0 });
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'q-1', text: 'hello?' }], 'resent with the same id');
  ws.serverClose(1006);
  await waitFor(() => FakeSocket.all.length === 3, 'a third socket');
  // Stored meanwhile (the ack was lost): the replay shows it, so it is settled, not resent
  // (JetStream dedupes by id only within its duplicate window).
  ws = FakeSocket.all[2];
  ws.frame(hello());
  ws.frame(ev(8, { type: 'message.created', message: 'q-1', role: 'user', text: 'hello?' }));
  ws.frame({ type: 'caught_up', seq: 8 });
  assert.deepEqual(ws.sent, []);
  assert.deepEqual(await sent, { type: 'ack', id: 'q-1', seq: 8, duplicate: true });
  assert.deepEqual(pending, [1, 0]);
  assert.equal(c.messages().length, 1);
  c.close();
});

test('cancel, steer and approve send their frames; an error frame rejects', async () => {
  const c = client();
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  const ws = FakeSocket.all[0];
  ws.frame(hello());
  ws.frame(ev(1, { type: 'run.started', run: 'r1' }));
  ws.frame(ev(2, { type: 'approval.requested', run: 'r1', approval: 'r1-a1', prompt: 'OK?', options: ['yes', 'no'] }));
  ws.frame({ type: 'caught_up', seq: 2 });
  assert.equal(c.approvals()[0].id, 'r1-a1');
  assert.equal(c.activeRun().id, 'r1');
  const cancelled = c.cancel({ run: 'r1', id: 'c-1' });
  const steered = c.steer('shorter', { id: 'st-1' });
  const approved = c.approve('r1-a1', 'yes', { id: 'ap-1' });
  assert.deepEqual(ws.sent, [
    { type: 'cancel', id: 'c-1', run: 'r1' },
    { type: 'steer', id: 'st-1', text: 'shorter' },
    { type: 'approve', id: 'ap-1', approval: 'r1-a1', run: 'r1', option: 'yes' },
  ]);
  ws.frame({ type: 'ack', id: 'c-1', seq: 3, duplicate: false });
  ws.frame({ type: 'ack', id: 'st-1', seq: 4, duplicate: false });
  ws.frame({ type: 'error', code: 'approval_closed', message: 'already decided', id: 'ap-1' });
  assert.equal((await cancelled).seq, 3);
  assert.equal((await steered).seq, 4);
  await assert.rejects(approved, (error) => error instanceof TetherError && error.code === 'approval_closed');
  await assert.rejects(c.approve('nope', 'yes'), (error) => error.code === 'unknown_approval');
  c.close();
});

test('pings once live; a silent connection is dropped after two ping intervals', async () => {
  const c = client({ pingInterval: 100 });
  c.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  const ws = FakeSocket.all[0];
  ws.frame(hello());
  ws.frame({ type: 'caught_up', seq: 0 });
  // Answer pings for a while: the connection stays.
  const started = Date.now();
  while (Date.now() - started < 350) {
    ws.frame({ type: 'pong', id: null });
    await tick(10);
  }
  assert.ok(ws.sent.some((f) => f.type === 'ping'), 'no ping sent');
  assert.equal(FakeSocket.all.length, 1);
  // Then silence: dropped (4000) and reconnected.
  await waitFor(() => FakeSocket.all.length === 2, 'a reconnect');
  assert.equal(ws.closed.code, 4000);
  c.close();
});

test('storage keeps the most recently saved sessions only', async () => {
  const storage = new MemoryStorage();
  for (const session of ['s1', 's2', 's3']) {
    const c = client({ storage, session, maxStoredSessions: 2 });
    c.save();
    await tick(2); // distinct save times
  }
  assert.equal(storage.getItem('tether:v1:s1'), null);
  assert.notEqual(storage.getItem('tether:v1:s2'), null);
  assert.notEqual(storage.getItem('tether:v1:s3'), null);
  assert.deepEqual(Object.keys(JSON.parse(storage.getItem('tether:v1:~sessions'))).sort(), ['tether:v1:s2', 'tether:v1:s3']);
});

// ---- the stored outbox: unacknowledged user messages survive reloads ------------------

test('an unavailable error keeps the request queued and resends it with the same id after a backoff', async () => {
  const storage = new MemoryStorage();
  const c = client({ storage });
  const ws = await goLive(c);
  const sent = c.send('while JetStream is down', { id: 'q-u' });
  const cancelled = c.cancel({ id: 'c-u' });
  assert.equal(ws.sent.length, 2);
  ws.frame({ type: 'error', code: 'unavailable', message: 'JetStream did not answer', id: 'q-u' });
  ws.frame({ type: 'error', code: 'unavailable', message: 'JetStream did not answer', id: 'c-u' });
  assert.deepEqual([...c.pending.keys()], ['q-u'], 'still pending, not dropped');
  assert.deepEqual(storedIds(storage), ['q-u'], 'still stored for a reload');
  await waitFor(() => ws.sent.length === 4, 'the resends');
  assert.deepEqual(ws.sent.slice(2), ws.sent.slice(0, 2), 'the same frames, the same ids');
  ws.frame({ type: 'ack', id: 'q-u', seq: 1, duplicate: false });
  ws.frame({ type: 'ack', id: 'c-u', seq: 2, duplicate: false });
  assert.equal((await sent).seq, 1);
  assert.equal((await cancelled).seq, 2);
  assert.equal(storage.getItem(OUTBOX), null);
});

const OUTBOX = 'tether:v1:demo-1:outbox';
const storedIds = (storage) => (JSON.parse(storage.getItem(OUTBOX) ?? '{"messages":[]}').messages ?? []).map((m) => m.id);

/** Connect `c` and play hello (plus `events`) and caught_up; returns the socket. */
async function goLive(c, events = [], head = 0) {
  const n = FakeSocket.all.length;
  c.connect();
  await waitFor(() => FakeSocket.all.length === n + 1, 'a socket');
  const ws = FakeSocket.all[n];
  ws.frame(hello());
  for (const [seq, event] of events) ws.frame(ev(seq, event));
  ws.frame({ type: 'caught_up', seq: head });
  return ws;
}

test('a send queued while disconnected survives a reload and is sent once live with the same id', async () => {
  const storage = new MemoryStorage();
  const first = client({ storage });
  first.connect();
  await waitFor(() => FakeSocket.all.length === 1, 'a socket');
  FakeSocket.all[0].serverClose(1006); // the gateway is unreachable
  const sent = first.send('offline question', { id: 'q-7' });
  sent.catch(() => {}); // rejected by close(): the page went away
  assert.deepEqual(storedIds(storage), ['q-7']);
  first.close(); // the page is reloaded

  const again = client({ storage });
  assert.deepEqual([...again.pending.keys()], ['q-7'], 'shown as pending at once');
  const ws = await goLive(again);
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'q-7', text: 'offline question' }]);
  assert.deepEqual(storedIds(storage), ['q-7'], 'kept until acknowledged');
  ws.frame({ type: 'ack', id: 'q-7', seq: 1, duplicate: false });
  assert.equal(storage.getItem(OUTBOX), null, 'the ack removes it from storage');
  ws.frame(ev(1, { type: 'message.created', message: 'q-7', role: 'user', text: 'offline question' }));
  assert.equal(again.pending.size, 0);
  assert.deepEqual(again.messages().map((m) => m.text), ['offline question']);
});

test('a stored send already in the replayed view is dropped, not resent', async () => {
  const storage = new MemoryStorage();
  const first = client({ storage });
  first.send('sent, ack lost', { id: 'q-8' }).catch(() => {});
  first.send('never arrived', { id: 'q-9' }).catch(() => {});
  first.close();

  const again = client({ storage });
  const ws = await goLive(again, [[4, { type: 'message.created', message: 'q-8', role: 'user', text: 'sent, ack lost' }]], 4);
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'q-9', text: 'never arrived' }]);
  assert.deepEqual(storedIds(storage), ['q-9']);
  assert.deepEqual([...again.pending.keys()], ['q-9']);
  ws.frame(ev(5, { type: 'message.created', message: 'q-9', role: 'user', text: 'never arrived' }));
  assert.equal(storage.getItem(OUTBOX), null, 'seeing the message in the log removes it too');
  assert.equal(again.pending.size, 0);
});

test('a stored send already in the stored view, or too old, is dropped on load', async () => {
  const storage = new MemoryStorage();
  const old = Date.now() - 25 * 3600 * 1000;
  storage.setItem('tether:v1:demo-1', JSON.stringify({ v: 1, epoch: 'E1', position: 3, messages: { a: { id: 'a', role: 'user', text: 'in view', status: 'complete', i: null, seq: 3, firstSeq: 3, ts: 0 } }, order: ['a'], runs: {}, approvals: {}, controls: [] }));
  storage.setItem(OUTBOX, JSON.stringify({ v: 1, messages: [{ id: 'a', text: 'in view', ts: Date.now() }, { id: 'b', text: 'stale', ts: old }, { id: 'c', text: 'fresh', ts: Date.now() }] }));
  const c = client({ storage });
  assert.deepEqual([...c.pending.keys()], ['c']);
  assert.deepEqual(storedIds(storage), ['c']);
  const errors = [];
  c.on('error', (e) => errors.push(e));
  const ws = await goLive(c, [], 3);
  assert.deepEqual(errors.map((e) => [e.code, e.id]), [['outbox_expired', 'b']]);
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'c', text: 'fresh' }]);
});

test('two tabs of one session keep each other\'s stored sends; either one removes an acked entry', async () => {
  const storage = new MemoryStorage();
  const tab1 = client({ storage });
  const tab2 = client({ storage });
  tab1.send('from tab 1', { id: 't1' }).catch(() => {});
  tab2.send('from tab 2', { id: 't2' }).catch(() => {});
  assert.deepEqual(storedIds(storage), ['t1', 't2']);
  tab2.close(); // tab 2 is closed before it could send
  const tab3 = client({ storage }); // a reload: it takes both entries
  assert.deepEqual([...tab3.pending.keys()], ['t1', 't2']);
  const ws = await goLive(tab3);
  assert.deepEqual(ws.sent.map((f) => f.id), ['t1', 't2']);
  ws.frame({ type: 'ack', id: 't1', seq: 1, duplicate: false });
  assert.deepEqual(storedIds(storage), ['t2'], 'removed by the tab that saw the ack');
  ws.frame(ev(2, { type: 'message.created', message: 't2', role: 'user', text: 'from tab 2' }));
  assert.equal(storage.getItem(OUTBOX), null);
});

test('storage that throws does not break send (the outbox stays in memory)', async () => {
  const broken = {
    getItem() {
      throw new Error('SecurityError');
    },
    setItem() {
      throw new Error('QuotaExceededError');
    },
    removeItem() {
      throw new Error('SecurityError');
    },
  };
  const c = client({ storage: broken });
  const sent = c.send('still sent', { id: 'q-1' });
  assert.equal(c.pending.size, 1);
  const ws = await goLive(c);
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'q-1', text: 'still sent' }]);
  ws.frame({ type: 'ack', id: 'q-1', seq: 1, duplicate: false });
  assert.equal((await sent).seq, 1);
});

test('a full storage gives up the stored view before the outbox', async () => {
  const storage = new MemoryStorage();
  const c = client({ storage });
  c.save();
  assert.notEqual(storage.getItem('tether:v1:demo-1'), null);
  const setItem = storage.setItem.bind(storage);
  storage.setItem = (key, value) => {
    if (storage.items.has('tether:v1:demo-1')) throw new Error('QuotaExceededError');
    setItem(key, value);
  };
  c.send('keep me', { id: 'q-2' }).catch(() => {});
  assert.equal(storage.getItem('tether:v1:demo-1'), null);
  assert.deepEqual(storedIds(storage), ['q-2']);
});

test('dropping a session from the index drops its stored outbox too', async () => {
  const storage = new MemoryStorage();
  const s1 = client({ storage, session: 's1', maxStoredSessions: 1 });
  s1.send('old session', { id: 'x' }).catch(() => {});
  assert.notEqual(storage.getItem('tether:v1:s1:outbox'), null);
  await tick(2);
  client({ storage, session: 's2', maxStoredSessions: 1 }).save();
  assert.equal(storage.getItem('tether:v1:s1:outbox'), null);
  assert.equal(storage.getItem('tether:v1:s1'), null);
});

test('storage null keeps nothing', async () => {
  const c = client({ storage: null });
  c.send('memory only', { id: 'm' }).catch(() => {});
  assert.equal(c.pending.size, 1);
});
