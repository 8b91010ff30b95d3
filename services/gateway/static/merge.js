// Pure view logic of the Tether client: applies gateway frames (docs/protocol.md §6, §7,
// §10, §14, §17) to a plain, JSON-serialisable view. No DOM, no network, no timers, so it
// runs (and is tested) in node as well as in browsers.
//
// Guarantees, whatever order of connects, replays and reconnects:
// * an event whose sequence is not above the view's position is ignored (no event twice);
// * a delta or reset whose chunk index `i` is not above the message's last applied index is
//   ignored (no text twice), a merged replay delta (`from_i`..`i`) is applied as one piece;
// * a final form (created, complete, edit, delete) replaces whatever streamed before it.

/** View format version, stored with persisted views. */
export const VIEW_VERSION = 1;

/** Control signals kept in a view (older ones are dropped). */
export const MAX_CONTROLS = 100;

/**
 * @typedef {'streaming' | 'complete' | 'deleted'} MessageStatus
 *
 * @typedef {object} Message
 * @property {string} id
 * @property {string} role          "user" or "agent"
 * @property {string} text          the text as of the view's position
 * @property {MessageStatus} status
 * @property {number | null} i      last chunk index applied (deltas and resets), null if none
 * @property {number} seq           sequence of the last event applied to it
 * @property {number} firstSeq      sequence it was first seen at (its place in the list)
 * @property {number} ts            publisher time (ms) of the last event applied
 * @property {string} [participant] the sender's id (user messages)
 * @property {string} [run]         the run that produced it (agent messages)
 * @property {boolean} [edited]
 *
 * @typedef {'running' | 'completed' | 'failed' | 'cancelled'} RunStatus
 *
 * @typedef {object} Run
 * @property {string} id
 * @property {RunStatus} status
 * @property {number} seq
 * @property {string} [step]
 * @property {string} [tool]
 * @property {string} [error]
 * @property {string} [reason]
 * @property {string} [user]
 *
 * @typedef {'pending' | 'decided' | 'expired' | 'closed'} ApprovalStatus
 *
 * @typedef {object} Approval
 * @property {string} id
 * @property {string} run
 * @property {string} prompt
 * @property {string[]} options
 * @property {ApprovalStatus} status
 * @property {number} seq           sequence of the last event applied to it
 * @property {number} firstSeq      sequence it was first seen at
 * @property {number} [expiresAt]
 * @property {string} [user]
 * @property {string} [option]       the chosen option (decided)
 * @property {string} [participant]  who chose it (decided)
 * @property {number} [decidedAt]
 *
 * @typedef {object} Control
 * @property {string} id
 * @property {'cancel' | 'steer'} action
 * @property {number} seq
 * @property {string} [run]
 * @property {string} [participant]
 * @property {string} [text]
 *
 * @typedef {object} View
 * @property {number} v
 * @property {string | null} epoch
 * @property {number} position      highest sequence applied (event or caught_up)
 * @property {Record<string, Message>} messages
 * @property {string[]} order       message ids by first appearance
 * @property {Record<string, Run>} runs
 * @property {Record<string, Approval>} approvals
 * @property {Control[]} controls
 *
 * @typedef {object} Member
 * @property {string} role
 * @property {string} participant
 * @property {string} connection
 * @property {string} state
 * @property {string} [device]
 * @property {number} [since]
 *
 * @typedef {'thinking' | 'streaming' | 'idle' | 'offline'} AgentState
 *
 * @typedef {object} Change
 * @property {'message' | 'run' | 'approval' | 'control' | 'other'} kind
 * @property {string} [id]           the message, run, approval or control id
 * @property {Record<string, any>} event
 * @property {number} seq
 */

/** @returns {View} an empty view */
export function createView() {
  return {
    v: VIEW_VERSION,
    epoch: null,
    position: 0,
    messages: {},
    order: [],
    runs: {},
    approvals: {},
    controls: [],
  };
}

/**
 * A deep copy of a view (for rolling back a replay cut short, and for persistence).
 * @param {View} view
 * @returns {View}
 */
export function cloneView(view) {
  return JSON.parse(JSON.stringify(view));
}

