#!/usr/bin/env bash
# Install everything the test suite needs, then run it. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-compose (v1, from Debian) validates compose.yaml without a Docker engine.
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q docker-compose >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q docker-compose >/dev/null 2>&1)) \
    || echo "warning: could not install docker-compose; the compose test will fail" >&2
fi

# Debian's Chromium for the browser test (Playwright drives it; no browser download),
# node for the JS unit tests (`node --test`; they need no npm packages), redis-server for the
# smoke test of the Redis + SSE benchmark baseline, and Caddy for the
# test of compose's reverse proxy config (deploy/Caddyfile).
for tool in chromium:chromium node:nodejs redis-server:redis-server caddy:caddy; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q "${tool#*:}" >/dev/null 2>&1 \
      || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${tool#*:}" >/dev/null 2>&1)) \
      || echo "warning: could not install ${tool#*:}; its tests will be skipped" >&2
  fi
done

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'

# The JavaScript parts: the node agent example, the AI SDK client test, the Durable Streams
# conformance suite (each pinned by its package-lock.json).
if command -v npm >/dev/null 2>&1; then
  for dir in examples/node-agent tests/js/ai-sdk tests/js/durable-streams; do
    if [ -f "$dir/package-lock.json" ]; then
      (cd "$dir" && npm ci --no-audit --no-fund --silent)
    fi
  done
fi

python -m pytest "$@"
