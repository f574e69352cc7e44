#!/usr/bin/env bash
# Installs, builds and tests the Node binding, then runs its benchmark briefly.
# Usage: bash bindings/node/run.sh   (from anywhere; CI calls it)
# Needs cargo and Node >= 20; npm installs from the npm registry only (no prebuilt binaries:
# the addon is built from source into ${CARGO_TARGET_DIR:-<repo>/target}).
set -euo pipefail
cd "$(dirname "$0")"
repo="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

step() { printf '\n== node: %s\n' "$*"; }

step "toolchain"
if ! command -v node >/dev/null 2>&1; then
  echo "node is missing: install Node.js 20 or later" >&2
  exit 1
fi
node --version
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "Node.js $(node --version) is too old: tollgate needs 20 or later" >&2
  exit 1
fi

step "npm ci (dev dependencies: openai, typescript)"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

step "build the addon and the test upstream addon (cargo build --release -p tollgate-node -p tollgate-node-testkit, target dir $CARGO_TARGET_DIR; TOLLGATE_NODE_PREBUILT=1: already built)"
node scripts/build.mjs

step "type declarations (tsc over test/types.ts)"
npx --no-install tsc -p test/tsconfig.json

step "tests (node --test)"
node --test --test-timeout=120000 test/*.test.mjs

step "examples (examples/node/openai.mjs, examples/node/chatgpt.mjs)"
node ../../examples/node/openai.mjs >/dev/null
node ../../examples/node/chatgpt.mjs >/dev/null

step "benchmark (short run)"
node bench/bench.mjs --quick