/**
 * Apply a `hello` frame: remember the epoch; when the position was not recovered
 * (another epoch, trimmed history), clear the view: the replay rebuilds it.
 * @param {View} view
 * @param {{epoch: string, recovered: boolean}} hello
 * @returns {boolean} true when the view was cleared
 */
export function applyHello(view, hello) {
  const cleared = !hello.recovered;
  if (cleared) {
    Object.assign(view, createView());
  }
  view.epoch = typeof hello.epoch === 'string' ? hello.epoch : null;
  return cleared;
}

/**
 * Apply a `caught_up` frame: the position moves to the replay's end.
 * @param {View} view
 * @param {number} seq
 */
export function applyCaughtUp(view, seq) {
  if (Number.isInteger(seq) && seq > view.position) view.position = seq;
}

/** @param {unknown} value @returns {value is number} */
const isIndex = (value) => Number.isInteger(value) && /** @type {number} */ (value) >= 0;

/** @param {unknown} value @returns {string} */
const str = (value) => (typeof value === 'string' ? value : '');

/**
 * Apply one `event` frame (a stored event or a compacted replay item).
 * @param {View} view
 * @param {number} seq
 * @param {Record<string, any>} event
 * @returns {Change | null} what changed; null when nothing did (an event already applied, a
 *   chunk already applied, a start of a known message)
 */
export function applyEvent(view, seq, event) {
  if (!Number.isInteger(seq) || seq <= view.position) return null;
  view.position = seq;
  if (event === null || typeof event !== 'object' || typeof event.type !== 'string') {
    return { kind: 'other', event: event ?? {}, seq };
  }
  const type = event.type;
  if (type.startsWith('message.') && typeof event.message === 'string') {
    return applyMessage(view, seq, event) ? { kind: 'message', id: event.message, event, seq } : null;
  }
  if (type.startsWith('run.') && typeof event.run === 'string') {
    applyRun(view, seq, event);
    return { kind: 'run', id: event.run, event, seq };
  }
  if (type.startsWith('approval.') && typeof event.approval === 'string') {
    applyApproval(view, seq, event);
    return { kind: 'approval', id: event.approval, event, seq };
  }
  if ((type === 'control.cancel' || type === 'control.steer') && typeof event.control === 'string') {
    /** @type {Control} */
    const control = { id: event.control, action: type === 'control.cancel' ? 'cancel' : 'steer', seq };
    if (typeof event.run === 'string') control.run = event.run;
    if (typeof event.participant === 'string') control.participant = event.participant;
    if (typeof event.text === 'string') control.text = event.text;
    view.controls.push(control);
    if (view.controls.length > MAX_CONTROLS) view.controls.splice(0, view.controls.length - MAX_CONTROLS);
    return { kind: 'control', id: event.control, event, seq };
  }
  return { kind: 'other', event, seq };
}

/**
 * @param {View} view
 * @param {Record<string, any>} event
 * @param {number} seq
 * @returns {Message}
 */
function ensureMessage(view, event, seq) {
  let message = view.messages[event.message];
  if (message === undefined) {
    message = {
      id: event.message,
      role: typeof event.role === 'string' ? event.role : 'agent',
      text: '',
      status: 'streaming',
      i: null,
      seq,
      firstSeq: seq,
      ts: Number.isFinite(event.ts) ? event.ts : 0,
    };
    view.messages[event.message] = message;
    view.order.push(event.message);
  }
  if (typeof event.role === 'string') message.role = event.role;
  if (typeof event.participant === 'string') message.participant = event.participant;
  if (typeof event.run === 'string') message.run = event.run;
  return message;
}

/**
 * @param {View} view
 * @param {number} seq
 * @param {Record<string, any>} event
 * @returns {boolean} whether the message changed
 */
