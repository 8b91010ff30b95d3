// Drives Tether's /api/chat with the real Vercel AI SDK (`ai` v5); run by tests/test_aisdk.py.
//
// 1. A DefaultChatTransport sends a user message; its stream is read with readUIMessageStream.
// 2. Once part of the answer has arrived, a second transport calls reconnectToStream (as
//    useChat({ resume: true }) does after a reload) and reads the rest of the answer.
// 3. After both ended, a third reconnect must find nothing in progress (null: HTTP 204).
// Prints one JSON line with what each stream yielded.
import { DefaultChatTransport, readUIMessageStream } from "ai";

const base = process.env.TETHER_URL;
const chatId = process.env.CHAT_ID;
const text = process.env.TEXT ?? "hello";
const headers = { Authorization: `Bearer ${process.env.TETHER_TOKEN}` };
const transport = () => new DefaultChatTransport({ api: `${base}/api/chat`, headers });

const errors = [];
const onError = (error) => errors.push(String(error?.message ?? error));
const textOf = (message) =>
  message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");

async function collect(stream, progress) {
  let last;
  for await (const message of readUIMessageStream({ stream, onError })) {
    last = message;
    progress?.(message);
  }
  return { id: last?.id, text: last ? textOf(last) : "", parts: last?.parts.length ?? 0 };
}

async function recordChunks(stream, into) {
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    into.push(value);
  }
}

const userMessageId = `u-${Date.now().toString(36)}`;
const sent = await transport().sendMessages({
  chatId,
  trigger: "submit-message",
  messageId: undefined,
  abortSignal: undefined,
  messages: [{ id: userMessageId, role: "user", parts: [{ type: "text", text }] }],
});

let seen = "";
let resolveMidAnswer;
const midAnswer = new Promise((resolve) => (resolveMidAnswer = resolve));
const first = collect(sent, (message) => {
  seen = textOf(message);
  if (seen.split(" ").length > 5) resolveMidAnswer();
});
await midAnswer;
const textAtReconnect = seen;

const resumed = await transport().reconnectToStream({ chatId });
if (resumed === null) throw new Error("reconnectToStream found nothing in progress mid-answer");
const [forUi, forRecord] = resumed.tee();
const secondChunks = [];
const [firstResult, secondResult] = await Promise.all([
  first,
  collect(forUi),
  recordChunks(forRecord, secondChunks),
]);
const afterwards = await transport().reconnectToStream({ chatId });

console.log(
  JSON.stringify({
    userMessageId,
    messageId: secondChunks.find((c) => c.type === "start")?.messageId,
    textAtReconnect,
    first: firstResult,
    second: secondResult,
    secondChunks,
    afterwards,
    errors,
  }),
);
