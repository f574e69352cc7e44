//! Upstream authentication: static bearer keys, Zhipu-style HS256 JWTs, and Baidu-style OAuth2
//! client credentials with a token endpoint of its own.
//!
//! Refusals say why in general terms (unknown key, bad signature, expired) and never repeat the
//! credential presented.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tollgate::transport::form_decode;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, Method};
use parking_lot::Mutex;
use ring::hmac;
use serde_json::{Value, json};

use super::baidu;

/// The path of the token endpoint a [`TestAuth::OAuth2`] upstream serves (as Baidu Qianfan).
pub const TOKEN_PATH: &str = "/oauth/2.0/token";

/// How the upstream authenticates requests to `/v1/*` ([`super::Builder::auth`]).
///
/// A request that fails gets a 401 with OpenAI's `invalid_api_key` error body, is logged with
/// status 401, and never reaches the scripts or the fault mix. `Debug` shows the kind and the
/// number of keys, never a key, id or secret.
///
/// ```
/// use std::time::Duration;
/// use tollgate_testkit::{TestAuth, TestUpstream};
///
/// let upstream = TestUpstream::builder()
///     .auth(TestAuth::OAuth2 {
///         client_id: "app".into(),
///         client_secret: "s3cret".into(),
///         expires_in: Duration::from_secs(3600),
///     })
///     .start()
///     .unwrap();
/// assert!(upstream.token_url().ends_with("/oauth/2.0/token"));
/// assert_eq!(upstream.tokens_issued(), 0);
/// let auth = TestAuth::Bearer(vec!["sk-do-not-print".into()]);
/// assert!(!format!("{auth:?}").contains("sk-do-not-print"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TestAuth {
    /// Every request is accepted, with or without credentials (the default).
    #[default]
    None,
    /// `Authorization: Bearer <key>` with one of these keys (an empty list refuses everything).
    Bearer(Vec<String>),
    /// `Authorization: Bearer <jwt>` or a bare `Authorization: <jwt>`: an HS256 JWT in the Zhipu
    /// format (header `{"alg":"HS256","sign_type":"SIGN"}`, claims `{"api_key":<id>,
    /// "exp":<ms>,"timestamp":<ms>}`), signed with `secret`, whose `exp` (milliseconds since
    /// the Unix epoch) is still ahead.
    Jwt {
        /// The API key id the claims must name (`api_key`).
        id: String,
        /// The HMAC-SHA256 signing secret.
        secret: String,
    },
    /// OAuth2 client credentials, Baidu Qianfan style: `POST` (or `GET`)
    /// [`TOKEN_PATH`]`?grant_type=client_credentials&client_id=..&client_secret=..` issues
    /// `tk-<n>` tokens living `expires_in`; `/v1/*` requests carry one as
    /// `Authorization: Bearer <token>` or as the query parameter `access_token=<token>`, Baidu
    /// chat requests ([`crate::BAIDU_CHAT_PATH`]) as the query parameter only, and are refused
    /// as ERNIE does (HTTP 200, `error_code` 110 for a missing or unknown token, 111 for an
    /// expired or revoked one).
    /// See [`super::TestUpstream::revoke_tokens`].
    OAuth2 {
        /// The one client id the token endpoint knows.
        client_id: String,
        /// Its secret.
        client_secret: String,
        /// Lifetime of an issued token (reported rounded up to whole seconds; zero issues
        /// tokens that are already expired).
        expires_in: Duration,
    },
}

impl fmt::Debug for TestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestAuth::None => f.write_str("None"),
            TestAuth::Bearer(keys) => f.debug_struct("Bearer").field("keys", &keys.len()).finish(),
            TestAuth::Jwt { .. } => f
                .debug_struct("Jwt")
                .field("id", &"<redacted>")
                .field("secret", &"<redacted>")
                .finish(),
            TestAuth::OAuth2 { expires_in, .. } => f
                .debug_struct("OAuth2")
                .field("client_id", &"<redacted>")
                .field("client_secret", &"<redacted>")
                .field("expires_in", expires_in)
                .finish(),
        }
    }
}

