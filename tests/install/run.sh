#!/usr/bin/env bash
# Install tests: each audience's artifact, taken only from OUT (what scripts/package.sh wrote),
# used the way that ecosystem installs things, in a fresh temporary directory outside the
# repository:
#
#   bash tests/install/run.sh OUT
#
#   c      the C prefix unpacked; a C and a C++17 program found through
#          find_package(tollgate CONFIG REQUIRED) (CMake, CMAKE_PREFIX_PATH), the same C program
#          built with `cc $(pkg-config --cflags --static --libs tollgate)` (the shared library)
#          and with tollgate-static
#   go     a module outside the repository that requires tollgate.dev/go/tollgate from
#          OUT/goproxy (GOPROXY=file://...) and links the prefix through pkg-config
#   node   `npm install OUT/tollgate-<version>.tgz` into an empty project, a script that
#          requires it and sends, and `tsc --noEmit` over a file that uses its types
#   python a fresh venv outside the repository, `pip install --no-index OUT/tollgate-*.whl`,
#          a script that imports it, admits + settles and sends (sync and asyncio)
#   rust   a throwaway crate depending on the unpacked OUT/tollgate-<version>.crate (path
#          dependency), built cold in its own target directory, making a decide call
#
# The C, Go and Node steps run with a PATH that has no cargo or rustc, from a directory outside
# the repository, and check that what they built refers to nothing inside it. Each step sends
# through `OUT/tollgate upstream` (the test upstream as a process of its own, on 127.0.0.1).
# Every failure is loud: a missing tool or a failed step exits non-zero; nothing is skipped.
set -euo pipefail

die() {
  echo "install test: FAILED: $*" >&2
  exit 1
}
[[ $# -ge 1 ]] || die "usage: bash tests/install/run.sh OUT [c|go|node|rust ...]"
out="$(cd "$1" && pwd)" || die "no folder $1"
shift
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(c go node python rust)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

crate="$(ls "$out"/tollgate-*.crate 2>/dev/null | head -1)"
[[ -n "$crate" ]] || die "no tollgate-<version>.crate in $out"
version="$(basename "$crate" .crate)"
version="${version#tollgate-}"
capi="$(ls "$out"/tollgate-capi-"$version"-*.tar.gz 2>/dev/null | head -1)"
[[ -n "$capi" ]] || die "no tollgate-capi-$version-<target>.tar.gz in $out"
npm_tgz="$out/tollgate-$version.tgz"
[[ -f "$npm_tgz" ]] || die "no $npm_tgz"
[[ -x "$out/tollgate" ]] || die "no tollgate CLI in $out"
[[ -d "$out/goproxy" ]] || die "no goproxy/ in $out"
wheel="$(ls "$out"/tollgate-"$version"-*.whl 2>/dev/null | head -1)"
[[ -n "$wheel" ]] || die "no tollgate-$version-*.whl in $out"

# Every tool the chosen steps need, up front: a missing one fails the run, naming it.
declare -A need=([c]="cc c++ cmake make pkg-config ldd" [go]="go cc pkg-config ldd"
  [node]="node npm npx" [python]="python3" [rust]="cargo")
for s in "${steps[@]}"; do
  [[ -n "${need[$s]:-}" ]] || die "unknown step $s (steps: c go node python rust)"
  for tool in ${need[$s]}; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: the $s install test needs it"
  done
done
for tool in tar grep sed mkfifo; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done

# A PATH with those tools but without cargo / rustc (and nothing from the repository).
clean_path=""
for tool in cc c++ cmake make pkg-config go node npm npx tar grep sed awk ldd nm sleep kill; do
  p="$(command -v "$tool" 2>/dev/null)" || continue
  d="$(dirname "$p")"
  case ":$clean_path:" in *":$d:"*) ;; *) clean_path="${clean_path:+$clean_path:}$d" ;; esac
done
for d in ${clean_path//:/ }; do
  if [[ -x "$d/cargo" || -x "$d/rustc" ]]; then
    die "$d holds both a tool the tests need and cargo/rustc; cannot take cargo off the PATH"
  fi
  case "$d" in "$repo"*) die "$d is inside the repository" ;; esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-install.XXXXXX")"
