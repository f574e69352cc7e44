//! What a host tells the engine about a call, and what the engine estimates it will cost.

use crate::bytes_eq::bytes_eq;
use crate::money::Money;
use crate::policy::{Policy, ScopeDim};
use std::collections::HashMap;

use crate::tokens::{self, ModelInfo, ModelTable, Price};

use std::time::Duration;

use super::deny::{Denial, DenyReason};
use super::route::Attempt;

/// The prompt of a call, in whichever form the host has it.
#[derive(Debug, Clone, Copy)]
pub enum Prompt<'a> {
    /// Prompt tokens, already counted by the host.
    Tokens(u64),
    /// Plain prompt text, counted with the model's tokenizer.
    Text(&'a str),
    /// An OpenAI chat-completions request body; messages, tools and `max_tokens` /
    /// `max_completion_tokens` are read from it.
    Request(&'a serde_json::Value),
}

/// One call to be admitted: who makes it, to which model, and how big it is.
///
/// Borrowed fields keep admission allocation-free.
///
/// ```
/// use tollgate::{Call, Prompt};
/// let call = Call::new("gpt-4o").tenant("acme").prompt(Prompt::Tokens(120)).max_tokens(256);
/// assert_eq!(call.tenant, "acme");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// Calling tenant (`scope = ["tenant"]`).
    pub tenant: &'a str,
    /// Requested model.
    pub model: &'a str,
    /// Upstream the call goes to, if the host knows it.
    pub upstream: &'a str,
    /// API key name (or key-pool member) the call uses.
    pub key: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Queue priority: higher goes first among waiting calls (default 0).
    pub priority: i16,
    /// The prompt.
    pub prompt: Prompt<'a>,
    /// Completion allowance; when `None`, the request's own `max_tokens` /
    /// `max_completion_tokens`, else the policy's `defaults.max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// Time the whole call (every attempt) may take, from its first admission; no retry is
    /// offered that could not finish before it.
    pub deadline: Option<Duration>,
    /// The state from the previous attempt's [`crate::Verdict::Retry`], when this is a retry.
    pub attempt: Option<&'a Attempt>,
}

impl<'a> Call<'a> {
    /// A call to `model` with an empty prompt and default everything else.
    pub fn new(model: &'a str) -> Call<'a> {
        Call {
            tenant: "",
            model,
            upstream: "",
            key: "",
            route: "",
            priority: 0,
            prompt: Prompt::Tokens(0),
            max_tokens: None,
            deadline: None,
            attempt: None,
        }
    }

    /// Sets the tenant.
    pub fn tenant(mut self, tenant: &'a str) -> Self {
        self.tenant = tenant;
        self
    }

    /// Sets the upstream.
    pub fn upstream(mut self, upstream: &'a str) -> Self {
        self.upstream = upstream;
        self
    }

    /// Sets the key name.
    pub fn key(mut self, key: &'a str) -> Self {
        self.key = key;
        self
    }

    /// Sets the route.
    pub fn route(mut self, route: &'a str) -> Self {
        self.route = route;
        self
    }

    /// Sets the queue priority.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the prompt.
    pub fn prompt(mut self, prompt: Prompt<'a>) -> Self {
        self.prompt = prompt;
        self
    }

    /// Sets the completion allowance.
    pub fn max_tokens(mut self, max_tokens: u64) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Sets the deadline of the whole call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Marks this as the retry described by `attempt` (from [`crate::Verdict::Retry`]).
    pub fn attempt(mut self, attempt: &'a Attempt) -> Self {
        self.attempt = Some(attempt);
        self
    }

    pub(crate) fn view(&self) -> CallView<'_> {
        CallView {
            tenant: self.tenant,
            model: self.model,
            upstream: self.upstream,
            key: self.key,
            route: self.route,
            priority: self.priority,
        }
    }
}

/// The identifying part of a call, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallView<'a> {
    pub tenant: &'a str,
    pub model: &'a str,
    pub upstream: &'a str,
    pub key: &'a str,
    pub route: &'a str,
    pub priority: i16,
}

impl<'a> CallView<'a> {
    #[inline]
    pub(crate) fn field(&self, dim: ScopeDim) -> &'a str {
        match dim {
            ScopeDim::Tenant => self.tenant,
            ScopeDim::Model => self.model,
            ScopeDim::Upstream => self.upstream,
            ScopeDim::Key => self.key,
            ScopeDim::Route => self.route,
        }
    }
}

/// The identifying part of a call, owned (for calls that wait).
#[derive(Debug, Clone)]
pub(crate) struct OwnedCall {
    tenant: String,
    model: String,
    upstream: String,
    key: String,
    route: String,
    priority: i16,
}

impl OwnedCall {
    pub(crate) fn from_view(v: CallView<'_>) -> OwnedCall {
        OwnedCall {
            tenant: v.tenant.to_owned(),
            model: v.model.to_owned(),
            upstream: v.upstream.to_owned(),
            key: v.key.to_owned(),
            route: v.route.to_owned(),
            priority: v.priority,
        }
    }

    pub(crate) fn view(&self) -> CallView<'_> {
        CallView {
            tenant: &self.tenant,
            model: &self.model,
            upstream: &self.upstream,
            key: &self.key,
            route: &self.route,
            priority: self.priority,
        }
    }
}

/// A call's prompt, counted once (with the requested model's tokenizer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Counted {
    pub prompt_tokens: u64,
    /// Completion allowance the call or its request asked for.
    pub explicit_allowance: Option<u64>,
    pub exact: bool,
}

