// Which session stream holds a session, when the log is partitioned.
//
// With TETHER_STREAM_PARTITIONS=N (default 1) the session log is one stream, TETHER_STREAM
// (default TETHER_SESSIONS), for N = 1, and N streams `{TETHER_STREAM}_0` … `_{N-1}` for
// N > 1. Publishers do not care: they still publish to `tether.s.{session}.{kind}.{id}` and
// the server's account mapping routes each session to its stream. Readers do: an inbox
// consumer is needed on every stream, and a session's history (direct get) is read from
// its own stream, `{base}_{k}` with k = FNV-1a 32 of the session id's UTF-8 bytes, mod N.

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const MAX_PARTITIONS = 64;
const utf8 = new TextEncoder();

/** The partition (0 … N-1) of a session: FNV-1a 32 of its UTF-8 id, modulo N. */
export function partition(session, partitions) {
  if (partitions <= 1) return 0;
  let hash = FNV_OFFSET;
  for (const byte of utf8.encode(session)) {
    hash = Math.imul(hash ^ byte, FNV_PRIME) >>> 0; // xor, then multiply, in 32 bits
  }
  return hash % partitions;
}

/** The partition count from TETHER_STREAM_PARTITIONS (1 when unset). */
export function partitionsFromEnv(value) {
  if (value === undefined || value === "") return 1;
  const n = /^[0-9]+$/.test(value) ? Number.parseInt(value, 10) : Number.NaN;
  if (!(n >= 1 && n <= MAX_PARTITIONS)) {
    throw new Error(`TETHER_STREAM_PARTITIONS must be 1 … ${MAX_PARTITIONS}, not ${value}`);
  }
  return n;
}

/** Every session stream, in partition order (just `base` when not partitioned). */
export function streamNames(base, partitions) {
  if (partitions <= 1) return [base];
  return Array.from({ length: partitions }, (_, k) => `${base}_${k}`);
}

/** The stream that holds `session`. */
export function streamFor(base, session, partitions) {
  return partitions <= 1 ? base : `${base}_${partition(session, partitions)}`;
}
