//! OAuth2 client credentials — the Baidu Qianfan style.
//!
//! The client asks `token_url?grant_type=client_credentials&client_id=..&client_secret=..` for a
//! token (`{"access_token": "...", "expires_in": 2592000}`), keeps it in a [`TokenCache`] until
//! shortly before it expires, and sends it in the query (`access_token=`) or an
//! `Authorization: Bearer` header. A 401 with a token [`TokenCache::invalidate`]s it, and the
//! replay fetches a fresh one. The HTTP request itself is injected (`fetch`), so this module does
//! no I/O.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use super::{AuthError, Secret};
use crate::policy::TokenPlacement;

/// An OAuth2 access token and when it expires.
#[derive(Debug, Clone)]
pub struct Token {
    /// The access token.
    pub access_token: Secret,
    /// When the token endpoint said it expires (`now + expires_in` at the time of the response).
    pub expires_at: SystemTime,
}

/// Longest piece of an error body (`error`, `error_description`) copied into an [`AuthError`].
const MAX_ERROR_TEXT: usize = 200;

fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect()
}

/// Reads a token endpoint's response.
///
/// Success is a JSON object with a non-empty string `access_token` and a positive `expires_in`
/// in seconds (a number, or a string of digits). An object with an `error` field (Baidu and RFC
/// 6749 error bodies, whatever the status) becomes [`AuthError::TokenRejected`] naming the code;
/// another non-2xx status becomes [`AuthError::TokenStatus`]; anything else unusable becomes
/// [`AuthError::TokenResponse`]. No error carries the body's content beyond the error code and
/// description.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tollgate::auth::{parse_token_response, AuthError};
///
/// let now = SystemTime::now();
/// let token = parse_token_response(200, br#"{"access_token":"24.abc","expires_in":2592000}"#, now)
///     .expect("a token");
/// assert_eq!(token.access_token.expose(), "24.abc");
/// assert_eq!(token.expires_at, now + Duration::from_secs(2_592_000));
///
/// let err = parse_token_response(
///     401,
///     br#"{"error":"invalid_client","error_description":"unknown client id"}"#,
///     now,
/// )
/// .unwrap_err();
/// assert!(matches!(err, AuthError::TokenRejected { ref code, .. } if code == "invalid_client"));
/// ```
pub fn parse_token_response(status: u16, body: &[u8], now: SystemTime) -> Result<Token, AuthError> {
    let success = (200..300).contains(&status);
    let invalid = |problem: String| AuthError::TokenResponse { status, problem };
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        // serde_json's syntax errors name a position, never the content.
        Err(_) if !success => return Err(AuthError::TokenStatus { status }),
        Err(e) => {
            return Err(invalid(format!(
                "the body ({} bytes) is not JSON (line {}, column {})",
                body.len(),
                e.line(),
                e.column()
            )));
        }
    };
    let Some(obj) = value.as_object() else {
        if !success {
            return Err(AuthError::TokenStatus { status });
        }
        return Err(invalid("the body is JSON but not an object".into()));
    };
    if let Some(code) = obj
        .get("error")
        .filter(|c| !c.is_null() && c.as_str() != Some(""))
    {
        let code = match code {
            serde_json::Value::String(s) => clean(s),
            serde_json::Value::Number(n) => n.to_string(),
            _ => "(not a string)".to_string(),
        };
        let description = obj
            .get("error_description")
            .and_then(|d| d.as_str())
            .map(clean)
            .unwrap_or_default();
        return Err(AuthError::TokenRejected {
            status,
            code,
            description,
        });
    }
    if !success {
        return Err(AuthError::TokenStatus { status });
    }
    let access_token = match obj.get("access_token") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Secret::new(s.as_str()),
        Some(serde_json::Value::String(_)) => {
            return Err(invalid("`access_token` is empty".into()));
        }
        Some(_) => return Err(invalid("`access_token` is not a string".into())),
        None => return Err(invalid("`access_token` is missing".into())),
    };
    let expires_in = match obj.get("expires_in") {
        None => return Err(invalid("`expires_in` is missing".into())),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 1.0).map(|f| f as u64)),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    let expires_in = match expires_in {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => {
            return Err(invalid(
                "`expires_in` is not a positive whole number of seconds".into(),
            ));
        }
    };
    let expires_at = now
        .checked_add(expires_in)
        .ok_or_else(|| invalid("`expires_in` is too large".into()))?;
    Ok(Token {
        access_token,
        expires_at,
    })
}

/// Appends `value` percent-encoded: everything but RFC 3986 unreserved characters becomes `%XX`.
fn push_encoded(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// Percent-encodes `value` for a URL query (RFC 3986 unreserved characters stay as they are).
///
/// ```
/// assert_eq!(tollgate::auth::percent_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
/// ```
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_encoded(&mut out, value);
    out
}

