//! Byte-string equality for hot paths, empty strings included.
//!
//! `a == b` on two empty `str`s (or slices) still calls `memcmp` with a length of zero, and an
//! empty `Box<str>` or `""` points at a dangling address (`0x1`). glibc's AVX-512 `memcmp` reads
//! short inputs with a masked load; a masked load whose (empty) mask touches an unmapped page is
//! fault-suppressed by a microcode assist that costs hundreds of cycles. Measured on the
//! engine's admit + settle pair (criterion `budget` (a)): the metrics label lookup and the
//! model memo compared the empty upstream and model names of an unrouted call, and `memcmp` was
//! 44 % of the pair's time. Comparing lengths first, and not calling `memcmp` for empty
//! inputs, avoids the assist.

/// Whether `a` and `b` hold the same bytes.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

#[cfg(test)]
mod tests {
    use super::bytes_eq;

    #[test]
    fn equal_and_unequal_inputs() {
        assert!(bytes_eq(b"", b""));
        assert!(bytes_eq("".as_bytes(), Box::<str>::from("").as_bytes()));
        assert!(bytes_eq(b"gpt-4o", b"gpt-4o"));
        assert!(!bytes_eq(b"gpt-4o", b"gpt-4"));
        assert!(!bytes_eq(b"", b"a"));
        assert!(!bytes_eq(b"abc", b"abd"));
    }
}