/// Why a request was refused; the text goes into the 401 body and names no credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Missing,
    UnknownKey,
    MalformedJwt,
    BadSignature,
    Expired,
    UnknownToken,
}

impl Refusal {
    pub(crate) fn message(self) -> String {
        let why = match self {
            Refusal::Missing => {
                return "You didn't provide an API key. You need to provide your API key in an \
                        Authorization header using Bearer auth (i.e. Authorization: Bearer \
                        YOUR_KEY)."
                    .to_owned();
            }
            Refusal::UnknownKey => "the key is not known",
            Refusal::MalformedJwt => "the token is not a well-formed HS256 JWT",
            Refusal::BadSignature => "the token's signature does not verify",
            Refusal::Expired => "the token has expired",
            Refusal::UnknownToken => "the access token is unknown, expired or revoked",
        };
        format!(
            "Incorrect API key provided ({why}). You can find your API key at \
             https://platform.openai.com/account/api-keys."
        )
    }
}

/// What the token endpoint knows of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenState {
    /// Issued here, not expired, not revoked.
    Valid,
    /// Never issued here.
    Unknown,
    /// Issued here, then expired or revoked.
    Expired,
}

/// The OAuth2 tokens issued so far: token `tk-<n>` is entry `n - 1`.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    inner: Mutex<TokensInner>,
}

#[derive(Debug, Default)]
struct TokensInner {
    /// When each token expires (`None`: never, the lifetime overflowed `Instant`).
    expires: Vec<Option<Instant>>,
    /// Tokens with an index below this are revoked.
    revoked_below: usize,
}

impl Tokens {
    /// Issues a token living `life` from `now`.
    fn issue(&self, now: Instant, life: Duration) -> String {
        let mut inner = self.inner.lock();
        inner.expires.push(now.checked_add(life));
        format!("tk-{}", inner.expires.len())
    }

    fn valid(&self, token: &str, now: Instant) -> bool {
        self.state(token, now) == TokenState::Valid
    }

    /// Whether `token` was issued here, and if so whether it still lives.
    fn state(&self, token: &str, now: Instant) -> TokenState {
        let Some(n) = token
            .strip_prefix("tk-")
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<usize>().ok())
        else {
            return TokenState::Unknown;
        };
        let inner = self.inner.lock();
        let Some(index) = n.checked_sub(1) else {
            return TokenState::Unknown;
        };
        match inner.expires.get(index) {
            Some(expires) => {
                if index >= inner.revoked_below && expires.is_none_or(|at| now < at) {
                    TokenState::Valid
                } else {
                    TokenState::Expired
                }
            }
            None => TokenState::Unknown,
        }
    }

    /// Makes every token issued so far invalid.
    pub(crate) fn revoke_all(&self) {
        let mut inner = self.inner.lock();
        inner.revoked_below = inner.expires.len();
    }

    pub(crate) fn issued(&self) -> usize {
        self.inner.lock().expires.len()
    }
}