function applyMessage(view, seq, event) {
  const known = view.messages[event.message];
  const final = known !== undefined && known.status !== 'streaming';
  switch (event.type) {
    case 'message.created':
    case 'message.complete':
    case 'message.edit': {
      const message = ensureMessage(view, event, seq);
      message.text = str(event.text);
      message.status = 'complete';
      if (event.type === 'message.edit') message.edited = true;
      return touch(message, seq, event);
    }
    case 'message.delete': {
      const message = ensureMessage(view, event, seq);
      message.text = '';
      message.status = 'deleted';
      return touch(message, seq, event);
    }
    case 'message.start': {
      if (known !== undefined) return false; // already known: never wipe its text
      return touch(ensureMessage(view, event, seq), seq, event);
    }
    case 'message.snapshot': {
      if (final) return false;
      if (known !== undefined && isIndex(known.i) && isIndex(event.i) && event.i < known.i) {
        return false; // an older checkpoint than what the view holds
      }
      const message = ensureMessage(view, event, seq);
      message.text = str(event.text);
      if (isIndex(event.i)) message.i = event.i;
      return touch(message, seq, event);
    }
    case 'message.delta':
    case 'message.reset': {
      if (final) return false;
      if (known !== undefined && isIndex(known.i) && isIndex(event.i) && event.i <= known.i) {
        return false; // chunk already applied
      }
      const message = ensureMessage(view, event, seq);
      message.text = event.type === 'message.reset' ? str(event.text) : message.text + str(event.text);
      if (isIndex(event.i)) message.i = event.i;
      return touch(message, seq, event);
    }
    default:
      return false; // unknown message.* types are ignored
  }
}

/**
 * @param {Message} message
 * @param {number} seq
 * @param {Record<string, any>} event
 * @returns {true}
 */
function touch(message, seq, event) {
  message.seq = seq;
  if (Number.isFinite(event.ts)) message.ts = event.ts;
  return true;
}

const TERMINAL = { 'run.completed': 'completed', 'run.failed': 'failed', 'run.cancelled': 'cancelled' };

/** @param {string} status */
const isTerminal = (status) => status === 'completed' || status === 'failed' || status === 'cancelled';

/**
 * @param {View} view
 * @param {number} seq
 * @param {Record<string, any>} event
 */
function applyRun(view, seq, event) {
  let run = view.runs[event.run];
  if (run === undefined) {
    run = { id: event.run, status: 'running', seq };
    view.runs[event.run] = run;
  }
  run.seq = seq;
  if (typeof event.user === 'string') run.user = event.user;
  const terminal = /** @type {Record<string, RunStatus>} */ (TERMINAL)[event.type];
  if (terminal !== undefined) {
    if (!isTerminal(run.status)) run.status = terminal; // the first terminal event wins
    if (typeof event.error === 'string') run.error = event.error;
    if (typeof event.reason === 'string') run.reason = event.reason;
    for (const approval of Object.values(view.approvals)) {
      if (approval.run === run.id && approval.status === 'pending') approval.status = 'closed';
    }
  } else if (event.type === 'run.progress') {
    if (typeof event.step === 'string') run.step = event.step;
    if (typeof event.tool === 'string') run.tool = event.tool;
  }
}

/**
 * @param {View} view
 * @param {number} seq
 * @param {Record<string, any>} event
 */
function applyApproval(view, seq, event) {
  let approval = view.approvals[event.approval];
  if (approval === undefined) {
    approval = {
      id: event.approval,
      run: str(event.run),
      prompt: '',
      options: [],
      status: 'pending',
      seq,
      firstSeq: seq,
    };
    view.approvals[event.approval] = approval;
  }
  approval.seq = seq;
  if (typeof event.user === 'string') approval.user = event.user;
  if (event.type === 'approval.requested') {
    approval.prompt = str(event.prompt);
    approval.options = Array.isArray(event.options) ? event.options.filter((o) => typeof o === 'string') : [];
    if (Number.isFinite(event.expires_at)) approval.expiresAt = event.expires_at;
    const run = view.runs[approval.run];
    if (approval.status === 'pending' && run !== undefined && isTerminal(run.status)) approval.status = 'closed';
  } else if (event.type === 'approval.decided') {
    approval.status = 'decided';
    if (typeof event.option === 'string') approval.option = event.option;
    if (typeof event.participant === 'string') approval.participant = event.participant;
    if (Number.isFinite(event.decided_at)) approval.decidedAt = event.decided_at;
  } else if (event.type === 'approval.expired') {
    if (approval.status !== 'decided') approval.status = 'expired';
  }
}

