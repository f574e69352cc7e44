//! `tollgate check`: parse and validate a policy, list every problem or summarise it.

use std::path::Path;

use tollgate::{Policy, PolicyError, PolicyErrors};

use crate::exit;

/// Checks the policy at `path`: prints its summary (exit 0) or every error on stderr (exit 1).
pub(crate) fn run(path: &Path) -> u8 {
    if let Some(message) = missing_file(path) {
        eprintln!("error: {message}");
        return exit::FAILED;
    }
    match Policy::from_file(path) {
        Ok(policy) => {
            print!("{}", policy.summary());
            exit::OK
        }
        Err(errors) => {
            report_errors(path, &errors);
            eprintln!(
                "{}: refused; fix the {} above and run `tollgate check` again",
                path.display(),
                plural(errors.errors.len(), "error")
            );
            exit::FAILED
        }
    }
}

/// A clear message when the policy file cannot be opened at all.
pub(crate) fn missing_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(format!(
            "{} is a directory; give the policy file itself",
            path.display()
        )),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "policy file {} does not exist; check the path (examples/policy.toml is an annotated \
             example)",
            path.display()
        )),
        Err(e) => Some(format!("cannot read policy file {}: {e}", path.display())),
    }
}

/// Prints every error as `FILE:LINE:COLUMN: FIELD: MESSAGE` on stderr, one per line.
pub(crate) fn report_errors(path: &Path, errors: &PolicyErrors) {
    for e in &errors.errors {
        eprintln!("{}", located(path, e));
    }
}

/// One error in compiler style: `policy.toml:14:20: budget[2].tokens_per_minute: ...`.
pub(crate) fn located(path: &Path, e: &PolicyError) -> String {
    let mut s = path.display().to_string();
    if let Some(line) = e.line {
        s.push_str(&format!(":{line}"));
        if let Some(col) = e.column {
            s.push_str(&format!(":{col}"));
        }
    }
    s.push_str(": ");
    if !e.path.is_empty() {
        s.push_str(&e.path);
        s.push_str(": ");
    }
    s.push_str(&e.message);
    s
}

/// `1 error`, `3 errors`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_formats() {
        let e = PolicyError {
            path: "budget[0].scope".into(),
            line: Some(3),
            column: Some(9),
            message: "bad".into(),
        };
        assert_eq!(
            located(Path::new("p.toml"), &e),
            "p.toml:3:9: budget[0].scope: bad"
        );
        let e = PolicyError {
            path: String::new(),
            line: None,
            column: None,
            message: "x".into(),
        };
        assert_eq!(located(Path::new("p.toml"), &e), "p.toml: x");
    }
}