/// Where a new query parameter starts: `?` if the URL has no query yet, `&` otherwise, nothing if
/// it already ends with one of them.
fn query_separator(url: &str) -> &'static str {
    match url.as_bytes().last() {
        Some(b'?' | b'&') => "",
        _ if url.contains('?') => "&",
        _ => "?",
    }
}

/// The client-credentials token request URL (Baidu Qianfan style, the credentials in the query;
/// send it as a POST with an empty body).
///
/// The result contains the client secret: do not log it.
///
/// ```
/// use tollgate::auth::token_request_url;
///
/// assert_eq!(
///     token_request_url("https://aip.baidubce.com/oauth/2.0/token", "id 1", "s&2"),
///     "https://aip.baidubce.com/oauth/2.0/token?grant_type=client_credentials&client_id=id%201&client_secret=s%262",
/// );
/// ```
pub fn token_request_url(token_url: &str, client_id: &str, client_secret: &str) -> String {
    let mut url =
        String::with_capacity(token_url.len() + 64 + client_id.len() + client_secret.len());
    url.push_str(token_url);
    url.push_str(query_separator(token_url));
    url.push_str("grant_type=client_credentials&client_id=");
    push_encoded(&mut url, client_id);
    url.push_str("&client_secret=");
    push_encoded(&mut url, client_secret);
    url
}

/// Puts `token` where `placement` says: an `access_token=` query parameter on `url`, or an
/// `Authorization: Bearer` header. Any `access_token` parameter or `Authorization` header already
/// there (from an earlier attempt) is replaced, so a replay after a 401 carries only the new token.
///
/// ```
/// use std::time::SystemTime;
/// use tollgate::auth::{apply, Secret, Token};
/// use tollgate::policy::TokenPlacement;
///
/// let token = Token { access_token: Secret::new("24.abc"), expires_at: SystemTime::now() };
/// let mut url = String::from("https://x.example/chat?model=m");
/// let mut headers = Vec::new();
/// apply(TokenPlacement::Query, &token, &mut url, &mut headers);
/// assert_eq!(url, "https://x.example/chat?model=m&access_token=24.abc");
///
/// let mut url = String::from("https://x.example/chat");
/// apply(TokenPlacement::Header, &token, &mut url, &mut headers);
/// assert_eq!(headers, [("Authorization".to_string(), "Bearer 24.abc".to_string())]);
/// ```
pub fn apply(
    placement: TokenPlacement,
    token: &Token,
    url: &mut String,
    headers: &mut Vec<(String, String)>,
) {
    match placement {
        TokenPlacement::Header => {
            headers.retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
            headers.push((
                "Authorization".to_string(),
                format!("Bearer {}", token.access_token.expose()),
            ));
        }
        TokenPlacement::Query => set_query_token(url, token.access_token.expose()),
    }
}

fn set_query_token(url: &mut String, token: &str) {
    let fragment = url.find('#').map(|i| url.split_off(i));
    if let Some(q) = url.find('?') {
        let kept: Vec<&str> = url[q + 1..]
            .split('&')
            .filter(|p| !p.is_empty() && *p != "access_token" && !p.starts_with("access_token="))
            .collect();
        let query = kept.join("&");
        url.truncate(q + 1);
        url.push_str(&query);
    }
    url.push_str(query_separator(url));
    url.push_str("access_token=");
    push_encoded(url, token);
    if let Some(fragment) = fragment {
        url.push_str(&fragment);
    }
}

/// Default for how long before expiry a cached token stops being used ([`TokenCache::new`]).
pub const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_secs(60);

/// What the last refresh attempt left for callers that waited on it.
struct RefreshState {
    last_error: Option<AuthError>,
}

