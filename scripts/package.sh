#!/usr/bin/env bash
# Builds every artifact of tollgate into one folder:
#
#   bash scripts/package.sh OUT
#
#   OUT/tollgate-<version>.crate                         the core Rust crate (cargo package)
#   OUT/tollgate-capi-<version>-<target>.tar.gz          the C / C++ prefix: include/, lib/ (static
#                                                        and shared library, pkg-config, CMake)
#   OUT/tollgate-<version>.tgz                           the Node.js package (npm pack) with the
#                                                        prebuilt addon for this platform
#   OUT/goproxy/tollgate.dev/go/tollgate/@v/...          the Go module, as a module proxy serves it
#                                                        (GOPROXY=file://OUT/goproxy)
#   OUT/tollgate-<version>-cp39-abi3-<platform>.whl      the Python package (maturin, one abi3
#                                                        wheel for CPython 3.9 and later)
#   OUT/tollgate                                         the CLI
#   OUT/SHA256SUMS
#
# One `cargo build --release` builds the libraries, the addon and the CLI together (one build of
# the core crate); CARGO_TARGET_DIR is honoured. Needs cargo, rustc, node, npm, cmake, python3,
# GNU binutils, tar and sha256sum; stops with a message naming what is missing.
set -euo pipefail

die() {
  echo "package.sh: $*" >&2
  exit 2
}

[[ $# -eq 1 && -n "$1" ]] || die "usage: bash scripts/package.sh OUT   (the folder to write the artifacts to)"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: it is needed $2"
}
need cargo "to build the libraries, the addon and the CLI (install Rust: https://rustup.rs)"
need rustc "to ask which system libraries a static link needs"
need node "to pack the Node.js package (install Node.js 20 or later)"
need npm "to pack the Node.js package (npm pack)"
need cmake "to write the CMake package files of the C prefix"
need python3 "to write the Go module zip"
for tool in ld objcopy strip ar nm; do
  need "$tool" "to link the static library into one object (GNU binutils)"
done
need tar "to pack the C prefix"
need sha256sum "to write SHA256SUMS (coreutils)"

out="$1"
mkdir -p -- "$out" 2>/dev/null || die "cannot create the output folder $out"
out="$(cd -- "$out" && pwd)"
probe="$out/.package-write-test.$$"
if ! (: >"$probe") 2>/dev/null; then
  die "cannot write to the output folder $out"
fi
rm -f -- "$probe"

cd "$root"
export CARGO_TERM_COLOR=never
target_dir="${CARGO_TARGET_DIR:-$root/target}"
version="$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "tollgate"))')"
triple="$(rustc -vV | sed -n 's/^host: //p')"
major="${version%%.*}"
minor="${version#*.}"; minor="${minor%%.*}"
if [[ "$major" == 0 ]]; then soname="libtollgate.so.0.$minor"; else soname="libtollgate.so.$major"; fi
work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT

step() { printf '\n== package: %s\n' "$*"; }

step "build (release: libtollgate.a/.so, the Node addon, the CLI) for $triple"
cargo build --release -p tollgate-capi -p tollgate-cli -p tollgate-node \
  --message-format=json-render-diagnostics >"$work/build.json"
# The header the build generated, and the system libraries build scripts asked to link.
python3 - "$work/build.json" >"$work/build.env" <<'PY'
import json, sys
header = None
libs = []
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    if m.get("reason") != "build-script-executed":
        continue
    if "#tollgate-capi-impl@" in m["package_id"]:
        header = m["out_dir"] + "/tollgate.h"
    for lib in m.get("linked_libs", []):
        kind, _, name = lib.rpartition("=")
        if kind not in ("static", "static:+bundle", "static:-bundle") and name not in libs:
            libs.append(name)
if header is None:
    sys.exit("package.sh: the build did not report tollgate-capi-impl's build script (no header)")
print(f"header={header}")
print("build_libs=" + " ".join(libs))
PY
# shellcheck disable=SC1090
source "$work/build.env"
[[ -f "$header" ]] || die "the generated header $header is missing"
for f in libtollgate.a libtollgate.so tollgate; do
  [[ -f "$target_dir/release/$f" ]] || die "the build left no $target_dir/release/$f"
done
if nm -g --defined-only "$target_dir/release/libtollgate.so" 2>/dev/null | grep ' tg_test_' >/dev/null; then
  die "libtollgate.so has the test hooks (tg_test_*): build without --features testkit"
fi

# What the Rust standard library needs from the system when linked statically, then what the
# dependencies' build scripts asked for (none today).
echo 'pub fn f() {}' >"$work/empty.rs"
std_libs="$(rustc --crate-type staticlib --print native-static-libs -o "$work/libempty.a" "$work/empty.rs" 2>&1 |
  sed -n 's/.*native-static-libs: //p')"
