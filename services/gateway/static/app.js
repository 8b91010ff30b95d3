// The demo chat page: one session, streamed answers, approvals, cancel, presence.
// Token: `#token=<jwt>` (printed by `tether up`; kept in localStorage, then removed from the
// address bar). Session: `?session=<id>` (a `demo-…` id is made up and put in the URL when
// absent, so another tab or device can join with the same link).
//
// The DOM is built with textContent and createElement only (the page runs under a strict
// CSP with Trusted Types: no HTML strings anywhere).

import { ID_PATTERN, TetherClient, messageList, newId } from '/client/tether.js';

const TOKEN_KEY = 'tether:demo-token';

/** Timings for the browser test and the curious (ms since navigation start). */
const metrics = {
  restoredText: false,
  hello: /** @type {number | null} */ (null),
  caughtUp: /** @type {number | null} */ (null),
  firstText: /** @type {number | null} */ (null),
  firstLiveToken: /** @type {number | null} */ (null),
};

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const log = $('log');
const empty = $('empty');
const notice = $('notice');
const input = /** @type {HTMLTextAreaElement} */ ($('input'));
const sendButton = /** @type {HTMLButtonElement} */ ($('send'));
const cancelButton = /** @type {HTMLButtonElement} */ ($('cancel'));

// ---- token and session ------------------------------------------------------------------

/** @returns {string | null} */
function readToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get('token');
  if (fromUrl) {
    try {
      localStorage.setItem(TOKEN_KEY, fromUrl);
    } catch {
      // storage blocked: the token lives in this page only
    }
    return fromUrl;
  }
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/**
 * The token's claims, unverified (the gateway verifies; this is only for hints).
 * @param {string} token
 * @returns {{sub?: string, sessions?: string[], exp?: number}}
 */
function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

/**
 * @param {string[]} patterns
 * @param {string} session
 */
function grants(patterns, session) {
  return patterns.some((p) => p === '*' || p === session || (p.endsWith('*') && session.startsWith(p.slice(0, -1))));
}

/** @param {string[]} patterns */
function inventSession(patterns) {
  const suffix = newId().slice(0, 8);
  if (patterns.length === 0 || patterns.includes('*')) return `demo-${suffix}`;
  const prefix = patterns.find((p) => p.endsWith('*'));
  if (prefix !== undefined) return `${prefix.slice(0, -1)}${suffix}`;
  return patterns[0];
}

const token = readToken();
const claims = token ? claimsOf(token) : {};
const patterns = Array.isArray(claims.sessions) ? claims.sessions : [];
const params = new URLSearchParams(location.search);
let session = params.get('session') ?? '';
if (!ID_PATTERN.test(session)) session = inventSession(patterns);
// The address bar: the session (shareable), never the token.
history.replaceState(null, '', `${location.pathname}?session=${encodeURIComponent(session)}`);
$('session-id').textContent = session;
document.title = `Tether · ${session}`;

// ---- rendering ----------------------------------------------------------------------------

/** @type {Map<string, HTMLElement>} nodes by key: m:{message id} or a:{approval id} */
const nodes = new Map();
/** @type {TetherClient | null} */
let client = null;

/**
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Keep the view pinned to the newest message unless the reader scrolled up. */
function nearBottom() {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 120;
}

/** @param {boolean} pinned */
function settle(pinned) {
  empty.hidden = nodes.size > 0;
  if (pinned) log.scrollTop = log.scrollHeight;
}

/**
 * Put a node at its place: ordered by the sequence its item was first seen at.
 * @param {HTMLElement} node
 * @param {number} key
 */
function place(node, key) {
  if (node.parentNode === log && node.dataset.key === String(key)) return; // already placed
  node.dataset.key = String(key);
  let before = null;
  for (const child of log.children) {
    const other = Number(/** @type {HTMLElement} */ (child).dataset.key);
    if (child !== node && Number.isFinite(other) && other > key) {
      before = child;
      break;
    }
  }
  if (node.nextSibling !== before || node.parentNode !== log) log.insertBefore(node, before);
}

/**
 * @param {import('/client/tether.js').Message | {id: string, role: string, text: string, status: string, participant?: string, run?: string, firstSeq?: number}} message
 * @param {boolean} [pending]
 */
