//! The cache key: a canonical 128-bit hash of an OpenAI chat-completions request.
//!
//! The key covers the model, the messages and every parameter that can change the answer. Fields
//! known not to change the answer are left out ([`EXCLUDED_FIELDS`]); any other field, known or
//! not, is part of the key, so a parameter added to the API later can only cost hits, never serve
//! a wrong answer.
//!
//! # Canonical form
//!
//! The request is walked once and fed to a streaming XXH3-128 hasher (through a 512-byte stack
//! buffer that batches small writes), with no intermediate text:
//!
//! - every value starts with a one-byte type tag (null, false, true, integer, float, string,
//!   array, object), and strings, arrays and objects carry their length (u64, little endian)
//!   before their content, so two different structures never produce the same byte stream;
//! - object members are fed in the byte order of their keys, whatever order the JSON had;
//! - a number whose value is an integer (`1`, `1.0`, `1e0`, `-0.0`) is fed as that integer
//!   (i128, little endian); any other number is fed as the bits of its `f64` (little endian),
//!   which stand one-to-one for its shortest round-trip decimal form, so `0.5` and `5e-1` agree;
//! - strings are fed as their UTF-8 bytes, exactly (no Unicode normalisation);
//! - at the top level only, fields listed in [`EXCLUDED_FIELDS`] and fields whose value is
//!   `null` (which the API treats as "not given") are skipped;
//! - the stream starts with a scheme name ([`KEY_SCHEME`]) so a change of scheme changes every
//!   key instead of silently mixing old and new entries in a shared (Redis) cache.
//!
//! The scheme depends only on the JSON value, XXH3 (specified, endian-independent) and IEEE 754,
//! so a key is the same in every process, on every platform and for every field order. A golden
//! test pins one key; changing the scheme means changing [`KEY_SCHEME`] and that test together.

use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};
use smallvec::SmallVec;
use xxhash_rust::xxh3::Xxh3Default;

/// Name and version of the key scheme, hashed first into every key.
pub const KEY_SCHEME: &str = "tollgate/cache-key/v1";

/// Top-level request fields that never change the answer and so are not part of the key.
///
/// - `stream`: a stream carries the same completion as a JSON body, only framed as events
///   (the store keeps the events of a streamed answer for replay, see
///   [`CachedResponse`](super::CachedResponse)).
/// - `stream_options`: only asks for a final usage chunk when streaming.
/// - `user`, `safety_identifier`: end-user identifiers for abuse monitoring.
/// - `metadata`, `store`: tags and retention of the completion on the provider's side.
/// - `service_tier`: which processing tier (latency, price) serves the same model.
/// - `prompt_cache_key`, `prompt_cache_retention`: hints for the provider's prompt cache.
///
/// Everything else is included, unknown fields too.
pub const EXCLUDED_FIELDS: &[&str] = &[
    "metadata",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "user",
];

/// A cache key: the 128-bit canonical hash of a request (see the [module docs](self)).
///
/// Displays as 32 lowercase hex digits, the form used as a key in a shared store.
///
/// ```
/// use tollgate::cache::CacheKey;
/// assert_eq!(CacheKey(0xab).to_string(), "000000000000000000000000000000ab");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The canonical key of an OpenAI chat-completions request body.
///
/// Field order, integral floats (`1.0` for `1`) and the fields in [`EXCLUDED_FIELDS`] do not
/// change the key; anything else does. Allocates nothing for requests whose objects arrive in
/// sorted order (always, with serde_json's default map).
///
/// ```
/// use serde_json::json;
/// use tollgate::cache::cache_key;
///
/// let a = cache_key(&json!({"model": "gpt-4o", "temperature": 0,
///                           "messages": [{"role": "user", "content": "Hi"}]}));
/// let b = cache_key(&json!({"messages": [{"content": "Hi", "role": "user"}],
///                           "temperature": 0.0, "model": "gpt-4o", "stream": true}));
/// assert_eq!(a, b);
/// let c = cache_key(&json!({"model": "gpt-4o", "temperature": 0.2,
///                           "messages": [{"role": "user", "content": "Hi"}]}));
/// assert_ne!(a, c);
/// ```
pub fn cache_key(request: &Value) -> CacheKey {
    let mut h = Feeder::new();
    feed_str(&mut h, KEY_SCHEME);
    match request {
        Value::Object(map) => feed_object(&mut h, map, true),
        other => feed_value(&mut h, other),
    }
    CacheKey(h.digest128())
}

