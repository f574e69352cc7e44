//! tollgate: a client-side policy engine for LLM API calls.
//!
//! Link it in-process and ask it, before each call to an OpenAI-compatible chat API, whether the
//! call may go now, later or never; tell it afterwards what the call used. Rules come from one
//! policy file ([`Policy`]), reloaded while the host runs ([`Engine::reload`], [`Engine::watch`]).
//!
//! - [`policy`]: the policy file — schema, validation with located errors, compiled form.
//! - [`budget`]: GCRA rate and spend limits with reserve / commit / refund, concurrency gates,
//!   keyed state bounded by an LRU, priority queues.
//! - [`tokens`]: exact BPE counts, a CJK-aware estimate, chat overhead, usage, prices and cost.
//! - [`Engine`]: the decide API — [`Engine::admit`], [`Engine::settle`], [`Engine::acquire`].
//! - [`transport`], [`auth`], [`store`]: the HTTP client, credentials, the shared Redis store.
//! - [`Engine::send`] / [`Engine::stream`]: the call API (tollgate makes the HTTP call).
//! - [`batch`]: many calls through the engine with a durable journal; [`conversation`]:
//!   conversations kept within the context window.
//!
//! The C ABI (`libtollgate`, crate `tollgate-capi`), the `tollgate` command and `tollgate serve`
//! (crates `tollgate-cli`, `tollgate-serve`) and the Node.js binding are built on this crate.
//!
//! ```
//! use tollgate::{Call, Decision, Engine, Outcome, Prompt};
//!
//! let engine = Engine::from_text(r#"
//!     version = 1
//!     [[budget]]
//!     name = "per-tenant"
//!     scope = ["tenant"]
//!     requests_per_minute = 60
//!     tokens_per_minute = 10000
//!     concurrency = 4
//! "#).expect("valid policy");
//!
//! let call = Call::new("gpt-4o").tenant("acme").prompt(Prompt::Text("Hello!")).max_tokens(100);
//! match engine.admit(&call) {
//!     Decision::Go(permit) => {
//!         // send the request, then:
//!         engine.settle(permit, &Outcome::status(200));
//!     }
//!     Decision::Wait(hint) => println!("try again in {:?}", hint.after),
//!     Decision::Deny(denial) => println!("refused: {denial}"),
//! }
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod batch;
pub mod budget;
mod bytes_eq;
pub mod cache;
pub mod clock;
pub mod conversation;
pub mod dialect;
mod engine;
pub mod metrics;
pub mod money;
pub mod policy;
pub mod retry;
pub mod rng;
pub mod store;
pub mod tokens;
pub mod transport;

pub use budget::BudgetStats;
pub use engine::{
    Attempt, AttemptRecord, CacheFill, CacheLookup, Call, CallError, ChatRequest, ChatResponse,
    ChatStream, Decision, Denial, DenyReason, Engine, ErrorAnswer, FlightResult, GiveUp, KeyUsage,
    Outcome, Permit, Probe, Prompt, ReloadReport, Settlement, Source, TargetHealthInfo, TargetRef,
    Verdict, WaitHint, WaitPoll, Waiter, WatchEvent, Watcher,
};
pub use policy::{Policy, PolicyError, PolicyErrors};
