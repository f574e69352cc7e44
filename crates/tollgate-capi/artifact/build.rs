//! Gives `libtollgate.so` its SONAME on Linux: `libtollgate.so.<major>.<minor>` while the major
//! version is 0 (every 0.x minor release may change the ABI), `libtollgate.so.<major>` from 1.0.
//! `scripts/package.sh` installs the file under that name with the usual symlinks.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("set by cargo");
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").expect("set by cargo");
    let soname = if major == "0" {
        format!("libtollgate.so.0.{minor}")
    } else {
        format!("libtollgate.so.{major}")
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
}
