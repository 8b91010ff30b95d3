// A Tether agent in JavaScript, written from docs/protocol.md alone: it streams one answer
// into a session by publishing the documented events straight to NATS JetStream.
//
//   TETHER_NATS_URL=nats://127.0.0.1:4222 TETHER_NATS_USER=... TETHER_NATS_PASSWORD=... \
//   SESSION=support-42 TEXT="Hello from Node" node agent.mjs
//
// Optional: RUN (run id), MESSAGE (message id), CHUNKS (number of deltas, default 4),
// TTL_SECONDS (per-session retention, sent as Nats-TTL). Prints one JSON line per PubAck
// on stdout and a final {"done": ...} line; exits non-zero on any error.
import { connect, errors, headers } from "@nats-io/transport-node";
import { JetStreamApiError, jetstream } from "@nats-io/jetstream";

const ID = /^[A-Za-z0-9_-]{1,128}$/; // protocol.md, "Ids"
const ATTEMPTS = 5;

function env(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === "") {
    if (fallback === undefined) throw new Error(`${name} is not set`);
    return fallback;
  }
  return value;
}

function checkId(value, what) {
  if (!ID.test(value)) throw new Error(`${what} ${JSON.stringify(value)} breaks the id rules`);
  return value;
}

function randomId(prefix) {
  return prefix + Math.random().toString(36).slice(2, 12) + Date.now().toString(36);
}

/** Split text into at most n non-empty chunks, never inside a code point. */
function split(text, n) {
  const points = Array.from(text);
  const size = Math.max(1, Math.ceil(points.length / n));
  const chunks = [];
  for (let at = 0; at < points.length; at += size) {
    chunks.push(points.slice(at, at + size).join(""));
  }
  return chunks;
}

const session = checkId(env("SESSION"), "session id");
const runId = checkId(env("RUN", randomId("run-")), "run id");
const messageId = checkId(env("MESSAGE", `${runId}-m1`), "message id");
const text = env("TEXT");
const chunkCount = Number.parseInt(env("CHUNKS", "4"), 10);
const ttlSeconds = env("TTL_SECONDS", "");
if (!(chunkCount >= 1)) throw new Error("CHUNKS must be a positive integer");

const runSubject = `tether.s.${session}.r.${runId}`;
const messageSubject = `tether.s.${session}.a.${messageId}`;

const servers = env("TETHER_NATS_URL", "nats://127.0.0.1:4222").split(",").map((s) => s.trim());
const user = env("TETHER_NATS_USER", "");
const nc = await connect({
  servers,
  name: "tether-node-agent",
  ...(user ? { user, pass: env("TETHER_NATS_PASSWORD", "") } : {}),
});
const js = jetstream(nc);

/** The envelope every stored event carries (protocol.md, "The event envelope"). */
function envelope(type, fields) {
  return { v: 1, type, session, ts: Date.now(), ...fields };
}

/**
 * Store one event: a JetStream publish with Nats-Msg-Id (and Nats-Rollup: sub when asked).
 * A timeout is retried with the same Nats-Msg-Id, so the event is stored at most once.
 */
async function publish(subject, event, msgId, { rollup = false } = {}) {
  const h = headers();
  h.set("Nats-Msg-Id", msgId);
  if (rollup) h.set("Nats-Rollup", "sub");
  if (ttlSeconds) h.set("Nats-TTL", `${ttlSeconds}s`);
  const payload = JSON.stringify(event);
  let delay = 100;
  for (let attempt = 1; ; attempt++) {
    try {
      const ack = await js.publish(subject, payload, { headers: h, timeout: 2000 });
      const line = { type: event.type, msgId, seq: ack.seq, duplicate: Boolean(ack.duplicate) };
      console.log(JSON.stringify(line));
      return ack;
    } catch (err) {
      // No PubAck in time, or JetStream answering 503: resend with the same Nats-Msg-Id.
      const retriable =
        err instanceof errors.TimeoutError ||
        (err instanceof JetStreamApiError && err.status === 503);
      if (!retriable || attempt >= ATTEMPTS) throw err;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

try {
  await publish(
    runSubject,
    envelope("run.started", { run: runId, data: { agent: "node" } }),
    `${session}:r:${runId}:started`,
  );
  await publish(
    messageSubject,
    envelope("message.start", { message: messageId, run: runId, role: "agent" }),
    `${session}:a:${messageId}:start`,
  );
  const chunks = split(text, chunkCount);
  const acks = [];
  for (const [i, chunk] of chunks.entries()) {
    const delta = envelope("message.delta", { message: messageId, i, text: chunk });
    acks.push(await publish(messageSubject, delta, `${session}:a:${messageId}:${i}`));
    if (i === 0) {
      // A retry of the same chunk (same Nats-Msg-Id): JetStream stores it once and answers
      // with the first copy's sequence and duplicate: true.
      const again = await publish(messageSubject, delta, `${session}:a:${messageId}:${i}`);
      if (!again.duplicate || again.seq !== acks[0].seq) {
        throw new Error(`resent chunk was not reported duplicate: ${JSON.stringify(again)}`);
      }
    }
  }
  await publish(
    messageSubject,
    envelope("message.complete", {
      message: messageId,
      run: runId,
      role: "agent",
      text: chunks.join(""),
      chunks: chunks.length,
    }),
    `${session}:a:${messageId}:complete`,
    { rollup: true },
  );
  const end = await publish(
    runSubject,
    envelope("run.completed", { run: runId }),
    `${session}:r:${runId}:end`,
  );
  console.log(JSON.stringify({ done: true, session, run: runId, message: messageId, seq: end.seq }));
} finally {
  await nc.drain();
}
