//! The C ABI of tollgate: the only place with `extern "C"` and raw pointers. The crate
//! `tollgate-capi` (`artifact/`) builds `libtollgate.a` and `libtollgate.so` from it.
//!
//! The header `include/tollgate.h` is generated from this crate by cbindgen (see `build.rs`);
//! the conventions every function follows are at the top of that header. In short: functions
//! that can fail return a `tg_status` and, on failure, hand out an owned `tg_error`; outputs
//! are written only on success; buffers are pointer + length; every owned result has a
//! `tg_*_free` that accepts NULL; no panic crosses the boundary.
//!
//! Rust programs should use the Rust API (`Engine`); these functions exist for C, C++
//! and Go hosts (and for the benchmark that compares both).
//!
//! - `engine`: create, reload, free, metrics, version.
//! - `decide`: admit / settle with plain structs, permits, retry attempts.
//! - `cache`: cache lookup and store for hosts with their own HTTP client.
//! - `call`: blocking and asynchronous sends, streams, cancellation.
//! - `error`: the status enum and the error handle.
//! - `tokens`: token counts and long texts split by exact tokens, with the engine's model table.
#![allow(non_camel_case_types)]
#![warn(missing_docs)]

pub mod cache;
pub mod call;
pub mod decide;
pub mod engine;
pub mod error;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tokens;

use std::ffi::c_char;

pub use cache::*;
pub use call::*;
pub use decide::*;
pub use engine::*;
pub use error::*;
#[cfg(feature = "testkit")]
pub use testkit::*;
pub use tokens::*;

/// A string or byte buffer: pointer + length, not NUL-terminated.
///
/// As an argument it is borrowed for the duration of the call; `ptr` may be NULL only when
/// `len` is 0 (the empty string). As a result its lifetime is documented where it is returned.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tg_str {
    /// First byte (UTF-8 for text).
    pub ptr: *const c_char,
    /// Number of bytes.
    pub len: usize,
}

impl tg_str {
    /// The empty string (NULL, 0).
    pub(crate) const EMPTY: tg_str = tg_str {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// A view of `s`, valid while `s` is; NULL for the empty string (never Rust's dangling
    /// non-NULL pointer, which a garbage collector scanning the host's stack may reject).
    pub(crate) fn of(s: &str) -> tg_str {
        tg_str::of_bytes(s.as_bytes())
    }

    /// A view of `b`, valid while `b` is; NULL when empty.
    pub(crate) fn of_bytes(b: &[u8]) -> tg_str {
        if b.is_empty() {
            return tg_str::EMPTY;
        }
        tg_str {
            ptr: b.as_ptr().cast(),
            len: b.len(),
        }
    }

    /// The bytes of a borrowed argument.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`, or be NULL.
    #[inline]
    pub(crate) unsafe fn bytes<'a>(self, what: &str) -> Result<&'a [u8], Box<tg_error>> {
        // SAFETY: forwarded to the caller.
        unsafe { bytes_arg(self.ptr.cast(), self.len, what) }
    }

    /// The UTF-8 text of a borrowed argument.
    ///
    /// # Safety
    /// As `bytes`.
    #[inline(always)]
    pub(crate) unsafe fn text<'a>(self, what: &str) -> Result<&'a str, Box<tg_error>> {
        // The common case inline (a short ASCII name); NULL, huge lengths and non-ASCII text go
        // through the general checks out of line.
        if self.len == 0 {
            return Ok("");
        }
        if !self.ptr.is_null() && self.len <= isize::MAX as usize {
            // SAFETY: non-NULL, length in range; validity is the caller's promise.
            let bytes = unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) };
            if bytes.is_ascii() {
                // SAFETY: ASCII is UTF-8.
                return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
            }
        }
        // SAFETY: forwarded to the caller.
        unsafe { self.text_slow(what) }
    }

    /// `text` for everything but non-NULL ASCII.
    ///
    /// # Safety
    /// As `bytes`.
    #[cold]
    #[inline(never)]
    unsafe fn text_slow<'a>(self, what: &str) -> Result<&'a str, Box<tg_error>> {
        // SAFETY: forwarded to the caller.
        let bytes = unsafe { self.bytes(what)? };
        utf8(bytes, what)
    }
}

/// Bytes owned by the caller: read `data[0..len]`, then free with `tg_bytes_free`.
#[repr(C)]
#[derive(Debug)]
pub struct tg_bytes {
    /// First byte.
    pub data: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl tg_bytes {
    /// Hands `bytes` to the caller.
    pub(crate) fn give(bytes: Vec<u8>) -> *mut tg_bytes {
        let boxed: Box<[u8]> = bytes.into_boxed_slice();
        let len = boxed.len();
        let data = Box::into_raw(boxed).cast::<u8>().cast_const();
        Box::into_raw(Box::new(tg_bytes { data, len }))
    }
}

/// Frees bytes returned by tollgate. NULL does nothing.
///
/// # Safety
/// `bytes` must be NULL or a pointer returned by tollgate and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tg_bytes_free(bytes: *mut tg_bytes) {
    error::quietly(|| {
        if bytes.is_null() {
            return;
        }
        // SAFETY: the caller passes a pointer from `tg_bytes::give`, freed once.
        let b = unsafe { Box::from_raw(bytes) };
        let slice = std::ptr::slice_from_raw_parts_mut(b.data.cast_mut(), b.len);
        // SAFETY: `data`/`len` are the boxed slice `give` leaked.
        drop(unsafe { Box::from_raw(slice) });
    })
}

