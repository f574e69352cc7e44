#!/usr/bin/env bash
# scripts/package.sh refuses bad input before building anything, naming what is wrong:
#   an output folder it cannot create or cannot write to, and each tool it needs when missing.
#   bash tests/install/package_errors.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
package="$here/../../scripts/package.sh"
work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-package-errors.XXXXXX")"
trap 'rm -rf "$work"' EXIT
failures=0

# expect NAME WANT_TEXT CMD...: CMD exits 2 and its stderr contains WANT_TEXT.
expect() {
  local name="$1" want="$2"
  shift 2
  local status=0
  "$@" >"$work/out" 2>"$work/err" || status=$?
  if [[ $status -eq 2 ]] && grep -qF -- "$want" "$work/err"; then
    echo "ok   $name: $(head -1 "$work/err")"
  else
    echo "FAIL $name: exit $status, stderr: $(cat "$work/err")" >&2
    failures=$((failures + 1))
  fi
}

expect "no argument" "usage: bash scripts/package.sh OUT" bash "$package"
: >"$work/a-file"
expect "OUT is a file" "cannot create the output folder" bash "$package" "$work/a-file/out"
expect "OUT under /proc" "cannot create the output folder" bash "$package" /proc/tollgate-out
# /proc/self/ exists but takes no new files, even for root.
expect "OUT not writable" "cannot write to the output folder" bash "$package" /proc/self

# A PATH with every tool package.sh uses but one.
tools=(cargo rustc node npm cmake python3 ld objcopy strip ar nm tar sha256sum
  bash env dirname mkdir rm cat sed grep awk sort xargs find cp ln stat mktemp basename head)
for missing in cmake npm node cargo objcopy; do
  bin="$work/bin-without-$missing"
  mkdir -p "$bin"
  for t in "${tools[@]}"; do
    [[ "$t" == "$missing" ]] && continue
    p="$(command -v "$t" 2>/dev/null)" || continue
    ln -sf "$p" "$bin/$t"
  done
  expect "without $missing" "$missing is missing" env PATH="$bin" bash "$package" "$work/out"
done

if [[ $failures -ne 0 ]]; then
  echo "package.sh bad input: $failures FAILED" >&2
  exit 1
fi
echo "package.sh bad input: all refused with a message"
