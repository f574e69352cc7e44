//! Errors of the `tokens` module.

use thiserror::Error;

/// An input that token accounting cannot read. Every message names the offending field and says
/// what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The chat request body is not a JSON object.
    #[error(
        "the chat request must be a JSON object, found {found}; send the chat-completions body itself"
    )]
    RequestNotObject {
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// The chat request has no `messages` field.
    #[error(
        "the chat request has no \"messages\" field; add \"messages\": [ {{\"role\": \"user\", \"content\": \"...\"}} ]"
    )]
    MissingMessages,
    /// `messages` is present but not an array.
    #[error("\"messages\" must be an array of message objects, found {found}")]
    MessagesNotArray {
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// One entry of `messages` is not an object.
    #[error(
        "messages[{index}] must be an object like {{\"role\": \"user\", \"content\": \"...\"}}, found {found}"
    )]
    MessageNotObject {
        /// Position of the entry in `messages`.
        index: usize,
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// A request field that must be a non-negative integer is not one.
    #[error("\"{field}\" must be a non-negative integer (or absent), found {value}")]
    InvalidRequestField {
        /// The field name, e.g. `max_tokens`.
        field: &'static str,
        /// The offending value, as JSON text.
        value: String,
    },
    /// A usage object is not an object.
    #[error("\"usage\" must be a JSON object, found {found}")]
    UsageNotObject {
        /// The JSON type that was found instead.
        found: &'static str,
    },
    /// A usage count is missing its integer form (negative, fractional, string, ...).
    #[error("usage field \"{field}\" must be a non-negative integer, found {value}")]
    InvalidUsageField {
        /// Path of the field, e.g. `prompt_tokens_details.cached_tokens`.
        field: &'static str,
        /// The offending value, as JSON text.
        value: String,
    },
    /// A usage count is larger than the total it is part of.
    #[error(
        "usage field \"{field}\" ({part}) exceeds \"{total_field}\" ({total}); the provider's usage is inconsistent"
    )]
    InconsistentUsage {
        /// The part, e.g. `prompt_tokens_details.cached_tokens`.
        field: &'static str,
        /// Its value.
        part: u64,
        /// The field it is part of, e.g. `prompt_tokens`.
        total_field: &'static str,
        /// That field's value.
        total: u64,
    },
}

/// The JSON type name of a value, for error messages.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