/// Reads `len` bytes at `ptr`; NULL is allowed only for an empty buffer.
///
/// # Safety
/// `ptr` must point to `len` readable bytes that outlive `'a`, or be NULL.
#[inline]
pub(crate) unsafe fn bytes_arg<'a>(
    ptr: *const u8,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Box<tg_error>> {
    if ptr.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(tg_error::null(what));
    }
    if len > isize::MAX as usize {
        return Err(tg_error::new(
            tg_status::InvalidArgument,
            format!("{what}: length {len} is not a valid buffer length"),
        ));
    }
    // SAFETY: non-NULL, length checked against isize::MAX, validity is the caller's promise.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Reads a UTF-8 string argument given as pointer + length.
///
/// # Safety
/// As `bytes_arg`.
pub(crate) unsafe fn text_arg<'a>(
    ptr: *const c_char,
    len: usize,
    what: &str,
) -> Result<&'a str, Box<tg_error>> {
    // SAFETY: forwarded to the caller.
    let bytes = unsafe { bytes_arg(ptr.cast(), len, what)? };
    utf8(bytes, what)
}

/// Checks that `bytes` are UTF-8.
#[inline]
pub(crate) fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, Box<tg_error>> {
    // Mostly short ASCII: the inlined check is cheaper than a call to the general validator
    // (measured in benches/ffi.rs).
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|e| {
        tg_error::new(
            tg_status::InvalidUtf8,
            format!(
                "{what} is not UTF-8: invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })
}

/// Parses a JSON argument (UTF-8 checked first, so the two errors are told apart).
pub(crate) fn json_arg(bytes: &[u8], what: &str) -> Result<serde_json::Value, Box<tg_error>> {
    let text = utf8(bytes, what)?;
    serde_json::from_str(text).map_err(|e| {
        tg_error::new(
            tg_status::InvalidJson,
            format!("{what} is not valid JSON: {e}"),
        )
    })
}

/// A reference argument that must not be NULL.
///
/// # Safety
/// `ptr` must be NULL or point to a live `T` for `'a`.
pub(crate) unsafe fn arg<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Box<tg_error>> {
    // SAFETY: forwarded to the caller.
    unsafe { ptr.as_ref() }.ok_or_else(|| tg_error::null(what))
}

/// An output pointer that must not be NULL.
pub(crate) fn out<T>(ptr: *mut T, what: &str) -> Result<*mut T, Box<tg_error>> {
    if ptr.is_null() {
        Err(tg_error::null(what))
    } else {
        Ok(ptr)
    }
}

/// Writes `value` to an optional output: true when there was a value and somewhere to put it
/// (the accessors' "writes it and returns true; false otherwise or for NULL").
pub(crate) fn put_some<T>(value: Option<T>, ptr: *mut T) -> bool {
    match value {
        Some(v) if !ptr.is_null() => {
            // SAFETY: non-NULL; every accessor documents that a non-NULL output is writable.
            unsafe { put(ptr, v) };
            true
        }
        _ => false,
    }
}

/// Nanoseconds in `d`, saturating.
pub(crate) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Writes an output checked by `out`.
///
/// # Safety
/// `ptr` must be valid for a write of `T`.
pub(crate) unsafe fn put<T>(ptr: *mut T, value: T) {
    // SAFETY: forwarded to the caller; `write` does not drop the old (uninitialised) value.
    unsafe { ptr.write(value) }
}

/// The C header of this version, as the build generated it from this crate (`include/tollgate.h`
/// is a committed copy, checked by a test).
pub const HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/tollgate.h"));

/// The header of the test hooks (feature `testkit`), as generated (`include/tollgate_testkit.h`).
pub const TESTKIT_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/tollgate_testkit.h"));

#[cfg(test)]
mod headers {
    /// The committed headers are what the build generates. `TOLLGATE_BLESS=1 cargo test -p
    /// tollgate-capi-impl headers` rewrites them.
    #[test]
    fn headers_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
        let bless = std::env::var_os("TOLLGATE_BLESS").is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for (name, generated) in [
            ("tollgate.h", super::HEADER),
            ("tollgate_testkit.h", super::TESTKIT_HEADER),
        ] {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(generated) {
                continue;
            }
            if bless {
                std::fs::write(&path, generated).expect("include/ is writable");
            } else {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "{} differ from what the build generates from crates/tollgate-capi/src: run \
             `TOLLGATE_BLESS=1 cargo test -p tollgate-capi-impl headers` and commit them",
            stale.join(", ")
        );
    }
}
