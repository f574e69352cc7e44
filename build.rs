//! Generates the C header `include/tollgate.h` from `src/ffi` with cbindgen.
//!
//! The header is committed. The build rewrites it only when its content changes, so a build of
//! an unchanged tree leaves the file alone and CI can check it with `git diff --exit-code`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=build.rs");

    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml is readable");
    let version =
        |part: &str| std::env::var(format!("CARGO_PKG_VERSION_{part}")).expect("set by cargo");
    config.after_includes = Some(format!(
        "\n/* The version of tollgate this header belongs to; tg_version() gives the library's. */\n\
         #define TOLLGATE_VERSION_MAJOR {}\n\
         #define TOLLGATE_VERSION_MINOR {}\n\
         #define TOLLGATE_VERSION_PATCH {}\n\
         #define TOLLGATE_VERSION \"{}\"",
        version("MAJOR"),
        version("MINOR"),
        version("PATCH"),
        std::env::var("CARGO_PKG_VERSION").expect("set by cargo"),
    ));

    let header = match cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/ffi/mod.rs"))
        .generate()
    {
        Ok(bindings) => {
            let mut out = Vec::new();
            bindings.write(&mut out);
            out
        }
        Err(e) => panic!("cbindgen could not read src/ffi: {e}"),
    };
    let path = dir.join("include/tollgate.h");
    if std::fs::read(&path).ok().as_deref() != Some(&header[..]) {
        std::fs::create_dir_all(dir.join("include")).expect("include/ can be created");
        std::fs::write(&path, &header).expect("include/tollgate.h can be written");
    }
}
