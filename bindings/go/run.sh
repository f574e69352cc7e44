#!/usr/bin/env bash
# Checks and tests the Go binding against a tollgate static library, then runs a short benchmark.
#
#   bash bindings/go/run.sh [path/to/libtollgate.a]
#
# The library defaults to ${CARGO_TARGET_DIR:-<repo>/target}/release/libtollgate.a, with the test
# hooks (build it with `cargo build --release -p tollgate-capi --features testkit`); the headers
# come from crates/tollgate-capi/include. Steps: gofmt, go vet, go test -race (the test upstream
# on 127.0.0.1 only), the example once, then benchmarks: Admit + Settle in ns per pair (Go, and the same pair in a C loop), and
# Engine.Send against Go's net/http on the same test upstream, with the ratio.
#
# Needs Go >= 1.23 and gcc on PATH. Installs nothing and downloads nothing: GOTOOLCHAIN=local
# (no toolchain download) and GOPROXY=off (the module has no dependencies). Exits non-zero when
# a step fails; the race-detector test run is bounded to 10 minutes, the benchmarks to 5.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
lib="${1:-$target/release/libtollgate.a}"

export GOTOOLCHAIN=local
export GOPROXY=off
export CGO_ENABLED=1
# The deliberate panic of TestPanic (tg_test_panic) prints one line on stderr, not a backtrace.
export RUST_BACKTRACE=0

for tool in go gcc timeout awk; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run.sh: $tool not found on PATH" >&2
    exit 2
  fi
done
if [[ ! -f "$lib" ]]; then
  echo "run.sh: no static library at $lib" >&2
  echo "  build it with: cargo build --release -p tollgate-capi --features testkit   (or pass its path as the first argument)" >&2
  exit 2
fi
lib="$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")"

# The headers and the library come from CGO_CFLAGS and CGO_LDFLAGS (tag tollgate_custom_lib);
# tollgate_testkit adds the test upstream the tests and benchmarks use.
# Go's build cache keys on these flags, not on the library's bytes: the stamp (a hash of the
# library and the headers) makes a new build of either get compiled and linked, not a cached one.
stamp="$(cat "$lib" "$root"/crates/tollgate-capi/include/*.h | sha256sum | cut -c1-16)"
export CGO_CFLAGS="-I$root/crates/tollgate-capi/include -DTOLLGATE_BUILD_STAMP=$stamp"
export CGO_LDFLAGS="$lib"
tags="tollgate_custom_lib tollgate_testkit"
out="$target/go"
mkdir -p "$out"

step() { printf '\n== %s\n' "$*"; }

cd "$here"
step "go: $(go version) (library $lib)"

step "gofmt"
unformatted="$(gofmt -l . "$root/examples/go" 2>/dev/null || true)"
if [[ -n "$unformatted" ]]; then
  echo "run.sh: not gofmt-formatted:" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "ok"

step "go vet"
go vet -tags "$tags" ./...   # the custom link, the test upstream and the tests
# The default link (pkg-config tollgate-static) and the shared one (tollgate_dynamic) need an
# installed prefix: the install test of .ci/run builds them outside the repository.
echo "ok"

step "go test -race (log: $out/test.log)"
status=0
timeout 600 go test -race -count=1 -timeout 480s -v -tags "$tags" ./... >"$out/test.log" 2>&1 || status=$?
passed=$(grep -c '^--- PASS' "$out/test.log" || true)
failed=$(grep -c '^--- FAIL' "$out/test.log" || true)
skipped=$(grep -c '^--- SKIP' "$out/test.log" || true)
grep -A1 '^--- SKIP' "$out/test.log" | grep -v '^--' || true
grep -E '^(--- FAIL|FAIL|panic:|fatal error:|WARNING: DATA RACE)' "$out/test.log" || true
grep -E '^(ok|FAIL)[[:space:]]' "$out/test.log" || true
echo "go tests (race): $passed passed, $failed failed, $skipped skipped"
if [[ $status -ne 0 ]]; then
  echo "run.sh: FAILED: go test exited with $status; the end of the log:" >&2
  tail -n 60 "$out/test.log" >&2
  exit 1
fi

if [[ -d "$root/examples/go" ]]; then
  step "example (examples/go, against its own test upstream)"
  (cd "$root/examples/go" && timeout 120 go run -tags "$tags" . -demo)
fi

step "benchmarks (log: $out/bench.log)"
# Three rounds of 1 s each; the summary takes each benchmark's best round (the machine may be
# shared: the best round is the least disturbed one).
timeout 300 go test -run '^$' -count=3 -tags "$tags" \
  -bench '^(BenchmarkAdmitSettle|BenchmarkSend|BenchmarkNetHTTP)$' -benchtime=1s . \
  | tee "$out/bench.log"
awk '
  function metric(unit,   i) { for (i = 3; i < NF; i++) if ($(i + 1) == unit) return $i + 0; return "" }
  function lo(old, v) { return (old == "" || v < old) ? v : old }
  function hi(old, v) { return (old == "" || v > old) ? v : old }
  /^BenchmarkAdmitSettle\/go\/requests/ { go_req = lo(go_req, metric("ns/pair")) }
  /^BenchmarkAdmitSettle\/c\/requests/ { c_req = lo(c_req, metric("ns/pair")) }
  /^BenchmarkAdmitSettle\/go\/tenant/ { go_ten = lo(go_ten, metric("ns/pair")) }
  /^BenchmarkAdmitSettle\/c\/tenant/ { c_ten = lo(c_ten, metric("ns/pair")) }
  /^BenchmarkAdmitSettle\/go-parallel/ { go_par = lo(go_par, metric("ns/pair")) }
  /^BenchmarkSend/ { send = hi(send, metric("req/s")) }
  /^BenchmarkNetHTTP\/raw/ { raw = hi(raw, metric("req/s")) }
  /^BenchmarkNetHTTP\/json/ { js = hi(js, metric("req/s")) }
  END {
    if (go_req == "" || send == "" || raw == "") { print "run.sh: benchmark figures missing" > "/dev/stderr"; exit 1 }
    printf "\nAdmit+Settle, one budget:        Go %.1f ns/pair, C loop %.1f ns/pair (binding + cgo: %.1f ns)\n", go_req, c_req, go_req - c_req
    printf "Admit+Settle, per-tenant budgets: Go %.1f ns/pair, C loop %.1f ns/pair (binding + cgo: %.1f ns)\n", go_ten, c_ten, go_ten - c_ten
    printf "Admit+Settle, one budget, parallel (%s): %.1f ns/pair (aggregate)\n", "RunParallel", go_par
    printf "Send vs net/http (16 goroutines, same test upstream): tollgate %.0f req/s, net/http %.0f req/s (%.0f with JSON decode)\n", send, raw, js
    printf "ratio tollgate / net/http: %.2f (raw), %.2f (JSON decode)\n", send / raw, send / js
  }' "$out/bench.log"
echo
echo "run.sh: ok"