[[ -n "$std_libs" ]] || die "rustc printed no native-static-libs"
native_libs="$std_libs"
for l in $build_libs; do native_libs="$native_libs -l$l"; done
echo "system libraries for a static link: $native_libs"

step "C / C++ prefix"
name="tollgate-capi-$version-$triple"
prefix="$work/$name"
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig" "$prefix/share/doc/tollgate"
cp "$header" "$prefix/include/tollgate.h"
cp bindings/cpp/tollgate.hpp "$prefix/include/tollgate.hpp"
# One object with only the tg_* functions global and only what they reach (see prelink.sh).
bash crates/tollgate-capi/dist/prelink.sh "$target_dir/release/libtollgate.a" "$prefix/lib/libtollgate.a"
cp "$target_dir/release/libtollgate.so" "$prefix/lib/libtollgate.so.$version"
ln -s "libtollgate.so.$version" "$prefix/lib/$soname"
ln -s "$soname" "$prefix/lib/libtollgate.so"
url="$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["repository"] or "" for p in json.load(sys.stdin)["packages"] if p["name"] == "tollgate"))')"
for pc in tollgate tollgate-static; do
  sed -e "s|@VERSION@|$version|" -e "s|@URL@|$url|" -e "s|@NATIVE_LIBS@|$native_libs|" \
    "crates/tollgate-capi/dist/$pc.pc.in" >"$prefix/lib/pkgconfig/$pc.pc"
