// Unit tests of the client's pure merge logic (services/gateway/static/merge.js): node --test
import assert from 'node:assert/strict';
import { test } from 'node:test';

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
} from '../../../services/gateway/static/merge.js';

const S = 'sess';
const start = (m) => ({ v: 1, type: 'message.start', session: S, message: m, run: 'r1', role: 'agent', ts: 1 });
const delta = (m, i, text) => ({ v: 1, type: 'message.delta', session: S, message: m, i, text, ts: 2 });
const reset = (m, i, text) => ({ v: 1, type: 'message.reset', session: S, message: m, i, text, ts: 2 });
const complete = (m, text) => ({ v: 1, type: 'message.complete', session: S, message: m, role: 'agent', text, ts: 3 });

/** Apply [seq, event] pairs; returns the view. */
function play(view, items) {
  for (const [seq, event] of items) applyEvent(view, seq, event);
  return view;
}

test('live stream: start, deltas and complete build the text once', () => {
  const view = play(createView(), [
    [1, start('m')],
    [2, delta('m', 0, 'Hello')],
    [3, delta('m', 1, ' world')],
  ]);
  assert.equal(view.messages.m.text, 'Hello world');
  assert.equal(view.messages.m.status, 'streaming');
  assert.equal(view.messages.m.i, 1);
  play(view, [[4, complete('m', 'Hello world!')]]);
  assert.equal(view.messages.m.text, 'Hello world!');
  assert.equal(view.messages.m.status, 'complete');
  assert.equal(view.position, 4);
});

test('an event at or below the position is ignored', () => {
  const view = play(createView(), [[1, start('m')], [5, delta('m', 0, 'a')]]);
  assert.equal(applyEvent(view, 5, delta('m', 1, 'b')), null);
  assert.equal(applyEvent(view, 3, delta('m', 2, 'c')), null);
  assert.equal(view.messages.m.text, 'a');
});

test('a chunk index already applied is ignored (no text twice)', () => {
  const view = play(createView(), [[1, start('m')], [2, delta('m', 0, 'a')], [3, delta('m', 1, 'b')]]);
  applyEvent(view, 10, delta('m', 1, 'b'));
  applyEvent(view, 11, { ...delta('m', 1, 'ab'), from_i: 0 });
  assert.equal(view.messages.m.text, 'ab');
  applyEvent(view, 12, { ...delta('m', 3, 'cd'), from_i: 2 });
  assert.equal(view.messages.m.text, 'abcd');
  assert.equal(view.messages.m.i, 3);
});

test('a replay snapshot then live deltas continue the text', () => {
  const view = createView();
  applyHello(view, { epoch: 'e1', recovered: true });
  applyEvent(view, 7, { v: 1, type: 'message.snapshot', message: 'm', role: 'agent', run: 'r1', text: 'Hel', status: 'streaming', i: 2 });
  applyCaughtUp(view, 9);
  applyEvent(view, 10, delta('m', 3, 'lo'));
  assert.equal(view.messages.m.text, 'Hello');
  assert.equal(view.messages.m.run, 'r1');
  assert.equal(view.position, 10);
});

test('a resumed device gets a merged delta appended after what it had', () => {
  const view = play(createView(), [[1, start('m')], [2, delta('m', 0, 'one ')]]);
  applyHello(view, { epoch: 'e1', recovered: true });
  applyEvent(view, 9, { v: 1, type: 'message.delta', message: 'm', text: 'two three', i: 4, from_i: 1 });
  assert.equal(view.messages.m.text, 'one two three');
});

test('a reset (live or merged) replaces what streamed before', () => {
  const view = play(createView(), [[1, start('m')], [2, delta('m', 0, 'wrong')], [3, reset('m', 1, 'right')]]);
  assert.equal(view.messages.m.text, 'right');
  applyEvent(view, 8, { v: 1, type: 'message.reset', message: 'm', text: 'again, better', i: 5, from_i: 2 });
  assert.equal(view.messages.m.text, 'again, better');
});

test('a final form wins over anything streamed; later deltas are ignored', () => {
  const view = play(createView(), [[1, start('m')], [2, delta('m', 0, 'x')], [3, complete('m', 'final')]]);
  applyEvent(view, 4, delta('m', 1, 'late'));
  applyEvent(view, 5, { v: 1, type: 'message.snapshot', message: 'm', text: 'snap', i: 9 });
  assert.equal(view.messages.m.text, 'final');
  applyEvent(view, 6, { v: 1, type: 'message.edit', message: 'm', role: 'agent', text: 'edited' });
  assert.equal(view.messages.m.text, 'edited');
  assert.equal(view.messages.m.edited, true);
});

test('a delete leaves a tombstone that lists skip', () => {
  const view = play(createView(), [
    [1, { v: 1, type: 'message.created', message: 'q', role: 'user', participant: 'alice', text: 'hi' }],
    [2, { v: 1, type: 'message.delete', message: 'q', role: 'user' }],
  ]);
  assert.equal(messageList(view).length, 0);
  assert.equal(messageList(view, { deleted: true })[0].status, 'deleted');
});