/// The key of `request` as seen by one tenant: `tenant = Some(name)` puts the tenant into the
/// key (the policy's default `scope = "tenant"`), `None` is the key every tenant shares
/// ([`cache_key`], `scope = "shared"`).
///
/// The tenant is hashed right after [`KEY_SCHEME`], under a tag no request can start with, so
/// tenant keys never meet shared keys or each other (the empty tenant included).
///
/// ```
/// use serde_json::json;
/// use tollgate::cache::{cache_key, cache_key_for};
///
/// let req = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]});
/// assert_eq!(cache_key_for(&req, None), cache_key(&req));
/// assert_ne!(cache_key_for(&req, Some("alice")), cache_key_for(&req, Some("bob")));
/// assert_ne!(cache_key_for(&req, Some("")), cache_key(&req));
/// ```
pub fn cache_key_for(request: &Value, tenant: Option<&str>) -> CacheKey {
    let Some(tenant) = tenant else {
        return cache_key(request);
    };
    let mut h = Feeder::new();
    feed_str(&mut h, KEY_SCHEME);
    h.update(&[TAG_TENANT]);
    feed_str(&mut h, tenant);
    match request {
        Value::Object(map) => feed_object(&mut h, map, true),
        other => feed_value(&mut h, other),
    }
    CacheKey(h.digest128())
}

/// The streaming hasher behind a small stack buffer: XXH3's own `update` costs several
/// nanoseconds per call, and a request is mostly tags, lengths and short strings. The digest is
/// the same however the input is chunked.
struct Feeder {
    hasher: Xxh3Default,
    buf: [u8; FEED_BUF],
    len: usize,
}

const FEED_BUF: usize = 512;

impl Feeder {
    fn new() -> Feeder {
        Feeder {
            hasher: Xxh3Default::new(),
            buf: [0; FEED_BUF],
            len: 0,
        }
    }

    #[inline]
    fn update(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.spill(bytes);
        }
    }

    #[cold]
    fn spill(&mut self, bytes: &[u8]) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
        if bytes.len() >= FEED_BUF {
            self.hasher.update(bytes);
        } else {
            self.buf[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
        }
    }

    fn digest128(mut self) -> u128 {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
        self.hasher.digest128()
    }
}

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT: u8 = 3;
const TAG_FLOAT: u8 = 4;
const TAG_STRING: u8 = 5;
const TAG_ARRAY: u8 = 6;
const TAG_OBJECT: u8 = 7;
/// Before the tenant of a tenant-scoped key; no value's tag (0..=7, 104) is this.
const TAG_TENANT: u8 = 0x80;

/// 2^127 as an f64: integral floats below this in magnitude are exact in an i128.
const I128_LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

fn feed_value(h: &mut Feeder, v: &Value) {
    match v {
        Value::Null => h.update(&[TAG_NULL]),
        Value::Bool(false) => h.update(&[TAG_FALSE]),
        Value::Bool(true) => h.update(&[TAG_TRUE]),
        Value::Number(n) => feed_number(h, n),
        Value::String(s) => {
            h.update(&[TAG_STRING]);
            feed_str(h, s);
        }
        Value::Array(items) => {
            feed_tagged_len(h, TAG_ARRAY, items.len());
            for item in items {
                feed_value(h, item);
            }
        }
        Value::Object(map) => feed_object(h, map, false),
    }
}

