//! Types shared with the policy: encodings and prices.

use std::fmt;

/// An exact BPE vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `o200k_base` (gpt-4o, gpt-4.1, o1, o3, o4 families).
    O200kBase,
    /// `cl100k_base` (gpt-4, gpt-3.5-turbo, text-embedding-3).
    Cl100kBase,
}

impl Encoding {
    /// The name used by tiktoken and in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    /// Parses `o200k_base` or `cl100k_base`.
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "o200k_base" => Some(Encoding::O200kBase),
            "cl100k_base" => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Prices per 1M tokens, in the currency of the price table (USD for the bundled one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: f64,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_input: f64,
    /// Completion tokens, reasoning tokens included.
    pub output: f64,
}
