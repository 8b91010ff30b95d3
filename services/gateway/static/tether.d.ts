// Types of the Tether browser client (/client/tether.js, which re-exports /client/merge.js).
// Protocol: docs/protocol.md; guide: docs/client.md.

export const VIEW_VERSION: 1;
export const MAX_CONTROLS: number;
export const FATAL_CLOSE_CODES: readonly number[];
export const ID_PATTERN: RegExp;
export const STORAGE_INDEX_KEY: string;
/** Unacknowledged user messages are stored under `{storageKey}{OUTBOX_SUFFIX}` (`:outbox`). */
export const OUTBOX_SUFFIX: string;
/** Ms after which a stored, unacknowledged message is dropped instead of resent (24 h). */
export const DEFAULT_OUTBOX_MAX_AGE: number;
export const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>>;

export type MessageStatus = 'streaming' | 'complete' | 'deleted';

export interface Message {
  id: string;
  /** "user" or "agent" */
  role: string;
  /** The text as of the view's position. */
  text: string;
  status: MessageStatus;
  /** Last chunk index applied (deltas and resets); null if none. */
  i: number | null;
  /** Sequence of the last event applied to it. */
  seq: number;
  /** Sequence it was first seen at (its place in the list). */
  firstSeq: number;
  /** Publisher time (Unix ms) of the last event applied. */
  ts: number;
  participant?: string;
  run?: string;
  edited?: boolean;
}

export type RunStatus = 'running' | 'completed' | 'failed' | 'cancelled';

export interface Run {
  id: string;
  status: RunStatus;
  seq: number;
  step?: string;
  tool?: string;
  error?: string;
  reason?: string;
  user?: string;
}

export type ApprovalStatus = 'pending' | 'decided' | 'expired' | 'closed';

export interface Approval {
  id: string;
  run: string;
  prompt: string;
  options: string[];
  status: ApprovalStatus;
  /** Sequence of the last event applied to it. */
  seq: number;
  /** Sequence it was first seen at. */
  firstSeq: number;
  expiresAt?: number;
  user?: string;
  option?: string;
  participant?: string;
  decidedAt?: number;
}

export interface Control {
  id: string;
  action: 'cancel' | 'steer';
  seq: number;
  run?: string;
  participant?: string;
  text?: string;
}

export interface View {
  v: 1;
  epoch: string | null;
  /** Highest sequence applied (event or caught_up): the `since` of the next connect. */
  position: number;
  messages: Record<string, Message>;
  /** Message ids by first appearance. */
  order: string[];
  runs: Record<string, Run>;
  approvals: Record<string, Approval>;
  controls: Control[];
}

export interface Member {
  role: string;
  participant: string;
  connection: string;
  state: string;
  device?: string;
  since?: number;
}

export type AgentState = 'thinking' | 'streaming' | 'idle' | 'offline';

/** A stored event or compacted replay item (docs/protocol.md §5-§7). */
export type TetherEvent = { type: string; [field: string]: any };

export interface Change {
  kind: 'message' | 'run' | 'approval' | 'control' | 'other';
  id?: string;
  event: TetherEvent;
  seq: number;
}

// ---- merge.js: pure view logic ------------------------------------------------------------

export function createView(): View;
export function cloneView(view: View): View;
export function applyHello(view: View, hello: { epoch: string; recovered: boolean }): boolean;
export function applyCaughtUp(view: View, seq: number): void;
export function applyEvent(view: View, seq: number, event: TetherEvent): Change | null;
export function messageList(view: View, options?: { deleted?: boolean }): Message[];
export function pendingApprovals(view: View, now?: number): Approval[];
export function activeRun(view: View): Run | null;
export function membersFromHello(list: Member[] | undefined): Record<string, Member>;
export function applyPresence(
  members: Record<string, Member>,
  frame: { action: string; member: Member },
): boolean;
export function agentState(members: Record<string, Member>, view?: View): AgentState;
export function parseView(json: string | null | undefined): View | null;

// ---- tether.js: the client ----------------------------------------------------------------

