//! The policy file: schema, validation with located errors, and the compiled form.
//!
//! A policy is read from TOML or JSON (the same schema), validated as a whole, and either accepted
//! or refused with every problem listed. See `examples/policy.toml` for an annotated example.

mod model;
mod parse;

pub use model::*;
pub use parse::{Format, PolicyError, PolicyErrors};
