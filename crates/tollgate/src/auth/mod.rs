//! Credentials: secret references, JWT minting, OAuth2 client-credentials tokens.
//!
//! - [`Secret`] holds a value that never shows in `Debug` or `Display`; [`resolve`] reads one from
//!   the environment or a file, as a policy's [`SecretRef`] says.
//! - [`JwtMinter`] mints HS256 tokens (Zhipu / SiliconFlow style) and refreshes them before expiry;
//!   [`mint_hs256`] signs any header and claims.
//! - [`TokenCache`] keeps an OAuth2 client-credentials token (Baidu Qianfan style), refreshed once
//!   for all concurrent callers and dropped on a 401; [`parse_token_response`],
//!   [`token_request_url`] and [`apply`] are the pieces around it.
//! - [`Credentials`] ties them to a policy's [`Auth`]: secrets are resolved on first use.
//!
//! Nothing here does network I/O: fetching an OAuth2 token is a closure the caller passes in.
//! Nothing here prints a secret: every `Debug`, `Display` and error names variables, files and
//! error codes only.

mod error;
mod jwt;
mod oauth2;
mod secret;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

pub use error::AuthError;
pub use jwt::{JwtMinter, ZHIPU_HEADER, mint_hs256, zhipu_claims};
pub use oauth2::{
    DEFAULT_SAFETY_MARGIN, Token, TokenCache, apply, parse_token_response, percent_encode,
    token_request_url,
};
pub use secret::{Secret, resolve};

use crate::policy::{Auth, SecretRef, TokenPlacement};

/// The credentials of one upstream, built from its policy [`Auth`].
///
/// Secrets are resolved at the first call of [`Credentials::resolve`], not when the policy is
/// loaded, so a policy can name a variable that is set later in start-up. The outcome, success or
/// error, is kept: to pick up a changed secret, build a new `Credentials` (a policy reload does).
/// `Debug` shows the kind and the secret references (`env:OPENAI_API_KEY`), never values.
///
/// ```
/// use tollgate::auth::{Credentials, Resolved};
/// use tollgate::policy::{Auth, SecretRef};
///
/// let auth = Auth::Bearer { keys: vec![SecretRef::Env("TOLLGATE_DOC_UNSET_KEY".into())] };
/// let creds = Credentials::new(&auth);
/// assert_eq!(creds.kind(), "bearer");
/// let err = creds.resolve().unwrap_err();
/// assert!(err.to_string().contains("TOLLGATE_DOC_UNSET_KEY"));
/// assert!(format!("{creds:?}").contains("env:TOLLGATE_DOC_UNSET_KEY"));
///
/// let none = Credentials::new(&Auth::None);
/// assert!(matches!(none.resolve(), Ok(Resolved::None)));
/// ```
pub struct Credentials {
    auth: Auth,
    resolved: OnceLock<Result<Resolved, AuthError>>,
}

/// Credentials with their secrets read, ready to use. Get one from [`Credentials::resolve`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Resolved {
    /// No credentials.
    None,
    /// A pool of static keys for `Authorization: Bearer`, in policy order.
    Bearer(Vec<Secret>),
    /// An HS256 JWT minter.
    Jwt(JwtMinter),
    /// An OAuth2 client-credentials client.
    OAuth2(OAuth2Client),
}

impl Resolved {
    /// Key `i` of a bearer pool; `None` for another kind or an index past the pool.
    pub fn key(&self, i: usize) -> Option<&Secret> {
        match self {
            Resolved::Bearer(keys) => keys.get(i),
            _ => None,
        }
    }

    /// Number of keys in a bearer pool (0 for other kinds).
    pub fn key_count(&self) -> usize {
        match self {
            Resolved::Bearer(keys) => keys.len(),
            _ => 0,
        }
    }
}

/// An OAuth2 client-credentials client: the endpoint, the client's secrets and its token cache.
#[derive(Debug)]
pub struct OAuth2Client {
    /// The current token.
    pub cache: TokenCache,
    /// The token endpoint.
    pub token_url: String,
    /// Client id.
    pub client_id: Secret,
    /// Client secret.
    pub client_secret: Secret,
    /// Where the access token goes on a request.
    pub placement: TokenPlacement,
}

impl OAuth2Client {
    /// The token request URL (see [`token_request_url`]), wrapped as a [`Secret`] because it
    /// carries the client secret.
    pub fn request_url(&self) -> Secret {
        Secret::from(token_request_url(
            &self.token_url,
            self.client_id.expose(),
            self.client_secret.expose(),
        ))
    }