/// The current OAuth2 token of one upstream, refreshed once for all concurrent callers.
///
/// A token is used while `now + margin < expires_at`. When there is none, [`TokenCache::get`]
/// takes an async lock, looks again (another caller may have fetched meanwhile), and only then
/// calls `fetch`: concurrent callers share one request, and its failure too. Reading a valid token
/// takes no lock.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tollgate::auth::{parse_token_response, TokenCache};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache = TokenCache::new();
/// let now = SystemTime::now();
/// let token = cache
///     .get(now, || async move {
///         // the HTTP POST to token_request_url(..) goes here
///         parse_token_response(200, br#"{"access_token":"t1","expires_in":3600}"#, now)
///     })
///     .await
///     .expect("a token");
/// assert_eq!(token.access_token.expose(), "t1");
///
/// // The upstream answered 401 with it: drop it, and the next get fetches a new one.
/// cache.invalidate(&token);
/// assert!(cache.current(now).is_none());
/// # });
/// ```
pub struct TokenCache {
    current: ArcSwapOption<Token>,
    margin: Duration,
    /// Completed fetch attempts, written under `refresh`.
    attempts: AtomicU64,
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl TokenCache {
    /// An empty cache with the default safety margin of 60 s.
    pub fn new() -> Self {
        Self::with_margin(DEFAULT_SAFETY_MARGIN)
    }

    /// An empty cache that stops using a token `margin` before it expires. A margin longer than a
    /// token's lifetime makes every [`TokenCache::get`] fetch.
    pub fn with_margin(margin: Duration) -> Self {
        TokenCache {
            current: ArcSwapOption::empty(),
            margin,
            attempts: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(RefreshState { last_error: None }),
        }
    }

    /// The safety margin.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// The cached token if it is still usable at `now`, without fetching.
    pub fn current(&self, now: SystemTime) -> Option<Arc<Token>> {
        let current = self.current.load();
        match current.as_ref() {
            Some(token) if self.usable(token, now) => Some(Arc::clone(token)),
            _ => None,
        }
    }

    fn usable(&self, token: &Token, now: SystemTime) -> bool {
        now.checked_add(self.margin)
            .is_some_and(|deadline| deadline < token.expires_at)
    }

    /// A token usable at `now`: the cached one, or a new one from `fetch`.
    ///
    /// `fetch` is called only when no usable token is cached, by one caller at a time; callers
    /// that waited for it use its token, or get its error if it failed. A cancelled `get` (its
    /// future dropped) leaves the cache unchanged and lets the next caller fetch.
    pub async fn get<F, Fut>(&self, now: SystemTime, fetch: F) -> Result<Arc<Token>, AuthError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, AuthError>>,
    {
        if let Some(token) = self.current(now) {
            return Ok(token);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.refresh.lock().await;
        if let Some(token) = self.current(now) {
            return Ok(token);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            // A fetch finished while this caller waited and left no usable token: share its error.
            if let Some(err) = &state.last_error {
                return Err(err.clone());
            }
        }
        let result = fetch().await;
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(token) => {
                state.last_error = None;
                let token = Arc::new(token);
                self.current.store(Some(Arc::clone(&token)));
                Ok(token)
            }
            Err(err) => {
                state.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Drops the cached token if it is still `used` (the one a request was just refused with).
    ///
    /// Call it on a 401 with the token that request carried. If another caller already replaced
    /// the token, this does nothing, so many concurrent 401s lead to one new fetch.
    pub fn invalidate(&self, used: &Token) {
        let _ = self
            .current
            .compare_and_swap(used as *const Token, None::<Arc<Token>>);
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("TokenCache")
            .field("margin", &self.margin)
            .field("expires_at", &current.as_ref().map(|t| t.expires_at))
            .field("fetches", &self.attempts.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn expires_in_forms() {
        for body in [
            r#"{"access_token":"t","expires_in":30}"#,
            r#"{"access_token":"t","expires_in":"30"}"#,
            r#"{"access_token":"t","expires_in":30.0}"#,
        ] {
            let t = parse_token_response(200, body.as_bytes(), now()).unwrap();
            assert_eq!(t.expires_at, now() + Duration::from_secs(30), "{body}");
        }
        for body in [
            r#"{"access_token":"t","expires_in":0}"#,
            r#"{"access_token":"t","expires_in":-5}"#,
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":"t","expires_in":null}"#,
            r#"{"access_token":"t"}"#,
        ] {
            let err = parse_token_response(200, body.as_bytes(), now()).unwrap_err();
            assert!(
                matches!(err, AuthError::TokenResponse { .. }),
                "{body}: {err}"
            );
            assert!(err.to_string().contains("expires_in"), "{err}");
        }
    }

    #[test]
    fn error_text_is_cleaned_and_bounded() {
        let long = "x".repeat(1000);
        let body = format!(r#"{{"error":"bad\ncode","error_description":"{long}"}}"#);
        let err = parse_token_response(400, body.as_bytes(), now()).unwrap_err();
        let AuthError::TokenRejected {
            code, description, ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!(code, "badcode");
        assert_eq!(description.len(), MAX_ERROR_TEXT);
    }

    #[test]
    fn query_separator_cases() {
        assert_eq!(
            token_request_url("https://h/t?", "a", "b"),
            "https://h/t?grant_type=client_credentials&client_id=a&client_secret=b"
        );
        assert_eq!(
            token_request_url("https://h/t?x=1", "a", "b"),
            "https://h/t?x=1&grant_type=client_credentials&client_id=a&client_secret=b"
        );
    }

    #[test]
    fn query_token_replaces_an_earlier_one_and_keeps_the_fragment() {
        let mut url = String::from("https://h/p?access_token=old&a=1#frag");
        set_query_token(&mut url, "n w");
        assert_eq!(url, "https://h/p?a=1&access_token=n%20w#frag");
        let mut url = String::from("https://h/p?access_token=old");
        set_query_token(&mut url, "new");
        assert_eq!(url, "https://h/p?access_token=new");
    }
}
