// The public Durable Streams server conformance suite, pointed at a running gateway.
import { describe } from "vitest"
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DURABLE_STREAMS_URL
if (!baseUrl) {
  throw new Error("set DURABLE_STREAMS_URL to the gateway's base URL (http://127.0.0.1:PORT)")
}

describe("Tether gateway", () => {
  runConformanceTests({
    baseUrl,
    // Must exceed the gateway's long-poll timeout (TETHER_STREAMS_LONG_POLL_SECONDS).
    longPollTimeoutMs: Number(process.env.DURABLE_STREAMS_LONG_POLL_MS ?? 20_000),
  })
})