/// What admission reserves for a call on one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Demand {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt plus completion allowance.
    pub tokens: u64,
    /// Estimated cost in nano-units of money (0 when the price is unknown).
    pub spend: Money,
    pub price: Option<Price>,
    /// Whether the prompt count is exact.
    pub exact: bool,
}

/// Counts a call's prompt.
pub(crate) fn count(models: &ModelTable, call: &Call<'_>) -> Result<Counted, Denial> {
    let (prompt_tokens, request_allowance, exact) = match call.prompt {
        Prompt::Tokens(n) => (n, None, true),
        Prompt::Text(text) => {
            let c = tokens::count_text(models, call.model, text);
            (c.tokens, None, c.exact)
        }
        Prompt::Request(body) => match tokens::count_chat(models, call.model, body) {
            Ok(e) => (e.prompt_tokens, e.completion_allowance, e.exact),
            Err(e) => {
                return Err(Denial::new(DenyReason::InvalidRequest {
                    message: e.to_string(),
                }));
            }
        },
    };
    Ok(Counted {
        prompt_tokens,
        explicit_allowance: call.max_tokens.or(request_allowance),
        exact,
    })
}

/// What a counted call reserves on `model`; refuses calls that can never succeed there.
/// Model facts admission needs, memoised per policy so the hot path does one cheap hash probe
/// instead of the table's name resolution (prefixes, dated suffixes).
#[derive(Debug)]
pub(crate) struct ModelMemo {
    /// Unique per memo (per compiled policy), so a thread's last answer is never reused across
    /// reloads.
    id: u64,
    map: arc_swap::ArcSwap<HashMap<Box<str>, Option<ModelInfo>, BuildFnv>>,
}

impl Default for ModelMemo {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        ModelMemo {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            map: Default::default(),
        }
    }
}

/// Longest model name the per-thread memo keeps.
const LAST_NAME: usize = 48;

/// Each thread's last model lookup: most callers ask about the same model over and over.
#[derive(Clone, Copy)]
struct Last {
    memo: u64,
    len: usize,
    name: [u8; LAST_NAME],
    info: Option<ModelInfo>,
}

thread_local! {
    static LAST: std::cell::Cell<Last> = const {
        std::cell::Cell::new(Last { memo: 0, len: 0, name: [0; LAST_NAME], info: None })
    };
}

/// Most distinct model names memoised; past it, lookups go to the table every time.
const MEMO_CAPACITY: usize = 4096;

impl ModelMemo {
    pub(crate) fn get(&self, models: &ModelTable, model: &str) -> Option<ModelInfo> {
        let bytes = model.as_bytes();
        let last = LAST.with(|l| l.get());
        if last.memo == self.id
            && last
                .name
                .get(..last.len)
                .is_some_and(|name| bytes_eq(name, bytes))
        {
            return last.info;
        }
        let info = self.lookup(models, model);
        if bytes.len() <= LAST_NAME {
            let mut name = [0; LAST_NAME];
            name[..bytes.len()].copy_from_slice(bytes);
            LAST.with(|l| {
                l.set(Last {
                    memo: self.id,
                    len: bytes.len(),
                    name,
                    info,
                })
            });
        }
        info
    }

    fn lookup(&self, models: &ModelTable, model: &str) -> Option<ModelInfo> {
        if let Some(info) = self.map.load().get(model) {
            return *info;
        }
        let info = models.lookup(model);
        if self.map.load().len() < MEMO_CAPACITY {
            self.map.rcu(|m| {
                let mut m = HashMap::clone(m);
                m.insert(Box::from(model), info);
                m
            });
        }
        info
    }
}

/// FNV-1a: a few nanoseconds for short model names (no DoS concern: names come from the host).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BuildFnv;

/// The FNV-1a hasher state.
pub(crate) struct Fnv(u64);

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub(crate) fn price(
    policy: &Policy,
    models: &ModelTable,
    memo: &ModelMemo,
    counted: &Counted,
    model: &str,
) -> Result<Demand, Denial> {
    let Counted {
        prompt_tokens,
        explicit_allowance: explicit,
        exact,
    } = *counted;
    let info = memo.get(models, model);
    let window = info.and_then(|i| i.context_window);
    let mut completion_tokens = explicit.unwrap_or(policy.defaults.max_completion_tokens);
    if let Some(window) = window
        && policy.defaults.enforce_context_window
    {
        let over = match explicit {
            // An explicit allowance must fit beside the prompt, or the API refuses the call.
            Some(c) => prompt_tokens.saturating_add(c) > window,
            // The default allowance shrinks to what the window leaves; the prompt must fit.
            None => {
                completion_tokens = completion_tokens.min(window.saturating_sub(prompt_tokens));
                prompt_tokens >= window
            }
        };
        if over {
            return Err(Denial::new(DenyReason::ContextWindow {
                model: model.to_owned(),
                prompt_tokens,
                completion_tokens: explicit.unwrap_or(0),
                context_window: window,
            }));
        }
    }
    let price = info.and_then(|i| i.price);
    let spend = price
        .map(|p| Money::from_units(tokens::estimate_cost(&p, prompt_tokens, completion_tokens)))
        .unwrap_or(Money::ZERO);
    Ok(Demand {
        prompt_tokens,
        completion_tokens,
        tokens: prompt_tokens.saturating_add(completion_tokens),
        spend,
        price,
        exact,
    })
}