impl TestAuth {
    /// Checks a `/v1/*` request's credentials.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        tokens: &Tokens,
    ) -> Result<(), Refusal> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let bearer = presented.and_then(strip_bearer);
        match self {
            TestAuth::None => Ok(()),
            TestAuth::Bearer(keys) => {
                let key = bearer.ok_or(Refusal::Missing)?;
                if keys.iter().any(|k| k == key) {
                    Ok(())
                } else {
                    Err(Refusal::UnknownKey)
                }
            }
            TestAuth::Jwt { id, secret } => {
                // Zhipu accepts the token with or without the `Bearer` scheme.
                let token = bearer.or(presented).ok_or(Refusal::Missing)?;
                verify_jwt(token, id, secret, epoch_millis(SystemTime::now()))
            }
            TestAuth::OAuth2 { .. } => {
                let in_query = query.and_then(|q| query_param(q, "access_token"));
                if bearer.is_none() && in_query.is_none() {
                    return Err(Refusal::Missing);
                }
                let now = Instant::now();
                let ok = bearer.is_some_and(|t| tokens.valid(t, now))
                    || in_query.is_some_and(|t| tokens.valid(&t, now));
                if ok {
                    Ok(())
                } else {
                    Err(Refusal::UnknownToken)
                }
            }
        }
    }

    /// Checks a Baidu-path request's credentials; a refusal is Baidu's error code and message.
    /// OAuth2 reads the token from the query (`?access_token=`) only: a missing or unknown one
    /// is 110, an expired or revoked one 111. Other kinds check as on `/v1/*` and refuse
    /// with 110.
    pub(crate) fn check_baidu(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        tokens: &Tokens,
    ) -> Result<(), (u32, &'static str)> {
        const INVALID: (u32, &str) = (
            baidu::TOKEN_INVALID,
            "Access token invalid or no longer valid",
        );
        match self {
            TestAuth::OAuth2 { .. } => {
                let token = query
                    .and_then(|q| query_param(q, "access_token"))
                    .ok_or(INVALID)?;
                match tokens.state(&token, Instant::now()) {
                    TokenState::Valid => Ok(()),
                    TokenState::Unknown => Err(INVALID),
                    TokenState::Expired => Err((baidu::TOKEN_EXPIRED, "Access token expired")),
                }
            }
            _ => self.check(headers, query, tokens).map_err(|_| INVALID),
        }
    }

    /// True when this upstream serves the token endpoint.
    pub(crate) fn serves_tokens(&self) -> bool {
        matches!(self, TestAuth::OAuth2 { .. })
    }
}

/// The token endpoint's answer: status and JSON body.
pub(crate) fn token_endpoint(
    auth: &TestAuth,
    tokens: &Tokens,
    method: &Method,
    query: Option<&str>,
) -> (u16, Bytes) {
    let error = |status: u16, code: &str, description: &str| {
        let body = json!({"error": code, "error_description": description});
        (status, Bytes::from(body.to_string()))
    };
    let TestAuth::OAuth2 {
        client_id,
        client_secret,
        expires_in,
    } = auth
    else {
        return error(404, "invalid_request", "no token endpoint here");
    };
    if method != Method::POST && method != Method::GET {
        return error(405, "invalid_request", "use POST (or GET)");
    }
    let param = |name: &str| query.and_then(|q| query_param(q, name));
    if param("grant_type").as_deref() != Some("client_credentials") {
        return error(
            400,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    if param("client_id").as_deref() != Some(client_id.as_str()) {
        return error(401, "invalid_client", "unknown client id");
    }
    if param("client_secret").as_deref() != Some(client_secret.as_str()) {
        return error(401, "invalid_client", "Client authentication failed");
    }
    let token = tokens.issue(Instant::now(), *expires_in);
    let secs = expires_in.as_secs() + u64::from(expires_in.subsec_nanos() > 0);
    let body = json!({"access_token": token, "expires_in": secs});
    (200, Bytes::from(body.to_string()))
}

/// The credential after a case-insensitive `Bearer ` scheme, if the value has that scheme.
fn strip_bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then_some(rest)
}

/// Checks a Zhipu-style HS256 JWT: signature under `secret`, `api_key == id`, `exp > now_ms`.
fn verify_jwt(token: &str, id: &str, secret: &str, now_ms: u64) -> Result<(), Refusal> {
    let (signed, signature) = token.rsplit_once('.').ok_or(Refusal::MalformedJwt)?;
    let (header, claims) = signed.split_once('.').ok_or(Refusal::MalformedJwt)?;
    if claims.contains('.') {
        return Err(Refusal::MalformedJwt);
    }
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| Refusal::MalformedJwt)
    };
    let header: Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| Refusal::MalformedJwt)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256")
        || header.get("sign_type").and_then(Value::as_str) != Some("SIGN")
    {
        return Err(Refusal::MalformedJwt);
    }
    let signature = decode(signature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, signed.as_bytes(), &signature).map_err(|_| Refusal::BadSignature)?;
    let claims: Value =
        serde_json::from_slice(&decode(claims)?).map_err(|_| Refusal::MalformedJwt)?;
    if claims.get("api_key").and_then(Value::as_str) != Some(id) {
        return Err(Refusal::UnknownKey);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(Refusal::MalformedJwt)?;
    if exp <= now_ms {
        return Err(Refusal::Expired);
    }
    Ok(())
}

fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key) == name).then(|| form_decode(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        let q = "grant_type=client_credentials&client_id=id%201&client_secret=s%262+x&bad=%zz%4";
        assert_eq!(query_param(q, "client_id").as_deref(), Some("id 1"));
        assert_eq!(query_param(q, "client_secret").as_deref(), Some("s&2 x"));
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("flag", "flag").as_deref(), Some(""));
        assert_eq!(form_decode("%C3%A9"), "\u{e9}");
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(strip_bearer("Bearer abc"), Some("abc"));
        assert_eq!(strip_bearer("bearer   abc "), Some("abc"));
        assert_eq!(strip_bearer("Basic abc"), None);
        assert_eq!(strip_bearer("abc"), None);
        assert_eq!(strip_bearer("Bearer "), None);
    }

    #[test]
    fn tokens_expire_and_revoke() {
        let tokens = Tokens::default();
        let now = Instant::now();
        let a = tokens.issue(now, Duration::from_secs(60));
        assert_eq!(a, "tk-1");
        assert!(tokens.valid(&a, now));
        assert!(!tokens.valid(&a, now + Duration::from_secs(60)));
        assert!(!tokens.valid("tk-2", now) && !tokens.valid("tk-0", now));
        assert!(!tokens.valid("tk-+1", now) && !tokens.valid("tk-", now));
        assert_eq!(tokens.state("tk-2", now), TokenState::Unknown);
        tokens.revoke_all();
        assert!(!tokens.valid(&a, now));
        assert_eq!(tokens.state(&a, now), TokenState::Expired);
        let b = tokens.issue(now, Duration::MAX);
        assert!(tokens.valid(&b, now));
        assert_eq!(tokens.issued(), 2);
    }

    #[test]
    fn jwt_checks_signature_id_and_expiry() {
        use tollgate::auth::{ZHIPU_HEADER, mint_hs256, zhipu_claims};
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let now_ms = 1_700_000_030_000;
        let claims = zhipu_claims("id", at, Duration::from_secs(60));
        let good = mint_hs256(ZHIPU_HEADER, &claims, b"secret");
        assert_eq!(verify_jwt(&good, "id", "secret", now_ms), Ok(()));
        assert_eq!(
            verify_jwt(&good, "id", "other", now_ms),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            verify_jwt(&good, "id2", "secret", now_ms),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(
            verify_jwt(&good, "id", "secret", 1_700_000_060_000),
            Err(Refusal::Expired)
        );
        let plain = mint_hs256(r#"{"alg":"HS256"}"#, &claims, b"secret");
        assert_eq!(
            verify_jwt(&plain, "id", "secret", now_ms),
            Err(Refusal::MalformedJwt)
        );
        assert_eq!(
            verify_jwt("a.b", "id", "secret", now_ms),
            Err(Refusal::MalformedJwt)
        );
        assert_eq!(
            verify_jwt("a.b.c.d", "id", "secret", now_ms),
            Err(Refusal::MalformedJwt)
        );
        let (head, _) = good.rsplit_once('.').unwrap();
        let forged = format!("{head}.AAAA");
        assert_eq!(
            verify_jwt(&forged, "id", "secret", now_ms),
            Err(Refusal::BadSignature)
        );
    }
}
