#!/usr/bin/env bash
# Builds, installs and tests the Python binding, then runs its benchmark briefly.
# Usage: bash bindings/python/run.sh   (from anywhere; CI calls it)
#
# Needs cargo and python3 (>= 3.9, with venv); pip installs from PyPI only: maturin, pytest,
# httpx, openai, mypy, aiohttp (pinned in requirements-dev.txt). The wheels are built into
# ${CARGO_TARGET_DIR:-<repo>/target}/python/wheels, installed into a fresh venv there
# (python/venv), and the suite runs from a directory outside the source tree, so it tests the
# installed wheel, not the sources.
set -euo pipefail
cd "$(dirname "$0")"
here="$PWD"
repo="$(cd ../.. && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
work="$CARGO_TARGET_DIR/python"

step() { printf '\n== python: %s\n' "$*"; }

step "toolchain"
command -v python3 >/dev/null 2>&1 || { echo "python3 is missing: install Python 3.9 or later" >&2; exit 1; }
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' ||
  { echo "$(python3 --version) is too old: tollgate needs Python 3.9 or later" >&2; exit 1; }
python3 --version

step "a fresh venv ($work/venv) with maturin and the test dependencies"
rm -rf "$work/venv" "$work/wheels"
mkdir -p "$work"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

step "build the wheel and the test upstream's wheel (maturin build --release, abi3)"
start=$SECONDS
"$work/venv/bin/maturin" build --release --quiet -o "$work/wheels"
(cd testkit && "$work/venv/bin/maturin" build --release --quiet -o "$work/wheels")
echo "built in $((SECONDS - start)) s:"
ls -l "$work/wheels"

step "install both wheels into the venv"
"$py" -m pip install --quiet --disable-pip-version-check --no-deps "$work"/wheels/*.whl

# Outside the source tree: `import tollgate` must find the installed package.
run="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-python.XXXXXX")"
trap 'rm -rf "$run"' EXIT
cp -r tests typecheck "$run/"
cd "$run"
"$py" -c 'import tollgate, sys; assert "site-packages" in tollgate.__file__, tollgate.__file__; print("tollgate", tollgate.__version__, "from", tollgate.__file__)'

step "types (mypy --strict over the package and a usage file)"
"$py" -m mypy --strict --no-incremental -p tollgate
"$py" -m mypy --strict --no-incremental typecheck/usage.py

step "tests (pytest, from outside the source tree)"
"$py" -m pytest -q -p no:cacheprovider tests

step "example (examples/python/quickstart.py)"
"$py" "$repo/examples/python/quickstart.py" >/dev/null

step "benchmark (short run against the test upstream in its own process; figures: bench/run.py against ../shared/bench's nginx)"
"$py" "$here/bench/run.py" --testkit --n 2000 --rounds 1