/// Length-prefixed UTF-8 bytes.
fn feed_str(h: &mut Feeder, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn feed_tagged_len(h: &mut Feeder, tag: u8, len: usize) {
    let mut buf = [0u8; 9];
    buf[0] = tag;
    buf[1..].copy_from_slice(&(len as u64).to_le_bytes());
    h.update(&buf);
}

fn feed_number(h: &mut Feeder, n: &Number) {
    let int = n
        .as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from));
    let int = int.or_else(|| {
        let f = n.as_f64()?;
        // `as` is exact here: f is integral and |f| < 2^127.
        (f.is_finite() && f.fract() == 0.0 && f.abs() < I128_LIMIT).then_some(f as i128)
    });
    let mut buf = [0u8; 17];
    let len = match (int, n.as_f64()) {
        (Some(i), _) => {
            buf[0] = TAG_INT;
            buf[1..17].copy_from_slice(&i.to_le_bytes());
            17
        }
        (None, Some(f)) => {
            buf[0] = TAG_FLOAT;
            buf[1..9].copy_from_slice(&f.to_bits().to_le_bytes());
            9
        }
        // Only reachable with serde_json's `arbitrary_precision` and a number no f64 holds:
        // hash its text, under its own tag.
        (None, None) => {
            h.update(&[TAG_FLOAT + 100]);
            feed_str(h, &n.to_string());
            return;
        }
    };
    h.update(&buf[..len]);
}

fn included(top: bool, key: &str, value: &Value) -> bool {
    !top || !(value.is_null() || excluded(key))
}

/// Whether `key` is in [`EXCLUDED_FIELDS`]; a `match` (length, then bytes) is several times
/// faster than scanning the list, and a test keeps the two in step.
fn excluded(key: &str) -> bool {
    matches!(
        key,
        "metadata"
            | "prompt_cache_key"
            | "prompt_cache_retention"
            | "safety_identifier"
            | "service_tier"
            | "store"
            | "stream"
            | "stream_options"
            | "user"
    )
}

fn feed_object(h: &mut Feeder, map: &Map<String, Value>, top: bool) {
    feed_members(h, map.iter(), top, maps_iterate_sorted());
}

/// An object's members, in key byte order (`known_sorted`: they come in that order).
fn feed_members<'a, I>(h: &mut Feeder, members: I, top: bool, known_sorted: bool)
where
    I: ExactSizeIterator<Item = (&'a String, &'a Value)> + Clone,
{
    let count = if top {
        members.clone().filter(|(k, v)| included(top, k, v)).count()
    } else {
        members.len()
    };
    feed_tagged_len(h, TAG_OBJECT, count);
    if known_sorted || is_sorted(members.clone()) {
        for (k, v) in members {
            if included(top, k, v) {
                feed_member(h, k, v);
            }
        }
    } else {
        let mut sorted: SmallVec<[(&String, &Value); 16]> =
            members.filter(|(k, v)| included(top, k, v)).collect();
        sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (k, v) in sorted {
            feed_member(h, k, v);
        }
    }
}

fn is_sorted<'a>(members: impl Iterator<Item = (&'a String, &'a Value)> + Clone) -> bool {
    members
        .clone()
        .zip(members.skip(1))
        .all(|((a, _), (b, _))| a.as_bytes() < b.as_bytes())
}

/// Whether serde_json's `Map` iterates in key order: it is a BTreeMap by default, and keeps
/// insertion order with its `preserve_order` feature, which any crate in a build can turn on.
/// Probed once, so the common case skips the per-object order check.
fn maps_iterate_sorted() -> bool {
    static SORTED: OnceLock<bool> = OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut probe = Map::new();
        probe.insert("b".to_owned(), Value::Null);
        probe.insert("a".to_owned(), Value::Null);
        probe.keys().next().is_some_and(|k| k == "a")
    })
}

