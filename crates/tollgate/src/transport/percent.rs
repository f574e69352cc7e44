//! Percent-decoding, for URL parts (a proxy's credentials) and form bodies (OAuth2 token
//! requests, which the test upstream reads).

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is. Bytes that do
/// not form UTF-8 become U+FFFD.
///
/// ```
/// use tollgate::transport::percent_decode;
/// assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
/// assert_eq!(percent_decode("100%"), "100%");
/// assert_eq!(percent_decode("a+b"), "a+b");
/// ```
pub fn percent_decode(text: &str) -> String {
    decode(text, false)
}

/// Decodes an `application/x-www-form-urlencoded` value: `+` is a space, then `%XX` escapes as
/// [`percent_decode`].
///
/// ```
/// use tollgate::transport::form_decode;
/// assert_eq!(form_decode("client+id%2B1"), "client id+1");
/// ```
pub fn form_decode(text: &str) -> String {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
