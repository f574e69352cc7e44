//! JWT (HS256) minting with a cached, refreshed token — the Zhipu / SiliconFlow style.
//!
//! The token is `base64url(header) . base64url(claims) . base64url(HMAC-SHA256(key, first two))`,
//! base64url without padding, with
//!
//! - header `{"alg":"HS256","sign_type":"SIGN"}`
//! - claims `{"api_key":<id>,"exp":<ms>,"timestamp":<ms>}`, times in milliseconds since the Unix
//!   epoch (`timestamp` = when minted, `exp` = `timestamp + ttl`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use ring::hmac;

use super::Secret;

/// The JOSE header of a Zhipu-style token.
pub const ZHIPU_HEADER: &str = r#"{"alg":"HS256","sign_type":"SIGN"}"#;

/// Signs `header_json` and `claims_json` (taken byte for byte, not re-serialised) with
/// HMAC-SHA256 under `key` and returns the compact JWT.
///
/// ```
/// use tollgate::auth::mint_hs256;
///
/// let token = mint_hs256(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#, b"key");
/// let parts: Vec<&str> = token.split('.').collect();
/// assert_eq!(parts.len(), 3);
/// assert_eq!(parts[0], "eyJhbGciOiJIUzI1NiJ9"); // base64url of the header, no padding
/// ```
pub fn mint_hs256(header_json: &str, claims_json: &str, key: &[u8]) -> String {
    sign(
        header_json,
        claims_json,
        &hmac::Key::new(hmac::HMAC_SHA256, key),
    )
}

fn sign(header_json: &str, claims_json: &str, key: &hmac::Key) -> String {
    let mut token = String::with_capacity(
        (header_json.len() + claims_json.len()) * 4 / 3 + 48, // + signature and dots
    );
    URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims_json, &mut token);
    let tag = hmac::sign(key, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
    token
}

