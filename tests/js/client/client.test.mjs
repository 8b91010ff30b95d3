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

test('sends wait for live, resolve on ack, and are resent with the same id after a cut', async () => {
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
  ws.frame(ev(8, { type: 'message.created', message: 'q-1', role: 'user', text: 'hello?' }));
  ws.frame({ type: 'caught_up', seq: 8 });
  assert.deepEqual(ws.sent, [{ type: 'send', id: 'q-1', text: 'hello?' }]);
  ws.frame({ type: 'ack', id: 'q-1', seq: 8, duplicate: true });
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
