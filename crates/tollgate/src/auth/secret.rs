//! Secret values and how a [`SecretRef`] from the policy is resolved into one.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use super::AuthError;
use crate::policy::SecretRef;

/// A secret value (API key, signing secret, client secret, access token).
///
/// Its `Debug` and `Display` print `Secret(<redacted>)`, never the value, so a secret can sit
/// inside any structure that is logged. Use [`Secret::expose`] at the one place that needs the
/// text (a header, a signature). On drop the bytes are overwritten with zeros (best effort: copies
/// made by [`Clone`] or by callers of [`Secret::expose`] are their own).
///
/// ```
/// use tollgate::auth::Secret;
///
/// let key = Secret::new("sk-live-1234");
/// assert_eq!(format!("{key:?}"), "Secret(<redacted>)");
/// assert_eq!(key.to_string(), "Secret(<redacted>)");
/// assert_eq!(key.expose(), "sk-live-1234");
/// ```
#[derive(Clone)]
pub struct Secret {
    value: String,
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
        }
    }

    /// The secret text. Do not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret { value }
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.value).into_bytes();
        bytes.fill(0);
        // Keep the zeroing from being optimised away as a dead store.
        std::hint::black_box(&bytes);
    }
}

/// Reads the secret a [`SecretRef`] points at.
///
/// - `env:NAME`: the variable must be set, valid Unicode and non-empty. Taken as is.
/// - `file:PATH`: the file must be readable, UTF-8 and non-empty once one trailing newline
///   (`\n` or `\r\n`) is removed.
///
/// Errors name the variable or the path, never a value.
///
/// ```
/// use tollgate::auth::{resolve, AuthError};
/// use tollgate::policy::SecretRef;
///
/// let err = resolve(&SecretRef::Env("TOLLGATE_DOC_SURELY_UNSET".into())).unwrap_err();
/// assert!(matches!(err, AuthError::EnvMissing { .. }));
/// assert!(err.to_string().contains("TOLLGATE_DOC_SURELY_UNSET"));
/// ```
pub fn resolve(r: &SecretRef) -> Result<Secret, AuthError> {
    resolve_with(r, |name| std::env::var_os(name))
}

/// [`resolve`] with an injected environment, so every branch is testable without `set_var`.
pub(crate) fn resolve_with(
    r: &SecretRef,
    env: impl FnOnce(&str) -> Option<OsString>,
) -> Result<Secret, AuthError> {
    match r {
        SecretRef::Env(name) => {
            let raw = env(name).ok_or_else(|| AuthError::EnvMissing { name: name.clone() })?;
            let value = raw
                .into_string()
                .map_err(|_| AuthError::EnvNotUnicode { name: name.clone() })?;
            if value.is_empty() {
                return Err(AuthError::EnvEmpty { name: name.clone() });
            }
            Ok(Secret::from(value))
        }
        SecretRef::File(path) => read_file(path),
    }
}

fn read_file(path: &Path) -> Result<Secret, AuthError> {
    let bytes = std::fs::read(path).map_err(|e| AuthError::FileUnreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut value = String::from_utf8(bytes).map_err(|e| {
        // Wipe what was read before giving up on it.
        let mut bytes = e.into_bytes();
        bytes.fill(0);
        std::hint::black_box(&bytes);
        AuthError::FileNotUtf8 {
            path: path.to_path_buf(),
        }
    })?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    let secret = Secret::from(value);
    if secret.expose().is_empty() {
        return Err(AuthError::FileEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SECRET: &str = "sk-SECRET-9f8e7d";

    fn env_ref(name: &str) -> SecretRef {
        SecretRef::Env(name.to_string())
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tollgate-auth-unit-{}-{tag}", std::process::id()))
    }

    #[test]
    fn env_value_is_taken_as_is() {
        let s = resolve_with(&env_ref("K"), |_| Some(format!("{SECRET}\n").into())).unwrap();
        assert_eq!(s.expose(), format!("{SECRET}\n"));
    }

    #[test]
    fn env_missing_empty_and_not_unicode_name_the_variable() {
        let missing = resolve_with(&env_ref("MY_KEY"), |_| None).unwrap_err();
        assert!(matches!(missing, AuthError::EnvMissing { .. }));
        let empty = resolve_with(&env_ref("MY_KEY"), |_| Some(OsString::new())).unwrap_err();
        assert!(matches!(empty, AuthError::EnvEmpty { .. }));
        for err in [missing, empty] {
            assert!(err.to_string().contains("MY_KEY"), "{err}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let bad = resolve_with(&env_ref("MY_KEY"), |_| {
                Some(OsString::from_vec(vec![b's', 0xff, b'k']))
            })
            .unwrap_err();
            assert!(matches!(bad, AuthError::EnvNotUnicode { .. }));
            assert!(bad.to_string().contains("MY_KEY"));
        }
    }

    #[test]
    fn file_trims_exactly_one_trailing_newline() {
        let path = temp_path("trim");
        for (content, want) in [
            (format!("{SECRET}\n"), SECRET.to_string()),
            (format!("{SECRET}\r\n"), SECRET.to_string()),
            (format!("{SECRET}\n\n"), format!("{SECRET}\n")),
            (SECRET.to_string(), SECRET.to_string()),
            (format!(" {SECRET} "), format!(" {SECRET} ")),
        ] {
            std::fs::write(&path, &content).unwrap();
            let s = resolve(&SecretRef::File(path.clone())).unwrap();
            assert_eq!(s.expose(), want, "content {content:?}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn file_errors_name_the_path() {
        let path = temp_path("errors");
        let _ = std::fs::remove_file(&path);
        let missing = resolve(&SecretRef::File(path.clone())).unwrap_err();
        assert!(matches!(missing, AuthError::FileUnreadable { .. }));

        std::fs::write(&path, "\n").unwrap();
        let empty = resolve(&SecretRef::File(path.clone())).unwrap_err();
        assert!(matches!(empty, AuthError::FileEmpty { .. }));

        std::fs::write(&path, [0xffu8, 0xfe, b'x']).unwrap();
        let not_utf8 = resolve(&SecretRef::File(path.clone())).unwrap_err();
        assert!(matches!(not_utf8, AuthError::FileNotUtf8 { .. }));
        std::fs::remove_file(&path).unwrap();

        let dir = resolve(&SecretRef::File(std::env::temp_dir())).unwrap_err();
        assert!(matches!(dir, AuthError::FileUnreadable { .. }));

        for err in [missing, empty, not_utf8] {
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new(SECRET);
        for text in [
            format!("{s:?}"),
            format!("{s}"),
            format!("{s:#?}"),
            format!("{:?}", Some(s.clone())),
        ] {
            assert!(!text.contains(SECRET), "{text}");
        }
    }
}
