#!/usr/bin/env bash
# Turns the static library cargo builds into the one tollgate ships:
#
#   bash crates/tollgate-capi/dist/prelink.sh IN.a OUT.a
#
# cargo's libtollgate.a is an archive of every object of every crate (the Rust standard library
# included), each with its global symbols. This links them once into a single relocatable object
# (ld -r) keeping only what the tg_* functions reach (--gc-sections: unused code and data go,
# among them a third BPE vocabulary a dependency embeds and tollgate never uses), makes every
# symbol but the tg_* functions local (so the library cannot clash with another Rust static
# library or with the host's own symbols), drops LLVM bitcode and debug info (the local symbols
# stay, so a debugger or valgrind still names tollgate's functions), and archives that object
# as OUT.a. A C program links it exactly as before. Needs GNU binutils (ld, objcopy,
# strip, ar, nm).
set -euo pipefail

die() {
  echo "prelink.sh: $*" >&2
  exit 2
}
[[ $# -eq 2 ]] || die "usage: prelink.sh IN.a OUT.a"
in="$1"
out="$2"
[[ -f "$in" ]] || die "no static library at $in"
for tool in ld objcopy strip ar nm; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (GNU binutils)"
done
tmp="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-prelink.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# The C ABI: every function the archive defines whose name starts with tg_.
nm -g --defined-only "$in" 2>/dev/null | awk '$2 == "T" && $3 ~ /^tg_/ { print $3 }' | sort -u >"$tmp/api"
[[ -s "$tmp/api" ]] || die "$in defines no tg_* function"
roots=()
while read -r sym; do roots+=(-u "$sym"); done <"$tmp/api"

ld -r --gc-sections "${roots[@]}" --whole-archive "$in" -o "$tmp/all.o"
objcopy --remove-section=.llvmbc --remove-section=.llvmcmd --keep-global-symbols="$tmp/api" \
  "$tmp/all.o" "$tmp/local.o"
strip --strip-debug "$tmp/local.o" -o "$tmp/libtollgate.o"

# The result defines the C ABI and nothing else.
nm -g --defined-only "$tmp/libtollgate.o" | awk '{ print $3 }' | sort -u >"$tmp/defined"
if ! cmp -s "$tmp/api" "$tmp/defined"; then
  diff "$tmp/api" "$tmp/defined" >&2 || true
  die "the linked object's global symbols are not exactly the tg_* functions"
fi
rm -f "$tmp/out.a"
ar rcsD "$tmp/out.a" "$tmp/libtollgate.o"
mv -f "$tmp/out.a" "$out"
echo "prelink.sh: $out: $(wc -l <"$tmp/api") tg_* functions, $(($(stat -c %s "$out") / 1000000)) MB (from $(($(stat -c %s "$in") / 1000000)) MB)"
