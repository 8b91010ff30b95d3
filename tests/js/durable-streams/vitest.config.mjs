// Runs the Durable Streams conformance suite against DURABLE_STREAMS_URL (a Tether gateway
// started with TETHER_STREAMS_AUTH=none; tests/test_durable_streams.py does that).
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["conformance.test.mjs"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // One file, run serially; the suite's own test.concurrent groups still overlap.
    fileParallelism: false,
  },
})