case "$work" in "$repo"*) die "the temporary directory $work is inside the repository" ;; esac
upstream_pid=""
cleanup() {
  [[ -z "$upstream_pid" ]] || kill "$upstream_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Runs a command in a clean environment: no cargo, no CARGO_* or RUST* variables, no
# repository paths; HOME and caches inside the test's directory.
isolated() {
  env -i PATH="$clean_path" HOME="$work/home" TMPDIR="$work/tmp" LANG=C.UTF-8 \
    GOTOOLCHAIN=local GOFLAGS=-mod=mod GOCACHE="$work/home/go-build" GOPATH="$work/home/go" \
    npm_config_cache="$work/home/npm-cache" npm_config_update_notifier=false \
    npm_config_fund=false npm_config_audit=false "$@"
}
mkdir -p "$work/home" "$work/tmp"
isolated sh -c 'command -v cargo || command -v rustc' >/dev/null && die "cargo is reachable in the isolated PATH"

# Nothing the install produced may point into the repository or its target directory.
no_repo_paths() {
  if [ -n "$(grep -rIl -- "$repo" "$@" 2>/dev/null)" ]; then
    grep -rIl -- "$repo" "$@" >&2
    die "these files name the repository ($repo)"
  fi
}

step() { printf '\n== install test: %s\n' "$*"; }

step "the test upstream (OUT/tollgate upstream)"
mkfifo "$work/upstream.out"
"$out/tollgate" upstream --words 4 >"$work/upstream.out" 2>"$work/upstream.err" &
upstream_pid=$!
read -r -t 30 line <"$work/upstream.out" || die "tollgate upstream did not start: $(cat "$work/upstream.err")"
base="${line#listening on }"
[[ "$base" == http://127.0.0.1:*/v1 ]] || die "tollgate upstream said: $line"
echo "$base"

run_c() {
  step "C and C++: the prefix, CMake find_package, pkg-config"
  local prefix="$work/prefix"
  mkdir -p "$prefix"
  tar -xzf "$capi" -C "$prefix" --strip-components=1
  no_repo_paths "$prefix"
  ls -l "$prefix/include" "$prefix/lib"
  mkdir -p "$work/c-src"
  cp "$here/c/CMakeLists.txt" "$here/c/main.c" "$here/c/main.cpp" "$work/c-src/"
  isolated cmake -S "$work/c-src" -B "$work/c-build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_BUILD_TYPE=Release >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; die "cmake configure"; }
  grep "tollgate .* from" "$work/cmake.log"
  isolated cmake --build "$work/c-build" -j2 >>"$work/cmake.log" 2>&1 || { cat "$work/cmake.log"; die "cmake build"; }
  ldd "$work/c-build/app_c" | grep libtollgate >/dev/null && die "app_c (tollgate::tollgate) links libtollgate dynamically"
  ldd "$work/c-build/app_c_shared" | grep "libtollgate.so" >/dev/null || die "app_c_shared does not link libtollgate.so"
  isolated "$work/c-build/app_c" "$base" || die "the C program (CMake, static)"
  isolated "$work/c-build/app_cpp" "$base" || die "the C++ program (CMake, tollgate::tollgate_cpp)"
  isolated LD_LIBRARY_PATH="$prefix/lib" "$work/c-build/app_c_shared" "$base" || die "the C program (CMake, shared)"

  local pc="$prefix/lib/pkgconfig"
  echo "pkg-config --cflags --static --libs tollgate: $(isolated PKG_CONFIG_PATH="$pc" pkg-config --cflags --static --libs tollgate)"
  # shellcheck disable=SC2046
  (cd "$work/c-src" && isolated PKG_CONFIG_PATH="$pc" sh -c \
    'cc -std=c11 -Wall -Wextra -Werror -o app_pc main.c $(pkg-config --cflags --static --libs tollgate)') ||
    die "cc with pkg-config --static tollgate"
  isolated LD_LIBRARY_PATH="$prefix/lib" "$work/c-src/app_pc" "$base" || die "the C program (pkg-config tollgate)"
  (cd "$work/c-src" && isolated PKG_CONFIG_PATH="$pc" sh -c \
    'cc -std=c11 -Wall -Wextra -Werror -o app_pc_static main.c $(pkg-config --cflags --libs tollgate-static)') ||
    die "cc with pkg-config tollgate-static"
  ldd "$work/c-src/app_pc_static" | grep libtollgate >/dev/null && die "app_pc_static links libtollgate dynamically"
  isolated "$work/c-src/app_pc_static" "$base" || die "the C program (pkg-config tollgate-static)"
}

run_go() {
  step "Go: a module outside the repository, the prefix through pkg-config"
  local prefix="$work/prefix"
  [[ -d "$prefix/lib" ]] || { mkdir -p "$prefix" && tar -xzf "$capi" -C "$prefix" --strip-components=1; }
  mkdir -p "$work/go-src"
  sed "s/@VERSION@/$version/" "$here/go/go.mod.in" >"$work/go-src/go.mod"
  cp "$here/go/main.go" "$work/go-src/"
  (cd "$work/go-src" && isolated GOPROXY="file://$out/goproxy" GONOSUMDB=tollgate.dev GOSUMDB=off \
    PKG_CONFIG_PATH="$prefix/lib/pkgconfig" CGO_ENABLED=1 go build -o app_go .) || die "go build"
  ldd "$work/go-src/app_go" | grep libtollgate >/dev/null && die "the Go program links libtollgate dynamically"
  no_repo_paths "$work/go-src" "$work/home/go/pkg/mod/tollgate.dev"
  isolated "$work/go-src/app_go" "$base" || die "the Go program"
}

run_node() {
  step "Node.js: npm install of the packed tarball, a script, tsc --noEmit"
  mkdir -p "$work/node-app"
  cp "$here/node/main.mjs" "$here/node/types.ts" "$here/node/tsconfig.json" "$work/node-app/"
  (cd "$work/node-app" && isolated npm init -y >/dev/null &&
    isolated npm install --no-save --loglevel=error "$npm_tgz" typescript@5) || die "npm install"
  ls -l "$work/node-app/node_modules/tollgate"
  no_repo_paths "$work/node-app/node_modules/tollgate"
  (cd "$work/node-app" && isolated node main.mjs "$base") || die "the Node script"
  (cd "$work/node-app" && isolated npx --no-install tsc --noEmit -p tsconfig.json) || die "tsc over the package's types"
  echo "tsc --noEmit: ok"
}

run_python() {
  step "Python: a fresh venv, pip install of the wheel from OUT, a script (sync and asyncio)"
  # The interpreter itself, not a version manager's shim (which needs the caller's HOME).
  local py
  py="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
  isolated "$py" -m venv "$work/py-venv" || die "python3 -m venv"
  # From a copy, as a user installs a downloaded wheel: pip records where the wheel came from
  # (dist-info/direct_url.json), and OUT may lie inside the repository (CI's does).
  mkdir -p "$work/downloads"
  cp "$wheel" "$work/downloads/"
  isolated "$work/py-venv/bin/pip" install --quiet --no-index --disable-pip-version-check \
    "$work/downloads/$(basename "$wheel")" || die "pip install $(basename "$wheel")"
  no_repo_paths "$work/py-venv/lib"
  cp "$here/python/main.py" "$work/main.py"
  (cd "$work" && isolated "$work/py-venv/bin/python" main.py "$base") || die "the Python script"
}

run_rust() {
  step "Rust: a throwaway crate depending on the packaged crate"
  command -v cargo >/dev/null || die "cargo is missing (the Rust step needs it)"
  mkdir -p "$work/rust-dep" "$work/rust-app/src"
  tar -xzf "$crate" -C "$work/rust-dep"
  local dep="$work/rust-dep/tollgate-$version"
  cat >"$work/rust-app/Cargo.toml" <<TOML
[package]
name = "tollgate-install-test"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tollgate = { path = "$dep" }

[workspace]
TOML
  cp "$here/rust/main.rs" "$work/rust-app/src/main.rs"
  # The packaged crate's lock file: the dependency versions it was tested with.
  [[ -f "$dep/Cargo.lock" ]] && cp "$dep/Cargo.lock" "$work/rust-app/Cargo.lock"
  local start=$SECONDS
  (cd "$work/rust-app" && env -u CARGO_TARGET_DIR -u RUSTFLAGS CARGO_TARGET_DIR="$work/rust-target" \
    cargo build --quiet) || die "cargo build of a crate depending on tollgate $version"
  echo "cold build of tollgate $version as the dependency of an empty crate (debug, $(nproc) cores): $((SECONDS - start)) s"
  (cd "$work/rust-app" && CARGO_TARGET_DIR="$work/rust-target" cargo run --quiet) || die "the Rust program"
}

for s in "${steps[@]}"; do
  case "$s" in
    c) run_c ;;
    go) run_go ;;
    node) run_node ;;
    python) run_python ;;
    rust) run_rust ;;
    *) die "unknown step $s" ;;
  esac
done

kill "$upstream_pid" 2>/dev/null || true
wait "$upstream_pid" 2>/dev/null || true
upstream_pid=""
echo
echo "install tests: ${steps[*]}: ok"
