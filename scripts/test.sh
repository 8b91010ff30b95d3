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

if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -d .venv ] || python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'

if command -v npm >/dev/null 2>&1 && [ -f examples/node-agent/package.json ]; then
  (cd examples/node-agent && npm ci --no-audit --no-fund --silent)
fi

python -m pytest "$@"
