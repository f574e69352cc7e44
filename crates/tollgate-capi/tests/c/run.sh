#!/usr/bin/env bash
# Builds ffi_test.c against the static library and runs it under valgrind.
#
#   bash crates/tollgate-capi/tests/c/run.sh [path/to/libtollgate.a]
#
# The library defaults to ${CARGO_TARGET_DIR:-target}/release/libtollgate.a, built with the test
# hooks: `cargo build --release -p tollgate-capi --features testkit`.
# Build output goes to ${CARGO_TARGET_DIR:-target}/c/.
# Needs gcc and valgrind on PATH; installs nothing. Exits non-zero when the build fails, a test
# fails, valgrind finds an error or a leak that valgrind.supp does not cover, or the run
# takes longer than 10 minutes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
lib="${1:-$target/release/libtollgate.a}"

for tool in gcc valgrind timeout; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run.sh: $tool not found on PATH" >&2
    exit 2
  fi
done
if [[ ! -f "$lib" ]]; then
  echo "run.sh: no static library at $lib (build it with cargo build --release -p tollgate-capi --features testkit, or pass its path)" >&2
  exit 2
fi

out="$target/c"
mkdir -p "$out"
exe="$out/ffi_test"
log="$out/valgrind.log"
testlog="$out/ffi_test.log"

echo "run.sh: building $exe against $lib"
gcc -std=c11 -Wall -Wextra -Werror -g -O1 -I "$here/../../include" "$here/ffi_test.c" "$lib" \
  -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -o "$exe"

# The tests' temporary policy files go here, not to the shared /tmp.
tmp="$(mktemp -d "$out/tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "run.sh: running under valgrind (valgrind log: $log, test output: $testlog)"
status=0
# --num-callers: the suppressions name the static initialisers, which sit deeper than
# valgrind's default 12 frames. RUST_BACKTRACE=0 keeps the deliberate panic (tg_test_panic)
# to one line on stderr.
TMPDIR="$tmp" RUST_BACKTRACE=0 timeout 600 valgrind \
  --error-exitcode=1 \
  --leak-check=full \
  --num-callers=64 \
  --suppressions="$here/valgrind.supp" \
  --log-file="$log" \
  "$exe" >"$testlog" 2>&1 || status=$?

# The test's own failures (FAIL file:line ...) and its summary line.
grep -E '^FAIL ' "$testlog" || true
summary="$(grep -E '^c ffi tests: ' "$testlog" || true)"

echo "---- valgrind"
grep -E 'ERROR SUMMARY|LEAK SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|suppressed:' "$log" \
  | sed -E 's/^==[0-9]+== *//' || true
echo "---- tests"
echo "${summary:-c ffi tests: no summary line (the program did not finish)}"

if [[ $status -eq 0 ]]; then
  echo "run.sh: ok"
  exit 0
fi
if [[ $status -eq 124 ]]; then
  echo "run.sh: FAILED: timed out after 600 s" >&2
elif [[ -z "$summary" ]]; then
  echo "run.sh: FAILED: the program crashed or was killed (status $status)" >&2
  tail -n 40 "$testlog" >&2 || true
fi
if ! grep -qE 'ERROR SUMMARY: 0 errors' "$log"; then
  echo "run.sh: FAILED: valgrind found errors; its findings:" >&2
  grep -E '^==[0-9]+== ' "$log" | sed -n '/HEAP SUMMARY/q;p' | head -300 >&2 || true
fi
if [[ "$summary" =~ ([1-9][0-9]*)\ failed ]]; then
  echo "run.sh: FAILED: ${BASH_REMATCH[1]} check(s) failed" >&2
fi
exit "$status"
