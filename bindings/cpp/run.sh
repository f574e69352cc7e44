#!/usr/bin/env bash
# Builds the C++ binding's tests and example against a tollgate static library, runs the
# GoogleTest suite with ctest, then runs the example service once (its built-in demo).
#
# Usage: bash bindings/cpp/run.sh [path/to/libtollgate.a]
#   default library: ${CARGO_TARGET_DIR:-target}/release/libtollgate.a, with the test hooks
#   (build it with `cargo build --release -p tollgate-capi --features testkit`)
#   build directory: ${CARGO_TARGET_DIR:-target}/cpp
# Needs cmake, a C++17 compiler and GoogleTest (find_package(GTest)). Installs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

target_dir="${CARGO_TARGET_DIR:-target}"
lib="${1:-$target_dir/release/libtollgate.a}"
build="$target_dir/cpp"

if [ ! -f "$lib" ]; then
  echo "run.sh: no static library at $lib" >&2
  echo "  build it with: cargo build --release -p tollgate-capi --features testkit   (or pass its path as the first argument)" >&2
  exit 1
fi
lib="$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")"

step() { printf '\n== %s\n' "$*"; }

step "configure ($build, library $lib)"
cmake -S bindings/cpp -B "$build" -DTOLLGATE_STATIC_LIB="$lib" -DCMAKE_BUILD_TYPE=Release

step "build"
cmake --build "$build" -j2

step "static link check"
for exe in "$build/tollgate_test" "$build/chat_service"; do
  if ldd "$exe" | grep 'libtollgate' >/dev/null; then
    echo "$exe links libtollgate dynamically" >&2
    exit 1
  fi
done
echo "no libtollgate shared object in the test binary or the example"

step "tests (ctest)"
tests=0
ctest --test-dir "$build" --output-on-failure --timeout 120 || tests=$?

# The example runs even after a test failure, so one run shows everything; the exit status
# still reports the failure.
step "example: chat_service (demo)"
env -u LD_LIBRARY_PATH timeout 120 "$build/chat_service"

if [ "$tests" -ne 0 ]; then
  echo "run.sh: ctest failed (exit $tests)" >&2
  exit "$tests"
fi
echo
echo "run.sh: all passed"