test('messages keep the order they first appeared in', () => {
  const view = play(createView(), [
    [1, { v: 1, type: 'message.created', message: 'q1', role: 'user', text: 'a' }],
    [2, start('r1')],
    [3, { v: 1, type: 'message.created', message: 'q2', role: 'user', text: 'b' }],
    [4, complete('r1', 'answer')],
  ]);
  assert.deepEqual(messageList(view).map((m) => m.id), ['q1', 'r1', 'q2']);
});

test('a hello that is not recovered clears the view', () => {
  const view = play(createView(), [[1, start('m')], [2, delta('m', 0, 'a')]]);
  assert.equal(applyHello(view, { epoch: 'e2', recovered: false }), true);
  assert.equal(view.position, 0);
  assert.deepEqual(view.messages, {});
  assert.equal(view.epoch, 'e2');
  assert.equal(applyHello(view, { epoch: 'e2', recovered: true }), false);
});

test('runs and approvals: pending until decided, closed when the run ends', () => {
  const view = play(createView(), [
    [1, { v: 1, type: 'run.started', run: 'r1' }],
    [2, { v: 1, type: 'approval.requested', run: 'r1', approval: 'r1-a1', prompt: 'OK?', options: ['yes', 'no'] }],
    [3, { v: 1, type: 'run.progress', run: 'r1', step: 'lookup', tool: 'db' }],
  ]);
  assert.equal(view.runs.r1.status, 'running');
  assert.equal(view.runs.r1.tool, 'db');
  assert.deepEqual(pendingApprovals(view).map((a) => a.id), ['r1-a1']);
  applyEvent(view, 4, { v: 1, type: 'approval.decided', run: 'r1', approval: 'r1-a1', option: 'yes', participant: 'bob' });
  assert.equal(view.approvals['r1-a1'].option, 'yes');
  assert.equal(pendingApprovals(view).length, 0);
  play(view, [
    [5, { v: 1, type: 'approval.requested', run: 'r1', approval: 'r1-a2', prompt: 'More?', options: ['a', 'b'] }],
    [6, { v: 1, type: 'run.cancelled', run: 'r1', reason: 'cancelled by bob' }],
    [7, { v: 1, type: 'run.completed', run: 'r1' }],
  ]);
  assert.equal(view.runs.r1.status, 'cancelled');
  assert.equal(view.approvals['r1-a2'].status, 'closed');
});

test('an approval past expires_at is no longer pending', () => {
  const view = play(createView(), [
    [1, { v: 1, type: 'approval.requested', run: 'r', approval: 'a', prompt: 'p', options: ['x'], expires_at: 1000 }],
  ]);
  assert.equal(pendingApprovals(view, 999).length, 1);
  assert.equal(pendingApprovals(view, 1000).length, 0);
});

test('control signals are recorded; unknown events only move the position', () => {
  const view = play(createView(), [
    [1, { v: 1, type: 'control.steer', control: 'st-1', run: 'r', participant: 'al', text: 'short' }],
    [2, { v: 1, type: 'something.new', x: 1 }],
  ]);
  assert.deepEqual(view.controls[0], { id: 'st-1', action: 'steer', seq: 1, run: 'r', participant: 'al', text: 'short' });
  assert.equal(view.position, 2);
});

test('presence: hello snapshot, join, update, leave; agent state', () => {
  const agent = { role: 'agent', participant: 'bot', connection: 'a1', state: 'thinking' };
  const members = membersFromHello([{ role: 'user', participant: 'al', connection: 'c1', state: 'online' }]);
  assert.equal(agentState(members), 'offline');
  applyPresence(members, { action: 'join', member: agent });
  assert.equal(agentState(members), 'thinking');
  applyPresence(members, { action: 'update', member: { ...agent, state: 'streaming' } });
  assert.equal(agentState(members), 'streaming');
  assert.equal(applyPresence(members, { action: 'leave', member: agent }), true);
  assert.equal(applyPresence(members, { action: 'leave', member: agent }), false);
  assert.equal(agentState(members), 'offline');
  const view = play(createView(), [[1, { v: 1, type: 'run.started', run: 'r' }]]);
  assert.equal(agentState(members, view), 'thinking');
});

test('parseView: round trip, and anything else is null', () => {
  const view = play(createView(), [[1, start('m')], [2, delta('m', 0, 'a')]]);
  assert.deepEqual(parseView(JSON.stringify(view)), view);
  for (const bad of [null, '', '{', '[]', '{"v":2}', JSON.stringify({ ...view, position: -1 })]) {
    assert.equal(parseView(bad), null);
  }
  const copy = cloneView(view);
  copy.messages.m.text = 'changed';
  assert.equal(view.messages.m.text, 'a');
});

// ---- property: resuming anywhere, with compacted replays, gives the live text ------------