function renderMessage(message, pending = false) {
  const key = `m:${message.id}`;
  let node = nodes.get(key);
  if (node === undefined) {
    node = el('div', 'msg');
    node.append(el('div', 'who'), el('div', 'bubble'));
    nodes.set(key, node);
  }
  const agent = message.role !== 'user';
  const run = message.run && client ? client.view.runs[message.run] : undefined;
  const streaming = message.status === 'streaming' && (run === undefined || run.status === 'running');
  node.className = [
    'msg',
    agent ? 'agent' : 'user',
    pending ? 'pending' : '',
    streaming ? 'streaming' : '',
    message.status === 'deleted' ? 'deleted' : '',
  ].filter(Boolean).join(' ');
  const who = /** @type {HTMLElement} */ (node.firstChild);
  const name = agent ? 'Agent' : !message.participant || message.participant === claims.sub ? 'You' : message.participant;
  who.replaceChildren(el('span', 'name', name));
  if (pending) who.append(el('span', 'tag sending', 'sending…'));
  if (run !== undefined && run.status === 'running' && (run.step || run.tool)) {
    who.append(el('span', 'tag', [run.step, run.tool].filter(Boolean).join(' · ')));
  }
  if (run !== undefined && run.status !== 'running' && run.status !== 'completed') {
    who.append(el('span', `tag ${run.status}`, run.status === 'failed' ? `failed: ${run.error ?? ''}` : run.status));
  }
  const bubble = /** @type {HTMLElement} */ (node.lastChild);
  const text = message.status === 'deleted' ? 'message deleted' : message.text;
  if (bubble.textContent !== text) bubble.textContent = text;
  place(node, pending ? Number.MAX_SAFE_INTEGER : message.firstSeq ?? Number.MAX_SAFE_INTEGER);
  if (agent && text && metrics.firstText === null) metrics.firstText = performance.now();
}

/** @param {import('/client/tether.js').Approval} approval */
function renderApproval(approval) {
  const key = `a:${approval.id}`;
  let node = nodes.get(key);
  if (node === undefined) {
    node = el('div', 'approval');
    node.append(el('div', 'q'), el('div', 'options'), el('div', 'outcome'));
    nodes.set(key, node);
  }
  const [q, options, outcome] = /** @type {HTMLElement[]} */ ([...node.children]);
  const expired = approval.status === 'pending' && approval.expiresAt !== undefined && approval.expiresAt <= Date.now();
  const open = approval.status === 'pending' && !expired;
  node.className = `approval ${open ? 'open' : approval.status === 'decided' ? 'done' : expired ? 'expired' : approval.status}`;
  node.dataset.approval = approval.id;
  q.textContent = approval.prompt || 'The agent asks:';
  const busy = node.dataset.busy === '1';
  if (options.childElementCount !== approval.options.length) {
    options.replaceChildren(
      ...approval.options.map((option) => {
        const button = /** @type {HTMLButtonElement} */ (el('button', 'btn', option));
        button.type = 'button';
        button.dataset.option = option;
        button.addEventListener('click', () => answer(approval.id, option, /** @type {HTMLElement} */ (node)));
        return button;
      }),
    );
  }
  for (const button of /** @type {NodeListOf<HTMLButtonElement>} */ (options.querySelectorAll('button'))) {
    button.disabled = !open || busy;
    button.classList.toggle('primary', open && button === options.firstChild);
    button.classList.toggle('chosen', approval.status === 'decided' && button.dataset.option === approval.option);
  }
  if (approval.status === 'decided') {
    outcome.textContent = `Answered “${approval.option}” by ${approval.participant ?? 'someone'}`;
  } else if (approval.status === 'expired' || expired) {
    outcome.textContent = 'Expired without an answer';
  } else if (approval.status === 'closed') {
    outcome.textContent = 'Closed: the run ended';
  } else if (approval.expiresAt !== undefined) {
    const left = Math.max(0, Math.round((approval.expiresAt - Date.now()) / 1000));
    outcome.textContent = `Any tab can answer · ${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} left`;
  } else {
    outcome.textContent = 'Any tab of this session can answer; the first answer wins';
  }
  place(node, approval.firstSeq);
}

/**
 * @param {string} approval
 * @param {string} option
 * @param {HTMLElement} node
 */