/// Milliseconds since the Unix epoch; 0 before it, saturating far after it.
fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The claims of a Zhipu-style token, as JSON text with a fixed field order.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use tollgate::auth::zhipu_claims;
///
/// let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
/// assert_eq!(
///     zhipu_claims("my-id", now, Duration::from_secs(60)),
///     r#"{"api_key":"my-id","exp":1700000060000,"timestamp":1700000000000}"#,
/// );
/// ```
pub fn zhipu_claims(id: &str, now: SystemTime, ttl: Duration) -> String {
    let id_json = serde_json::Value::String(id.to_owned()).to_string();
    let issued = epoch_millis(now);
    let exp = issued.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    format!(r#"{{"api_key":{id_json},"exp":{exp},"timestamp":{issued}}}"#)
}

struct Minted {
    token: Arc<str>,
    /// Mint a new token from this instant on (`exp - refresh_before`).
    refresh_at: SystemTime,
}

/// Mints Zhipu-style HS256 tokens and hands out the current one until it is due for refresh.
///
/// A token minted at `t` expires at `t + ttl` and is handed out while `now < t + ttl -
/// refresh_before`; from that instant on the next call mints a new one. Concurrent callers that
/// find the token due get one mint between them (the others wait for it on a short lock and reuse
/// it). Reading a valid token takes no lock. If `refresh_before >= ttl`, every call mints.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tollgate::auth::{JwtMinter, Secret};
///
/// let minter = JwtMinter::new(
///     Secret::new("my-id"),
///     Secret::new("my-secret"),
///     Duration::from_secs(1800),
///     Duration::from_secs(60),
/// );
/// let now = SystemTime::now();
/// let a = minter.token(now);
/// let b = minter.token(now + Duration::from_secs(60));
/// assert!(std::sync::Arc::ptr_eq(&a, &b)); // cached
/// let c = minter.token(now + Duration::from_secs(1740)); // exp - refresh_before
/// assert_ne!(a, c);
/// ```
pub struct JwtMinter {
    id: Secret,
    key: hmac::Key,
    ttl: Duration,
    refresh_before: Duration,
    current: ArcSwapOption<Minted>,
    mint_lock: Mutex<()>,
}

impl JwtMinter {
    /// A minter for API key `id` signing with `secret`; tokens live `ttl` and are replaced
    /// `refresh_before` before they expire.
    pub fn new(id: Secret, secret: Secret, ttl: Duration, refresh_before: Duration) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
        JwtMinter {
            id,
            key,
            ttl,
            refresh_before,
            current: ArcSwapOption::empty(),
            mint_lock: Mutex::new(()),
        }
    }

    /// Lifetime of a minted token.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long before expiry a token is replaced.
    pub fn refresh_before(&self) -> Duration {
        self.refresh_before
    }

    /// The current token, minting a new one if there is none or it is due for refresh at `now`.
    pub fn token(&self, now: SystemTime) -> Arc<str> {
        if let Some(token) = self.cached(now) {
            return token;
        }
        let _guard = self.mint_lock.lock();
        // Another caller may have minted while this one waited for the lock.
        if let Some(token) = self.cached(now) {
            return token;
        }
        let token: Arc<str> = Arc::from(self.mint(now));
        let expires_at = now.checked_add(self.ttl).unwrap_or(now);
        let refresh_at = expires_at
            .checked_sub(self.refresh_before)
            .unwrap_or(UNIX_EPOCH);
        self.current.store(Some(Arc::new(Minted {
            token: Arc::clone(&token),
            refresh_at,
        })));
        token
    }

    fn cached(&self, now: SystemTime) -> Option<Arc<str>> {
        let current = self.current.load();
        match current.as_deref() {
            Some(m) if now < m.refresh_at => Some(Arc::clone(&m.token)),
            _ => None,
        }
    }

    /// Forgets `token` if it is the cached one (the upstream said it expired), so the next call
    /// mints a new one.
    pub fn forget(&self, token: &str) {
        let current = self.current.load();
        if current.as_deref().is_some_and(|m| &*m.token == token) {
            self.current.store(None);
        }
    }

    /// Mints a fresh token for `now`, bypassing (and not touching) the cache.
    pub fn mint(&self, now: SystemTime) -> String {
        let claims = zhipu_claims(self.id.expose(), now, self.ttl);
        sign(ZHIPU_HEADER, &claims, &self.key)
    }
}

impl fmt::Debug for JwtMinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtMinter")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("ttl", &self.ttl)
            .field("refresh_before", &self.refresh_before)
            .field("has_token", &self.current.load().is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn claims_escape_the_id() {
        let c = zhipu_claims("a\"b\\c", at(5), Duration::from_millis(10));
        assert_eq!(c, r#"{"api_key":"a\"b\\c","exp":15,"timestamp":5}"#);
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["api_key"], "a\"b\\c");
    }

    #[test]
    fn times_before_the_epoch_and_huge_ttls_saturate() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(epoch_millis(before), 0);
        let c = zhipu_claims("x", at(1), Duration::MAX);
        assert!(c.contains(&format!("\"exp\":{}", u64::MAX)), "{c}");
    }

    #[test]
    fn refresh_before_at_least_ttl_mints_every_time() {
        let m = JwtMinter::new(
            Secret::new("id"),
            Secret::new("s"),
            Duration::from_secs(10),
            Duration::from_secs(10),
        );
        let a = m.token(at(1_000));
        let b = m.token(at(1_000));
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn debug_hides_id_and_secret() {
        let m = JwtMinter::new(
            Secret::new("ID-4c3b2a"),
            Secret::new("sk-SECRET-9f8e7d"),
            Duration::from_secs(10),
            Duration::from_secs(1),
        );
        let _ = m.token(at(1));
        let text = format!("{m:?} {m:#?}");
        assert!(
            !text.contains("sk-SECRET-9f8e7d") && !text.contains("ID-4c3b2a"),
            "{text}"
        );
    }
}