/**
 * The messages to show, in order (deleted ones included only when asked).
 * @param {View} view
 * @param {{deleted?: boolean}} [options]
 * @returns {Message[]}
 */
export function messageList(view, options = {}) {
  const out = [];
  for (const id of view.order) {
    const message = view.messages[id];
    if (message !== undefined && (options.deleted || message.status !== 'deleted')) out.push(message);
  }
  return out;
}

/**
 * Approvals still waiting for an answer (and not past `expires_at` at `now`).
 * @param {View} view
 * @param {number} [now] Unix ms
 * @returns {Approval[]}
 */
export function pendingApprovals(view, now = Date.now()) {
  return Object.values(view.approvals)
    .filter((a) => a.status === 'pending' && (a.expiresAt === undefined || a.expiresAt > now))
    .sort((a, b) => a.firstSeq - b.firstSeq);
}

/**
 * The run currently running (the latest started one), if any.
 * @param {View} view
 * @returns {Run | null}
 */
export function activeRun(view) {
  let found = null;
  for (const run of Object.values(view.runs)) {
    if (run.status === 'running' && (found === null || run.seq > found.seq)) found = run;
  }
  return found;
}

// ---- presence (§14): not part of the view, it is never replayed -------------------------

/**
 * Members from a `hello` frame's `presence` list, by connection id.
 * @param {Member[] | undefined} list
 * @returns {Record<string, Member>}
 */
export function membersFromHello(list) {
  /** @type {Record<string, Member>} */
  const members = {};
  for (const member of Array.isArray(list) ? list : []) {
    if (member && typeof member.connection === 'string') members[member.connection] = member;
  }
  return members;
}

/**
 * Apply a `presence` frame (join, update, leave) to the members.
 * @param {Record<string, Member>} members
 * @param {{action: string, member: Member}} frame
 * @returns {boolean} whether anything changed
 */
export function applyPresence(members, frame) {
  const member = frame && frame.member;
  if (!member || typeof member.connection !== 'string') return false;
  if (frame.action === 'leave') {
    if (!(member.connection in members)) return false;
    delete members[member.connection];
    return true;
  }
  members[member.connection] = member;
  return true;
}

const AGENT_RANK = { streaming: 4, thinking: 3, idle: 2, offline: 1 };

/**
 * What the agents of the session are doing: the busiest agent member's state; without an
 * agent member, what the log says (a running run), else `offline`.
 * @param {Record<string, Member>} members
 * @param {View} [view]
 * @returns {AgentState}
 */
export function agentState(members, view) {
  /** @type {AgentState | null} */
  let best = null;
  for (const member of Object.values(members)) {
    if (member.role !== 'agent') continue;
    const state = /** @type {AgentState} */ (member.state in AGENT_RANK ? member.state : 'idle');
    if (best === null || AGENT_RANK[state] > AGENT_RANK[best]) best = state;
  }
  if (best !== null) return best;
  if (view !== undefined && activeRun(view) !== null) {
    const streaming = Object.values(view.messages).some((m) => m.status === 'streaming' && m.role === 'agent');
    return streaming ? 'streaming' : 'thinking';
  }
  return 'offline';
}

/**
 * A view read back from storage, or null when it is missing, corrupt or of another version.
 * @param {string | null | undefined} json
 * @returns {View | null}
 */
export function parseView(json) {
  if (typeof json !== 'string' || json === '') return null;
  try {
    const view = JSON.parse(json);
    if (
      view === null ||
      typeof view !== 'object' ||
      view.v !== VIEW_VERSION ||
      !Number.isInteger(view.position) ||
      view.position < 0 ||
      typeof view.messages !== 'object' ||
      !Array.isArray(view.order) ||
      typeof view.runs !== 'object' ||
      typeof view.approvals !== 'object' ||
      !Array.isArray(view.controls)
    ) {
      return null;
    }
    return view;
  } catch {
    return null;
  }
}