function answer(approval, option, node) {
  if (client === null) return;
  node.dataset.busy = '1';
  const current = client.view.approvals[approval];
  if (current) renderApproval(current);
  client
    .approve(approval, option)
    .catch((error) => showNotice(error.code === 'approval_closed' ? error.message : `Could not answer: ${error.message}`, 5000))
    .finally(() => {
      delete node.dataset.busy;
      const latest = client?.view.approvals[approval];
      if (latest) renderApproval(latest);
    });
}

function renderAll() {
  if (client === null) return;
  const pinned = true;
  for (const node of nodes.values()) node.remove();
  nodes.clear();
  for (const message of messageList(client.view, { deleted: true })) renderMessage(message);
  for (const approval of Object.values(client.view.approvals)) renderApproval(approval);
  for (const pending of client.pending.values()) {
    if (!client.view.messages[pending.id]) renderMessage({ ...pending, role: 'user', status: 'pending', participant: claims.sub }, true);
  }
  updateControls();
  settle(pinned);
}

function updateControls() {
  if (client === null) return;
  const run = client.activeRun();
  cancelButton.hidden = run === null;
  cancelButton.disabled = run === null || client.state !== 'live' || cancelButton.dataset.busy === run.id;
  sendButton.disabled = client.state === 'failed' || client.state === 'closed';
}

const AGENT_LABELS = {
  thinking: 'Agent thinking…',
  streaming: 'Agent streaming',
  idle: 'Agent idle',
  offline: 'Agent offline',
};

/** @param {import('/client/tether.js').AgentState} state */
function showAgentState(state) {
  const asking = client !== null && client.approvals().length > 0 && state !== 'streaming';
  $('agent-badge').dataset.state = state;
  $('agent-label').textContent = asking ? 'Agent waiting for you' : AGENT_LABELS[state];
}

/** @type {any} */
let countdown = null;

/** @param {import('/client/tether.js').StateDetail} detail */
function showConnection(detail) {
  const badge = $('conn-badge');
  const label = $('conn-label');
  badge.dataset.state = detail.state;
  clearInterval(countdown);
  if (detail.state === 'reconnecting') {
    const at = Date.now() + (detail.delay ?? 0);
    const tick = () => {
      const left = Math.max(0, at - Date.now());
      label.textContent = left >= 1000 ? `Reconnecting in ${Math.ceil(left / 1000)}s` : 'Reconnecting…';
    };
    tick();
    countdown = setInterval(tick, 250);
  } else {
    label.textContent = {
      idle: 'Starting',
      connecting: 'Connecting…',
      replaying: 'Syncing…',
      live: 'Live',
      closed: 'Closed',
      failed: 'Disconnected',
    }[detail.state];
  }
  if (detail.state === 'failed') {
    const error = detail.error;
    const why = error ? `${error.code}: ${error.message}` : `closed with ${detail.code}`;
    showNotice(`The gateway refused this page (${why}). Open the URL that \`tether up\` prints, or mint a token with \`tether token --sessions 'demo-*'\` and open /#token=…`);
  } else if (detail.state === 'live') {
    hideNotice();
  }
  updateControls();
}

function showPeople() {
  if (client === null) return;
  const users = Object.values(client.members).filter((m) => m.role === 'user');
  $('people-count').textContent = String(users.length);
  $('people').title = users.length
    ? `In this session: ${users.map((m) => `${m.participant}${m.device ? ` (${m.device.slice(0, 40)})` : ''}`).join(', ')}`
    : 'Nobody else here';
}

/** @type {any} */
let noticeTimer = null;

/**
 * @param {string} text
 * @param {number} [hideAfter]
 */
function showNotice(text, hideAfter) {
  notice.replaceChildren();
  // `code` spans for anything between backticks
  text.split('`').forEach((part, index) => notice.append(index % 2 ? el('code', '', part) : document.createTextNode(part)));
  notice.hidden = false;
  clearTimeout(noticeTimer);
  if (hideAfter) noticeTimer = setTimeout(hideNotice, hideAfter);
}

function hideNotice() {
  notice.hidden = true;
}

// ---- wiring -------------------------------------------------------------------------------