export interface BackoffOptions {
  /** First delay, ms (250). */
  initial?: number;
  /** Cap, ms (15000). */
  max?: number;
  /** Growth per attempt (2). */
  factor?: number;
  /** Fraction of the delay taken off at random, 0..1 (0.5). */
  jitter?: number;
}

export type ConnectionState =
  | 'idle'
  | 'connecting'
  | 'replaying'
  | 'live'
  | 'reconnecting'
  | 'closed'
  | 'failed';

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ClientOptions {
  session: string;
  /** A JWT, or a function returning a fresh one for every connect. */
  token: string | (() => string | Promise<string>);
  /** Gateway base URL (http(s):// or ws(s)://); default: the page's origin. */
  url?: string;
  /**
   * Where the position, the view and unacknowledged user messages (the outbox) are kept;
   * default localStorage; null: nowhere.
   */
  storage?: StorageLike | null;
  /** Default `tether:v1:{session}`; the outbox is kept under this plus `:outbox`. */
  storageKey?: string;
  /**
   * Ms after which a stored, unacknowledged user message is dropped on load instead of
   * resent (reported as an `error` with code `outbox_expired`); default 24 h.
   */
  outboxMaxAge?: number;
  /** Sessions kept in storage; the least recently saved are dropped first (20). */
  maxStoredSessions?: number;
  /** A device name shown in presence. */
  device?: string;
  backoff?: BackoffOptions;
  /** Ms between client pings once live (20000); no frame for twice that: reconnect. */
  pingInterval?: number;
  /** Ms to wait for `hello` after connecting (10000). */
  helloTimeout?: number;
  WebSocket?: typeof WebSocket;
  random?: () => number;
}

export interface Ack {
  type?: 'ack';
  id: string;
  seq: number;
  duplicate: boolean;
  approval?: string;
  option?: string;
}

export interface PendingMessage {
  id: string;
  text: string;
  ts: number;
}

export function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;
export function newId(prefix?: string): string;

export class TetherError extends Error {
  constructor(code: string, message: string, id?: string | null);
  code: string;
  id: string | null;
}

export interface StateDetail {
  state: ConnectionState;
  previous: ConnectionState;
  code?: number;
  reason?: string;
  /** Reconnecting: ms until the next attempt. */
  delay?: number;
  attempt?: number;
  /** Failed: the error frame that preceded the close. */
  error?: { code: string; message: string };
}

export interface EventMap {
  state: StateDetail;
  hello: Record<string, any>;
  reset: { reason: 'not_recovered' | 'rollback' | 'forget' };
  event: { seq: number; event: TetherEvent; replay: boolean };
  message: { message: Message; event: TetherEvent; seq: number; replay: boolean };
  run: { run: Run; event: TetherEvent; seq: number; replay: boolean };
  approval: { approval: Approval; event: TetherEvent; seq: number; replay: boolean };
  control: { control: Control; event: TetherEvent; seq: number; replay: boolean };
  caughtup: { seq: number };
  presence: { members: Member[]; frame: Record<string, any> };
  agentstate: { state: AgentState; previous: AgentState };
  pending: { pending: PendingMessage[] };
  ack: Ack;
  /** An error frame; or `token` (the token function failed), `outbox_expired` (a stored message was too old to resend). */
  error: { code: string; message: string; id: string | null };
  change: { kind: string; id?: string; replay?: boolean };
}

export class TetherClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly session: string;
  view: View;
  members: Record<string, Member>;
  pending: Map<string, PendingMessage>;
  state: ConnectionState;
  agentState: AgentState;
  attempt: number;
  hello: Record<string, any> | null;

  on<K extends keyof EventMap>(type: K, listener: (detail: EventMap[K]) => void): () => void;
  connect(): void;
  close(): void;
  wake(): void;
  forget(): void;
  save(): void;
  messages(): Message[];
  approvals(): Approval[];
  activeRun(): Run | null;
  /** Kept in storage until acknowledged; a reloaded page resends it with the same id. */
  send(text: string, options?: { id?: string }): Promise<Ack>;
  cancel(options?: { run?: string; id?: string }): Promise<Ack>;
  steer(text: string, options?: { run?: string; id?: string }): Promise<Ack>;
  approve(approval: string, option: string, options?: { run?: string; id?: string }): Promise<Ack>;
}
