//! The error type of the credentials module.

use std::path::PathBuf;

/// Why credentials could not be produced.
///
/// Every message says what to do, names the variable, the file or the token endpoint's error code,
/// and never contains a secret (no key, signing secret, client secret or access token, and no raw
/// response body). Errors are [`Clone`] so a failed resolution or a failed shared token refresh
/// can be handed to every caller that waited on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// An `env:NAME` secret whose variable is not set.
    #[error(
        "environment variable {name} is not set; set it to the secret, or change `env:{name}` in the policy"
    )]
    EnvMissing {
        /// The variable.
        name: String,
    },
    /// An `env:NAME` secret whose variable is set but empty.
    #[error(
        "environment variable {name} is empty; set it to the secret, or change `env:{name}` in the policy"
    )]
    EnvEmpty {
        /// The variable.
        name: String,
    },
    /// An `env:NAME` secret whose value is not valid Unicode.
    #[error("environment variable {name} is not valid Unicode; set it to the secret as plain text")]
    EnvNotUnicode {
        /// The variable.
        name: String,
    },
    /// A `file:PATH` secret that could not be read.
    #[error(
        "cannot read secret file {}: {reason}; check that it exists and that this process may read it, or change `file:{}` in the policy",
        path.display(),
        path.display()
    )]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// A `file:PATH` secret that is empty (after removing one trailing newline).
    #[error("secret file {} is empty; write the secret into it", path.display())]
    FileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A `file:PATH` secret that is not UTF-8 text.
    #[error(
        "secret file {} is not UTF-8 text; write the secret into it as plain text",
        path.display()
    )]
    FileNotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// The OAuth2 token endpoint refused the request with an error body
    /// (`{"error": ..., "error_description": ...}`).
    #[error(
        "the token endpoint refused the client credentials (HTTP {status}, error `{code}`{}); check client_id, client_secret and token_url in the policy",
        if description.is_empty() { String::new() } else { format!(": {description}") }
    )]
    TokenRejected {
        /// HTTP status of the token response.
        status: u16,
        /// The `error` field, such as `invalid_client`.
        code: String,
        /// The `error_description` field (shortened, control characters removed), or empty.
        description: String,
    },
    /// The token endpoint answered with a non-success status and no recognisable error body.
    #[error(
        "the token endpoint answered HTTP {status} without an OAuth2 error body; check token_url in the policy"
    )]
    TokenStatus {
        /// HTTP status of the token response.
        status: u16,
    },
    /// The token response could not be understood.
    #[error(
        "the token endpoint's response (HTTP {status}) is unusable: {problem}; check that token_url is an OAuth2 client-credentials endpoint"
    )]
    TokenResponse {
        /// HTTP status of the token response.
        status: u16,
        /// What is wrong, without any content of the body.
        problem: String,
    },
    /// The token request itself failed (connection, timeout...), as reported by the injected fetch.
    #[error("the token request failed: {message}; check the network path to token_url and retry")]
    TokenFetch {
        /// What went wrong; must not contain secrets.
        message: String,
    },
}