    /// A token usable at `now` from the cache, or from `fetch` given the request URL (see
    /// [`TokenCache::get`]). Should a [`AuthError::TokenFetch`] message from `fetch` quote the
    /// client secret (plain or percent-encoded), it is replaced by `<redacted>`.
    pub async fn token<F, Fut>(&self, now: SystemTime, fetch: F) -> Result<Arc<Token>, AuthError>
    where
        F: FnOnce(Secret) -> Fut,
        Fut: Future<Output = Result<Token, AuthError>>,
    {
        let url = self.request_url();
        self.cache
            .get(now, || fetch(url))
            .await
            .map_err(|err| match err {
                AuthError::TokenFetch { message } => AuthError::TokenFetch {
                    message: self.redact(message),
                },
                other => other,
            })
    }

    fn redact(&self, message: String) -> String {
        let secret = self.client_secret.expose();
        let encoded = percent_encode(secret);
        message
            .replace(secret, "<redacted>")
            .replace(&encoded, "<redacted>")
    }

    /// Puts `token` on a request where the policy says (see [`apply`]).
    pub fn apply(&self, token: &Token, url: &mut String, headers: &mut Vec<(String, String)>) {
        apply(self.placement, token, url, headers);
    }
}

impl Credentials {
    /// Credentials for `auth`; nothing is read yet.
    pub fn new(auth: &Auth) -> Self {
        Credentials {
            auth: auth.clone(),
            resolved: OnceLock::new(),
        }
    }

    /// The policy's description of these credentials.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// `"none"`, `"bearer"`, `"jwt"` or `"oauth2"`.
    pub fn kind(&self) -> &'static str {
        match self.auth {
            Auth::None => "none",
            Auth::Bearer { .. } => "bearer",
            Auth::Jwt { .. } => "jwt",
            Auth::OAuth2 { .. } => "oauth2",
        }
    }

    /// The resolved credentials, reading the secrets on the first call (which may block briefly
    /// on a file read). Later calls return the same value or the same error.
    pub fn resolve(&self) -> Result<&Resolved, AuthError> {
        self.resolved
            .get_or_init(|| resolve_auth(&self.auth))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl From<&Auth> for Credentials {
    fn from(auth: &Auth) -> Self {
        Credentials::new(auth)
    }
}

fn resolve_auth(auth: &Auth) -> Result<Resolved, AuthError> {
    Ok(match auth {
        Auth::None => Resolved::None,
        Auth::Bearer { keys } => {
            Resolved::Bearer(keys.iter().map(resolve).collect::<Result<_, _>>()?)
        }
        Auth::Jwt {
            id,
            secret,
            ttl,
            refresh_before,
        } => Resolved::Jwt(JwtMinter::new(
            resolve(id)?,
            resolve(secret)?,
            *ttl,
            *refresh_before,
        )),
        Auth::OAuth2 {
            token_url,
            client_id,
            client_secret,
            placement,
        } => Resolved::OAuth2(OAuth2Client {
            cache: TokenCache::new(),
            token_url: token_url.clone(),
            client_id: resolve(client_id)?,
            client_secret: resolve(client_secret)?,
            placement: *placement,
        }),
    })
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Credentials");
        d.field("kind", &self.kind());
        match &self.auth {
            Auth::None => {}
            Auth::Bearer { keys } => {
                d.field("keys", keys);
            }
            Auth::Jwt {
                id,
                secret,
                ttl,
                refresh_before,
            } => {
                d.field("id", id)
                    .field("secret", secret)
                    .field("ttl", ttl)
                    .field("refresh_before", refresh_before);
            }
            Auth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                placement,
            } => {
                d.field("token_url", token_url)
                    .field("client_id", client_id)
                    .field("client_secret", client_secret)
                    .field("placement", placement);
            }
        }
        match self.resolved.get() {
            None => d.field("state", &"unresolved"),
            Some(Ok(_)) => d.field("state", &"resolved"),
            Some(Err(e)) => d.field("error", &e.to_string()),
        };
        d.finish()
    }
}

/// The names of the secrets `auth` refers to, for messages (`env:NAME`, `file:PATH`).
///
/// ```
/// use tollgate::auth::secret_refs;
/// use tollgate::policy::{Auth, SecretRef};
///
/// let auth = Auth::Bearer { keys: vec![SecretRef::Env("A".into()), SecretRef::Env("B".into())] };
/// let names: Vec<String> = secret_refs(&auth).iter().map(|r| r.to_string()).collect();
/// assert_eq!(names, ["env:A", "env:B"]);
/// ```
pub fn secret_refs(auth: &Auth) -> Vec<&SecretRef> {
    match auth {
        Auth::None => Vec::new(),
        Auth::Bearer { keys } => keys.iter().collect(),
        Auth::Jwt { id, secret, .. } => vec![id, secret],
        Auth::OAuth2 {
            client_id,
            client_secret,
            ..
        } => vec![client_id, client_secret],
    }
}
