#!/usr/bin/env bash
# Installs the official OpenAI SDKs that crates/tollgate-serve/tests/serve_clients.rs runs as clients of `tollgate serve`:
#   - openai from PyPI (tests/clients/requirements.txt) into ${CARGO_TARGET_DIR:-<repo>/target}/clients-venv
#   - openai from npm (tests/clients/package-lock.json) into tests/clients/node_modules
# Idempotent: a venv that already has the pinned version and a node_modules installed from the
# current lock are left as they are.
# Usage: bash crates/tollgate-serve/tests/clients/setup.sh   (from anywhere; .ci/run calls it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="$target/clients-venv"

pinned="$(sed -n 's/^openai==\([^[:space:]#]*\).*/\1/p' "$here/requirements.txt")"
if [ -z "$pinned" ]; then
  echo "tests/clients/requirements.txt must pin openai==<version>" >&2
  exit 1
fi

have=""
if [ -x "$venv/bin/python" ]; then
  have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("openai"))' 2>/dev/null || true)"
fi
if [ "$have" = "$pinned" ]; then
  echo "python: openai $have already in $venv"
else
  if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 is missing: install Python 3.9 or later (and python3-venv on Debian)" >&2
    exit 1
  fi
  mkdir -p "$target"
  # A venv whose interpreter no longer runs (Python moved or upgraded) is made anew.
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 || { rm -rf "$venv"; python3 -m venv "$venv"; }
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$here/requirements.txt"
  echo "python: openai $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("openai"))') installed in $venv"
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js 20 or later with npm" >&2
  exit 1
fi
cd "$here"
# npm ci writes node_modules/.package-lock.json; a copy of the lock it installed from tells
# whether the install is current.
stamp="node_modules/.tollgate-lock"
if [ -d node_modules/openai ] && [ -f "$stamp" ] && cmp -s package-lock.json "$stamp"; then
  echo "node: openai $(node -p 'require("./node_modules/openai/package.json").version') already in tests/clients/node_modules"
else
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
  echo "node: openai $(node -p 'require("./node_modules/openai/package.json").version') installed in tests/clients/node_modules"
fi
