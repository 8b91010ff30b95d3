// A Tether agent in JavaScript, written from docs/protocol.md alone: it streams one answer
// into a session by publishing the documented events straight to NATS JetStream.
//
//   TETHER_NATS_URL=nats://127.0.0.1:4222 TETHER_NATS_USER=... TETHER_NATS_PASSWORD=... \
//   SESSION=support-42 TEXT="Hello from Node" node agent.mjs
//
// Optional: RUN (run id), MESSAGE (message id), CHUNKS (number of deltas, default 4),
// TTL_SECONDS (per-session retention, sent as Nats-TTL). Prints one JSON line per PubAck
// on stdout and a final {"done": ...} line; exits non-zero on any error.
//
// Inbox mode (protocol.md, "The durable inbox"): `node agent.mjs --inbox` reads the user
// messages of every session from the durable pull consumer INBOX (default
// tether-inbox-node-agent, created if absent with deliver policy "new") and answers each
// with run `run-{message}`, message `reply-{message}`, text `node echo: {text}`; acks
// after run.completed. Stops after COUNT answers (default: never). Prints {"ready": true}
// once the consumer is bound and {"answered": ...} per answer.
//
// Partitioned log: with TETHER_STREAM_PARTITIONS=N > 1 (default 1; it must equal the
// server's account mapping) the sessions are spread over the streams `{TETHER_STREAM}_0` …
// `_{N-1}` (partition.mjs). Publishing is unchanged; a PubAck from another stream than
// the session's is an error (N differs from the server's). Inbox mode creates the durable
// on every partition stream and consumes them all at once, one loop per stream; its
// {"ready": ...} and {"answered": ...} lines then also name the stream(s).
import { connect, errors, headers } from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { partitionsFromEnv, streamFor, streamNames } from "./partition.mjs";

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

const inboxMode = process.argv.includes("--inbox");
const chunkCount = Number.parseInt(env("CHUNKS", "4"), 10);
const ttlSeconds = env("TTL_SECONDS", "");
if (!(chunkCount >= 1)) throw new Error("CHUNKS must be a positive integer");
const streamBase = env("TETHER_STREAM", "TETHER_SESSIONS");
const partitions = partitionsFromEnv(process.env.TETHER_STREAM_PARTITIONS);

const servers = env("TETHER_NATS_URL", "nats://127.0.0.1:4222").split(",").map((s) => s.trim());
const user = env("TETHER_NATS_USER", "");
const nc = await connect({
  servers,
  name: "tether-node-agent",
  ...(user ? { user, pass: env("TETHER_NATS_PASSWORD", "") } : {}),
});
const js = jetstream(nc);

/** The envelope every stored event carries (protocol.md, "The event envelope"). */
function envelope(session, type, fields) {
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
      const wanted = streamFor(streamBase, event.session, partitions);
      if (partitions > 1 && ack.stream !== wanted) {
        // The server routed the session elsewhere: its partition count is not ours.
        throw new Error(
          `${event.session} was stored in ${ack.stream}, not ${wanted}: ` +
            "TETHER_STREAM_PARTITIONS differs from the server's",
        );
      }
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

/** Stream one answer: run.started, message.start, deltas, message.complete, run.completed. */
async function answer(session, runId, messageId, text, { resendFirst = false } = {}) {
  const runSubject = `tether.s.${session}.r.${runId}`;
  const messageSubject = `tether.s.${session}.a.${messageId}`;
  await publish(
    runSubject,
    envelope(session, "run.started", { run: runId, data: { agent: "node" } }),
    `${session}:r:${runId}:started`,
  );
  await publish(
    messageSubject,
    envelope(session, "message.start", { message: messageId, run: runId, role: "agent" }),
    `${session}:a:${messageId}:start`,
  );
  const chunks = split(text, chunkCount);
  const acks = [];
  for (const [i, chunk] of chunks.entries()) {
    const delta = envelope(session, "message.delta", { message: messageId, i, text: chunk });
    acks.push(await publish(messageSubject, delta, `${session}:a:${messageId}:${i}`));
    if (i === 0 && resendFirst) {
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
    envelope(session, "message.complete", {
      message: messageId,
      run: runId,
      role: "agent",
      text: chunks.join(""),
      chunks: chunks.length,
    }),
    `${session}:a:${messageId}:complete`,
    { rollup: true },
  );
  return await publish(
    runSubject,
    envelope(session, "run.completed", { run: runId }),
    `${session}:r:${runId}:end`,
  );
}

/** Inbox mode: answer user messages from the durable consumer (protocol.md §18). */
async function serveInbox() {
  const streams = streamNames(streamBase, partitions);
  const durable = checkId(env("INBOX", "tether-inbox-node-agent"), "durable name");
  const count = Number.parseInt(env("COUNT", "0"), 10);
  const jsm = await jetstreamManager(nc);
  // One durable of the same name on every session stream (one stream unless partitioned).
  const subscriptions = [];
  for (const stream of streams) {
    try {
      await jsm.consumers.info(stream, durable);
    } catch {
      await jsm.consumers.add(stream, {
        durable_name: durable,
        filter_subjects: ["tether.s.*.u.*", "tether.s.*.c.*"],
        deliver_policy: DeliverPolicy.New,
        ack_policy: AckPolicy.Explicit,
        ack_wait: 120_000_000_000,
        max_deliver: 5,
      });
    }
    const consumer = await js.consumers.get(stream, durable);
    subscriptions.push(await consumer.consume({ max_messages: 16 }));
  }
  const partitioned = partitions > 1;
  console.log(JSON.stringify({ ready: true, durable, ...(partitioned ? { streams } : {}) }));
  let claimed = 0; // answers begun, over every stream's loop

  /** One stream's loop: handle its messages one at a time, in stream order. */
  async function serve(messages, stream) {
    for await (const m of messages) {
      const [, , session, kind, key] = m.subject.split(".");
      let event = null;
      try {
        event = m.json();
      } catch {
        event = null; // not JSON: nothing to answer
      }
      if (kind === "u" && event?.type === "message.created" && typeof event.text === "string") {
        if (count > 0 && claimed >= count) {
          m.nak(); // another stream's loop took the last answer: leave this one to a worker
          break;
        }
        claimed += 1;
        await answer(session, `run-${key}`, `reply-${key}`, `node echo: ${event.text}`);
        console.log(JSON.stringify({ answered: key, session, ...(partitioned ? { stream } : {}) }));
      }
      m.ack();
      if (count > 0 && claimed >= count) break;
    }
    // Done (COUNT reached): stop the other loops too; one still answering finishes first.
    for (const other of subscriptions) other.stop();
  }

  await Promise.all(subscriptions.map((messages, k) => serve(messages, streams[k])));
}

try {
  if (inboxMode) {
    await serveInbox();
  } else {
    const session = checkId(env("SESSION"), "session id");
    const runId = checkId(env("RUN", randomId("run-")), "run id");
    const messageId = checkId(env("MESSAGE", `${runId}-m1`), "message id");
    const end = await answer(session, runId, messageId, env("TEXT"), { resendFirst: true });
    console.log(
      JSON.stringify({ done: true, session, run: runId, message: messageId, seq: end.seq }),
    );
  }
} finally {
  await nc.drain();
}