/** A JS model of the gateway's replay compaction (docs/protocol.md §7). */
function compact(stretch) {
  const out = [];
  const streams = new Map();
  for (const [seq, event] of stretch) {
    const streaming = ['message.start', 'message.snapshot', 'message.delta', 'message.reset'];
    if (!event.type.startsWith('message.') || event.role === 'user') {
      out.push([seq, event]);
    } else if (streaming.includes(event.type)) {
      const s = streams.get(event.message) ?? { started: null, reset: false, parts: [], first: null, last: null, seq: 0 };
      if (event.type === 'message.start' || event.type === 'message.snapshot') Object.assign(s, { started: event, parts: [], reset: false });
      if (event.type === 'message.reset') Object.assign(s, { reset: true, parts: [] });
      if (event.text) s.parts.push(event.text);
      if (Number.isInteger(event.i)) {
        s.first ??= event.i;
        s.last = event.i;
      }
      s.seq = seq;
      streams.set(event.message, s);
    } else {
      streams.delete(event.message);
      out.push([seq, event]);
    }
  }
  for (const [message, s] of streams) {
    const text = s.parts.join('');
    if (s.started) {
      const snap = { ...s.started, type: 'message.snapshot', text, status: 'streaming' };
      delete snap.i;
      if (s.last !== null) snap.i = s.last;
      out.push([s.seq, snap]);
    } else {
      const merged = { v: 1, type: s.reset ? 'message.reset' : 'message.delta', message, text };
      if (s.last !== null) Object.assign(merged, { i: s.last, from_i: s.first });
      out.push([s.seq, merged]);
    }
  }
  return out.sort((a, b) => a[0] - b[0]);
}

/** The stored log: a snapshot or final form of a message rolls up (deletes) its earlier events. */
function stored(log) {
  const rollup = new Map();
  const finals = ['message.snapshot', 'message.complete', 'message.edit', 'message.delete'];
  for (const [seq, event] of log) if (finals.includes(event.type)) rollup.set(event.message, seq);
  return log.filter(([seq, event]) => !event.message || seq >= (rollup.get(event.message) ?? 0));
}

/** A small seeded random generator (mulberry32). */
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomLog(random) {
  // Three questions, each answered by a streamed message; the answers interleave.
  const streams = [];
  for (let n = 0; n < 3; n++) {
    const m = `m${n}`;
    const events = [{ v: 1, type: 'message.created', message: `q${n}`, role: 'user', text: `question ${n}` }, start(m)];
    let i = 0;
    let text = '';
    const chunks = 1 + Math.floor(random() * 12);
    for (let c = 0; c < chunks; c++) {
      if (random() < 0.1) {
        text = `R${c} `;
        events.push(reset(m, i++, text));
      } else {
        const piece = `w${n}.${c} `;
        text += piece;
        events.push(delta(m, i++, piece));
      }
      if (random() < 0.1) events.push({ v: 1, type: 'message.snapshot', message: m, role: 'agent', run: 'r1', text, status: 'streaming', i: i - 1 });
    }
    if (random() < 0.7) events.push(complete(m, text));
    streams.push(events);
  }
  const log = [];
  let seq = 0;
  while (streams.some((events) => events.length)) {
    const open = streams.filter((events) => events.length);
    const events = open[Math.floor(random() * open.length)];
    log.push([(seq += 1 + Math.floor(random() * 3)), events.shift()]);
  }
  return log;
}

test('property: resume at any position, replays compacted in any pages, same text as live', () => {
  const random = rng(42);
  for (let round = 0; round < 500; round++) {
    const log = randomLog(random);
    const live = play(createView(), log);
    let view = createView();
    let since = 0;
    while (since < log[log.length - 1][0]) {
      // A connection that replays up to `cut` (in pages) and is dropped there (or stays).
      const cut = since + 1 + Math.floor(random() * (log[log.length - 1][0] - since));
      const stretch = stored(log.filter(([seq]) => seq <= cut)).filter(([seq]) => seq > since);
      const pages = [];
      for (let k = 0; k < stretch.length; ) {
        const size = 1 + Math.floor(random() * 4);
        pages.push(stretch.slice(k, k + size));
        k += size;
      }
      applyHello(view, { epoch: 'e', recovered: true });
      const base = cloneView(view); // what the client restores when a replay is cut short
      // The socket may drop after any replayed item, even in the middle of a page.
      const items = pages.flatMap((page) => compact(page));
      const dropAfter = random() < 0.3 ? Math.floor(random() * items.length) : -1;
      let dropped = false;
      for (const [n, [seq, event]] of items.entries()) {
        applyEvent(view, seq, event);
        if (n === dropAfter) {
          dropped = true;
          break;
        }
      }
      if (dropped) {
        view = base;
        continue;
      }
      applyCaughtUp(view, cut);
      since = view.position;
    }
    for (const message of messageList(live)) {
      assert.equal(view.messages[message.id].text, message.text, `round ${round}, message ${message.id}`);
    }
  }
});