done
cmake_libs="$(for l in $native_libs; do printf '%s;' "${l#-l}"; done)"
cmake -DPREFIX="$prefix" -DVERSION="$version" -DNATIVE_LIBS="${cmake_libs%;}" \
  -DSHARED_FILE="libtollgate.so.$version" -DSONAME="$soname" -DCMAKE_SIZEOF_VOID_P=8 \
  -P crates/tollgate-capi/dist/configure.cmake
cp crates/tollgate-capi/dist/README.md LICENSE "$prefix/share/doc/tollgate/"
if grep -rq -- "$root\|$work" "$prefix/lib/pkgconfig" "$prefix/lib/cmake"; then
  die "the prefix's pkg-config or CMake files name a path of this machine"
fi
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$work" -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"

step "Node.js package"
node_os="$(node -p process.platform)"
node_cpu="$(node -p process.arch)"
node_triple="$(node -p "require('./bindings/node/platform.js').platformTriple()")"
stage="$work/node"
mkdir -p "$stage"
cp bindings/node/{index.js,index.d.ts,chatgpt.js,native.js,platform.js,README.md} LICENSE "$stage/"
cp "$target_dir/release/libtollgate_node.so" "$stage/tollgate.$node_triple.node"
python3 - bindings/node/package.json "$stage/package.json" "$node_os" "$node_cpu" "$triple" <<'PY'
import json, sys
src, dst, os_, cpu, triple = sys.argv[1:]
p = json.load(open(src))
p["os"] = [os_]
p["cpu"] = [cpu]
p.setdefault("napi", {})["targets"] = [triple]
# Build and test scripts refer to files the package does not carry.
p.pop("scripts", None)
json.dump(p, open(dst, "w"), indent=2)
open(dst, "a").write("\n")
PY
(cd "$stage" && npm pack --silent --pack-destination "$out" >/dev/null)
[[ -f "$out/tollgate-$version.tgz" ]] || die "npm pack wrote no tollgate-$version.tgz"
echo "$out/tollgate-$version.tgz"

step "Rust crate"
cargo package -p tollgate --no-verify --allow-dirty --quiet
cp "$target_dir/package/tollgate-$version.crate" "$out/"
echo "$out/tollgate-$version.crate"

step "Go module (module proxy layout)"
python3 - bindings/go "$out/goproxy" "$version" LICENSE <<'PY'
import json, os, sys, time, zipfile
src, proxy, version, license_file = sys.argv[1:]
module = None
for line in open(os.path.join(src, "go.mod")):
    if line.startswith("module "):
        module = line.split()[1]
if module is None:
    sys.exit("package.sh: bindings/go/go.mod names no module")
v = "v" + version
at = os.path.join(proxy, *module.split("/"), "@v")
os.makedirs(at, exist_ok=True)
files = sorted(f for f in os.listdir(src)
               if os.path.isfile(os.path.join(src, f)) and f.endswith((".go", ".c", ".h", ".mod", ".md")))
with zipfile.ZipFile(os.path.join(at, v + ".zip"), "w", zipfile.ZIP_DEFLATED) as z:
    for f in files:
        z.write(os.path.join(src, f), f"{module}@{v}/{f}")
    z.write(license_file, f"{module}@{v}/LICENSE")
with open(os.path.join(src, "go.mod")) as f, open(os.path.join(at, v + ".mod"), "w") as g:
    g.write(f.read())
with open(os.path.join(at, v + ".info"), "w") as f:
    json.dump({"Version": v, "Time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
with open(os.path.join(at, "list"), "w") as f:
    f.write(v + "\n")
print(os.path.join(at, v + ".zip"))
PY

step "Python wheel (maturin build --release: PyO3, abi3)"
# maturin from PATH, else MATURIN, else a pinned one in a venv of the target dir (PyPI).
maturin="${MATURIN:-$(command -v maturin || true)}"
if [[ -z "$maturin" ]]; then
  [[ -x "$target_dir/maturin-venv/bin/maturin" ]] || {
    python3 -m venv "$target_dir/maturin-venv" &&
      "$target_dir/maturin-venv/bin/pip" install --quiet --disable-pip-version-check "maturin==1.16.0"
  } || die "cannot install maturin into $target_dir/maturin-venv (pip install maturin needs PyPI)"
  maturin="$target_dir/maturin-venv/bin/maturin"
fi
(cd bindings/python && "$maturin" build --release --quiet -o "$work/wheel") || die "maturin build of the Python wheel"
wheel="$(ls "$work"/wheel/tollgate-"$version"-*.whl 2>/dev/null | head -1)"
[[ -n "$wheel" ]] || die "maturin wrote no tollgate-$version-*.whl"
cp "$wheel" "$out/"
echo "$out/$(basename "$wheel")"

step "CLI"
cp "$target_dir/release/tollgate" "$out/tollgate"
echo "$out/tollgate"

(cd "$out" && find . -type f ! -name SHA256SUMS | sed 's|^\./||' | sort | xargs sha256sum >SHA256SUMS)

step "sizes"
size() { printf '  %-58s %8.1f MB\n' "$1" "$(($(stat -c %s "$2") / 1000))e-3"; }
size "lib/libtollgate.a" "$prefix/lib/libtollgate.a"
size "lib/libtollgate.so" "$prefix/lib/libtollgate.so.$version"
size "tollgate.$node_triple.node (Node addon)" "$stage/tollgate.$node_triple.node"
size "tollgate (CLI)" "$out/tollgate"
size "$name.tar.gz" "$out/$name.tar.gz"
size "tollgate-$version.tgz" "$out/tollgate-$version.tgz"
size "tollgate-$version.crate" "$out/tollgate-$version.crate"
size "$(basename "$wheel")" "$out/$(basename "$wheel")"
echo
echo "package.sh: every artifact is in $out"
