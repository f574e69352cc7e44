//! `libtollgate.a` and `libtollgate.so`: the C ABI of tollgate for C, C++ and Go hosts.
//!
//! Every function is defined in `tollgate-capi-impl` (`crates/tollgate-capi`) and declared in
//! `include/tollgate.h`; this crate only turns them into the static and shared libraries.

pub use tollgate_capi::*;