fn feed_member(h: &mut Feeder, k: &str, v: &Value) {
    feed_str(h, k);
    feed_value(h, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(text: &str) -> CacheKey {
        cache_key(&serde_json::from_str(text).expect("test JSON is valid"))
    }

    #[test]
    fn integral_numbers_hash_alike() {
        for (a, b) in [
            ("1", "1.0"),
            ("1", "1e0"),
            ("100", "1e2"),
            ("-3", "-3.0"),
            ("0", "-0.0"),
            ("9007199254740992", "9007199254740992.0"),
            ("18446744073709551616", "1.8446744073709551616e19"),
            ("0.5", "5e-1"),
        ] {
            assert_eq!(key(a), key(b), "{a} vs {b}");
        }
        assert_ne!(key("1"), key("1.5"));
        assert_ne!(key("1"), key("\"1\""));
        assert_ne!(key("0.1"), key("0.10000000000000002"));
    }

    #[test]
    fn structures_do_not_collide_by_concatenation() {
        assert_ne!(key(r#"["ab","c"]"#), key(r#"["a","bc"]"#));
        assert_ne!(key(r#"[["a"],"b"]"#), key(r#"[["a","b"]]"#));
        assert_ne!(key(r#"{"a":"bc"}"#), key(r#"{"ab":"c"}"#));
        assert_ne!(key(r#"{"a":{}}"#), key(r#"{"a":[]}"#));
        assert_ne!(key("null"), key("false"));
        assert_ne!(key("[]"), key("{}"));
    }

    #[test]
    fn unsorted_members_are_sorted() {
        // The order `preserve_order` would give; a BTreeMap never takes this path.
        let (a, b, c) = ("a".to_string(), "b".to_string(), "stream".to_string());
        let (one, two, yes) = (json!(1), json!(2), json!(true));
        let reversed = [(&c, &yes), (&b, &one), (&a, &two)];
        let mut h1 = Feeder::new();
        feed_members(&mut h1, reversed.iter().copied(), true, false);
        let mut h2 = Feeder::new();
        let sorted = json!({"a": 2, "b": 1});
        feed_object(&mut h2, sorted.as_object().expect("an object"), true);
        assert_eq!(h1.digest128(), h2.digest128());
    }

    #[test]
    fn the_byte_stream_is_the_documented_one() {
        // {"model": "m", "n": 1.0, "stream": true, "stop": [null]} spelled out by hand.
        let mut b: Vec<u8> = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        s(&mut b, KEY_SCHEME);
        b.push(TAG_OBJECT);
        b.extend(3u64.to_le_bytes()); // "stream" is excluded
        s(&mut b, "model");
        b.push(TAG_STRING);
        s(&mut b, "m");
        s(&mut b, "n");
        b.push(TAG_INT);
        b.extend(1i128.to_le_bytes());
        s(&mut b, "stop");
        b.push(TAG_ARRAY);
        b.extend(1u64.to_le_bytes());
        b.push(TAG_NULL);
        let expected = xxhash_rust::xxh3::xxh3_128(&b);
        let got = cache_key(&json!({"stream": true, "stop": [null], "n": 1.0, "model": "m"}));
        assert_eq!(got, CacheKey(expected));
    }

    #[test]
    fn the_match_agrees_with_the_list() {
        for f in EXCLUDED_FIELDS {
            assert!(excluded(f), "{f}");
        }
        for f in [
            "model",
            "messages",
            "temperature",
            "streams",
            "users",
            "Stream",
        ] {
            assert!(!excluded(f), "{f}");
        }
        assert_eq!(EXCLUDED_FIELDS.len(), 9);
    }

    #[test]
    fn display_is_32_hex_digits() {
        let k = CacheKey(u128::MAX);
        assert_eq!(k.to_string(), "f".repeat(32));
        assert_eq!(CacheKey(1).to_string().len(), 32);
    }
}
