//! Fitting a conversation into the context window, by the exact count admission uses.

use serde_json::{Value, json};

use crate::tokens::{ModelTable, TokenError, count_chat};

/// One message of the history, oldest first, as sent (`role` is `user` or `assistant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn<'a> {
    /// `user` or `assistant`.
    pub role: &'a str,
    /// The message's text.
    pub text: &'a str,
}

/// The messages of a request that fits, and what was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Trimmed {
    /// The request's `messages`: the system message (if any), the kept history, the new user
    /// message.
    pub messages: Vec<Value>,
    /// The prompt count of those messages, as [`count_chat`] gives it for admission (message
    /// overhead and reply priming included).
    pub prompt_tokens: u64,
    /// History messages kept (the newest ones).
    pub kept: usize,
    /// History messages left out (the oldest ones).
    pub dropped: usize,
    /// Whether the count is exact (the model has a BPE vocabulary) or an estimate.
    pub exact: bool,
}

/// Why a conversation cannot be fitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrimError {
    /// The system and the new user message alone need more than the budget.
    #[error(
        "the system message and the new user message alone need {needed} prompt tokens, more \
         than the {budget} the window leaves ({window} tokens of context minus {reserved} \
         reserved for the answer); shorten the message or the system message"
    )]
    TooLong {
        /// Prompt tokens of the system and user messages (overhead included).
        needed: u64,
        /// The prompt budget: `window - reserved`.
        budget: u64,
        /// The model's context window (`max_model_tokens`).
        window: u64,
        /// Tokens reserved for the answer (`max_response_tokens`).
        reserved: u64,
    },
    /// The answer's allowance does not leave room for any prompt.
    #[error(
        "max_response_tokens ({reserved}) leaves no room for a prompt in a window of {window} tokens"
    )]
    NoRoom {
        /// The model's context window.
        window: u64,
        /// Tokens reserved for the answer.
        reserved: u64,
    },
    /// The messages could not be counted.
    #[error("cannot count the prompt: {0}")]
    Count(#[from] TokenError),
}

fn message(role: &str, text: &str) -> Value {
    json!({"role": role, "content": text})
}

/// Keeps the system message and the new user message, then as many of the newest history
/// turns as fit in `window - reserved` prompt tokens, counted by [`count_chat`] for `model` with
/// `table` — the count the engine's admission makes of the same request. Each message is
/// counted once (the count is a sum over messages plus the reply priming), so the cost is
/// linear in the history; the final request is counted again as a whole to be sure.
///
/// ```
/// use tollgate::conversation::{Turn, trim};
/// use tollgate::tokens::ModelTable;
/// let long = "first question, rather long ".repeat(20);
/// let history = [
///     Turn { role: "user", text: &long },
///     Turn { role: "assistant", text: "first answer" },
/// ];
/// let t = trim(ModelTable::bundled(), "gpt-4o", Some("be brief"), &history, "second question", 130, 50).unwrap();
/// assert_eq!((t.kept, t.dropped), (1, 1)); // the long first question no longer fits
/// assert!(t.prompt_tokens <= 80);
/// ```
pub fn trim(
    table: &ModelTable,
    model: &str,
    system: Option<&str>,
    history: &[Turn<'_>],
    user: &str,
    window: u64,
    reserved: u64,
) -> Result<Trimmed, TrimError> {
    let Some(budget) = window.checked_sub(reserved).filter(|b| *b > 0) else {
        return Err(TrimError::NoRoom { window, reserved });
    };
    let count = |messages: Vec<Value>| -> Result<(u64, bool), TokenError> {
        let p = count_chat(table, model, &json!({ "messages": messages }))?;
        Ok((p.prompt_tokens, p.exact))
    };
    let (empty, exact) = count(vec![])?;
    let one = |role: &str, text: &str| -> Result<u64, TokenError> {
        Ok(count(vec![message(role, text)])?.0 - empty)
    };
    let system_tokens = match system {
        Some(s) => one("system", s)?,
        None => 0,
    };
    let needed = empty + system_tokens + one("user", user)?;
    if needed > budget {
        return Err(TrimError::TooLong {
            needed,
            budget,
            window,
            reserved,
        });
    }
    let mut total = needed;
    let mut first_kept = history.len();
    for (i, turn) in history.iter().enumerate().rev() {
        let t = one(turn.role, turn.text)?;
        if total + t > budget {
            break;
        }
        total += t;
        first_kept = i;
    }
    loop {
        let mut messages = Vec::with_capacity(history.len() - first_kept + 2);
        if let Some(s) = system {
            messages.push(message("system", s));
        }
        messages.extend(
            history[first_kept..]
                .iter()
                .map(|t| message(t.role, t.text)),
        );
        messages.push(message("user", user));
        // The whole request, counted as admission will count it.
        let (prompt_tokens, _) = count(messages.clone())?;
        if prompt_tokens <= budget || first_kept == history.len() {
            return Ok(Trimmed {
                messages,
                prompt_tokens,
                kept: history.len() - first_kept,
                dropped: first_kept,
                exact,
            });
        }
        first_kept += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                (
                    role.to_owned(),
                    format!("message number {i} with some words"),
                )
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_turns_that_fit_and_counts_like_admission() {
        let table = ModelTable::bundled();
        let owned = turns(40);
        let history: Vec<Turn<'_>> = owned
            .iter()
            .map(|(r, t)| Turn { role: r, text: t })
            .collect();
        for window in [60, 100, 200, 400, 10_000] {
            let t = trim(table, "gpt-4o", Some("sys"), &history, "now", window, 20).unwrap();
            let body = json!({"model": "gpt-4o", "messages": t.messages});
            let admitted = count_chat(table, "", &body).unwrap().prompt_tokens;
            assert_eq!(t.prompt_tokens, admitted, "{window}");
            assert!(t.prompt_tokens <= window - 20, "{window}");
            assert_eq!(t.kept + t.dropped, 40);
            // One more (older) turn would not have fitted.
            if t.dropped > 0 {
                let mut more = vec![message("system", "sys")];
                more.extend(
                    history[t.dropped - 1..]
                        .iter()
                        .map(|h| message(h.role, h.text)),
                );
                more.push(message("user", "now"));
                let bigger = count_chat(table, "gpt-4o", &json!({"messages": more})).unwrap();
                assert!(bigger.prompt_tokens > window - 20, "{window}");
            }
            assert_eq!(t.messages[0]["role"], "system");
            assert_eq!(t.messages.last().unwrap()["content"], "now");
        }
    }

    #[test]
    fn system_and_user_alone_too_long_is_refused_with_both_numbers() {
        let long = "word ".repeat(500);
        let e = trim(
            ModelTable::bundled(),
            "gpt-4o",
            Some("sys"),
            &[],
            &long,
            300,
            100,
        )
        .unwrap_err();
        let TrimError::TooLong { needed, budget, .. } = e.clone() else {
            panic!("{e}")
        };
        assert!(needed > 200 && budget == 200, "{e}");
        assert!(e.to_string().contains(&needed.to_string()) && e.to_string().contains("200"));
        assert!(matches!(
            trim(ModelTable::bundled(), "gpt-4o", None, &[], "x", 100, 100),
            Err(TrimError::NoRoom { .. })
        ));
    }
}