function start() {
  if (!token) {
    showNotice('No access token. Start Tether with `tether up` and open the demo page URL it prints (it carries a token after #token=).');
    $('conn-badge').dataset.state = 'failed';
    $('conn-label').textContent = 'No token';
    sendButton.disabled = true;
    return;
  }
  if (patterns.length && !grants(patterns, session)) {
    showNotice(`This token does not grant session \`${session}\` (it grants ${patterns.join(', ')}). Use a session id that matches.`);
  } else if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
    showNotice('This token has expired. Run `tether up` again (or `tether token`) for a fresh demo URL.');
  }
  const c = new TetherClient({ session, token, device: deviceName() });
  client = c;
  metrics.restoredText = messageList(c.view).some((m) => m.role !== 'user' && m.text !== '');
  c.on('state', showConnection);
  c.on('hello', () => (metrics.hello ??= performance.now()));
  c.on('caughtup', () => {
    metrics.caughtUp ??= performance.now();
    updateControls();
  });
  c.on('reset', renderAll);
  c.on('message', ({ message, event, replay }) => {
    const pinned = nearBottom();
    renderMessage(message);
    if (!replay && event.type === 'message.delta' && metrics.firstLiveToken === null) metrics.firstLiveToken = performance.now();
    settle(pinned);
  });
  c.on('pending', ({ pending }) => {
    const pinned = nearBottom();
    for (const item of pending) {
      if (!c.view.messages[item.id]) renderMessage({ ...item, role: 'user', status: 'pending', participant: claims.sub }, true);
    }
    for (const [key, node] of nodes) {
      const id = key.slice(2);
      if (key.startsWith('m:') && !c.view.messages[id] && !c.pending.has(id)) {
        node.remove();
        nodes.delete(key);
      }
    }
    settle(pinned);
  });
  c.on('run', ({ run }) => {
    for (const message of Object.values(c.view.messages)) if (message.run === run.id) renderMessage(message);
    for (const approval of Object.values(c.view.approvals)) if (approval.run === run.id) renderApproval(approval);
    if (run.status !== 'running') delete cancelButton.dataset.busy;
    updateControls();
  });
  c.on('approval', ({ approval }) => {
    const pinned = nearBottom();
    renderApproval(approval);
    showAgentState(c.agentState);
    settle(pinned);
  });
  c.on('agentstate', ({ state }) => showAgentState(state));
  c.on('presence', showPeople);
  c.on('error', ({ code, message, id }) => {
    if (id !== null) showNotice(`${code}: ${message}`, 6000);
  });
  renderAll();
  showAgentState(c.agentState);
  c.connect();
  setInterval(() => {
    for (const approval of Object.values(c.view.approvals)) if (approval.status === 'pending') renderApproval(approval);
  }, 1000);
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? 'Edge' : /Firefox\//.test(ua) ? 'Firefox' : /Chrome\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  return `${browser} tab`;
}

function autosize() {
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
}

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || client === null) return;
  input.value = '';
  autosize();
  client.send(text).catch((error) => showNotice(`Not sent (${error.code ?? 'error'}): ${error.message}`, 6000));
});

input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    /** @type {HTMLFormElement} */ ($('composer')).requestSubmit();
  }
});
input.addEventListener('input', autosize);

cancelButton.addEventListener('click', () => {
  const run = client?.activeRun();
  if (!client || !run) return;
  cancelButton.dataset.busy = run.id;
  updateControls();
  client.cancel({ run: run.id }).catch((error) => {
    delete cancelButton.dataset.busy;
    updateControls();
    showNotice(`Could not stop: ${error.message}`, 5000);
  });
});

$('session').addEventListener('click', () => {
  const link = `${location.origin}/?session=${encodeURIComponent(session)}${token ? `#token=${token}` : ''}`;
  const label = $('copy-label');
  const done = (/** @type {string} */ text) => {
    label.textContent = text;
    label.classList.add('done');
    setTimeout(() => {
      label.textContent = 'copy link';
      label.classList.remove('done');
    }, 1600);
  };
  navigator.clipboard?.writeText(link).then(() => done('copied ✓'), () => done('copy failed'));
});

$('new-session').addEventListener('click', () => {
  location.assign(`/?session=${encodeURIComponent(inventSession(patterns))}`);
});

Object.defineProperty(globalThis, 'tetherDemo', { value: { metrics, get client() { return client; } } });

start();
input.focus();
