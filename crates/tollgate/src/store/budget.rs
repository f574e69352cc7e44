//! Budgets in Redis: the admission request and reply of [`super::scripts::ADMIT`], the
//! reconciliations of settlement, and [`RedisLimiter`], the same script offered directly with
//! go-redis/redis_rate's semantics.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::{RedisStore, Shared, StoreError, exec, fmt_us, give_back, scripts, take_owed};
use crate::policy::Redis;

/// One limit slot of a rate check: the slot number, its emission interval and burst tolerance,
/// and what this call takes, all in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateSlot {
    pub slot: u8,
    pub ei: f64,
    pub tau: f64,
    pub inc: f64,
}

/// What one admission asks of Redis: per key, a rate check or a concurrency gate.
#[derive(Debug, Default)]
pub(crate) struct AdmitRequest {
    pub keys: Vec<Arc<str>>,
    pub checks: Vec<Check>,
}

/// One key's check.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// A rate budget: room for `want` calls (a lease) or at least one.
    Rate {
        want: u32,
        slots: smallvec::SmallVec<[RateSlot; 4]>,
    },
    /// A concurrency gate of `max` slots held for `ttl_us` unless renewed, by a lease named
    /// `member`.
    Gate {
        max: u32,
        ttl_us: f64,
        member: Arc<str>,
    },
    /// Counts a gate's live leases, taking nothing.
    GatePeek,
}

/// What one key granted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Grant {
    /// Room for `calls` calls; each slot's TAT right after (the end of the charge, µs).
    Rate {
        calls: u32,
        ends: smallvec::SmallVec<[f64; 4]>,
    },
    /// A concurrency slot.
    Gate,
    /// Leases alive in a looked-at gate.
    Count(u64),
}

/// Redis's answer to an admission.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AdmitReply {
    /// Every check passed; the server's clock (µs) and the grant of each key.
    Granted { now: f64, grants: Vec<Grant> },
    /// A check failed; nothing was taken.
    Refused {
        /// Which key (index into the request).
        key: usize,
        /// Which slot of a rate check (`None`: a full gate).
        slot: Option<usize>,
        /// How long until the call fits (µs), for a rate check.
        wait: Option<f64>,
        /// How far the slot's TAT is ahead of now (µs).
        ahead: f64,
    },
}

/// A reconciliation of one slot: `delta` µs to charge (positive) or refund (negative) against
/// a charge that ended at `end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AdjustEntry {
    pub slot: u8,
    pub ei: f64,
    pub delta: f64,
    pub end: f64,
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d),
        _ => None,
    }
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "unexpected answer from the admission script: {what}"
    ))
}

impl AdmitRequest {
    fn add_to(&self, pipe: &mut redis::Pipeline) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(scripts::ADMIT.get_hash())
            .arg(self.keys.len());
        for k in &self.keys {
            cmd.arg(&**k);
        }
        for c in &self.checks {
            match c {
                Check::Rate { want, slots } => {
                    cmd.arg("r").arg(*want).arg(slots.len());
                    for s in slots {
                        cmd.arg(s.slot)
                            .arg(fmt_us(s.ei))
                            .arg(fmt_us(s.tau))
                            .arg(fmt_us(s.inc));
                    }
                }
                Check::Gate {
                    max,
                    ttl_us,
                    member,
                } => {
                    cmd.arg("c").arg(*max).arg(fmt_us(*ttl_us)).arg(&**member);
                }
                Check::GatePeek => {
                    cmd.arg("p");
                }
            }
        }
    }

    fn parse(&self, reply: &Value) -> Result<AdmitReply, StoreError> {
        let Value::Array(items) = reply else {
            return Err(malformed("not a list"));
        };
        let num = |i: usize| {
            items
                .get(i)
                .and_then(number)
                .ok_or_else(|| malformed("short"))
        };
        if num(0)? == 0.0 {
            let key = num(1)? as usize;
            let slot = num(2)? as usize;
            let wait = num(3)?;
            if key == 0 || key > self.keys.len() {
                return Err(malformed("key index out of range"));
            }
            return Ok(AdmitReply::Refused {
                key: key - 1,
                slot: slot.checked_sub(1),
                wait: (wait >= 0.0).then_some(wait),
                ahead: num(4)?,
            });
        }
        let now = num(1)?;
        let mut at = 2;
        let mut grants = Vec::with_capacity(self.checks.len());
        for c in &self.checks {
            match c {
                Check::Rate { slots, .. } => {
                    let calls = num(at)? as u32;
                    let ends = (0..slots.len())
                        .map(|s| num(at + 1 + s))
                        .collect::<Result<_, _>>()?;
                    at += 1 + slots.len();
                    grants.push(Grant::Rate { calls, ends });
                }
                Check::Gate { .. } => grants.push(Grant::Gate),
                Check::GatePeek => {
                    grants.push(Grant::Count(num(at)? as u64));
                    at += 1;
                }
            }
        }
        Ok(AdmitReply::Granted { now, grants })
    }
}

/// Sends what this process owes Redis, then the admission, in one round trip.
pub(crate) async fn admit(
    shared: Arc<Shared>,
    request: Arc<AdmitRequest>,
) -> Result<AdmitReply, StoreError> {
    let owed = take_owed(&shared);
    let mut pipe = redis::pipe();
    super::add_owed(&mut pipe, &owed, &shared.config.key_prefix);
    request.add_to(&mut pipe);
    match exec(&shared, &pipe).await {
        Ok(values) => {
            let last = values.last().ok_or_else(|| malformed("no reply"))?;
            request.parse(last)
        }
        Err(e) => {
            give_back(&shared, owed);
            Err(e)
        }
    }
}

impl RedisStore {
    /// Admits against Redis, blocking this thread for at most `op_timeout`.
    pub(crate) fn admit_blocking(
        &self,
        request: Arc<AdmitRequest>,
    ) -> Result<AdmitReply, StoreError> {
        self.block_on(admit(Arc::clone(&self.shared), request))
    }

    /// Admits against Redis from async code.
    pub(crate) async fn admit_async(
        &self,
        request: Arc<AdmitRequest>,
    ) -> Result<AdmitReply, StoreError> {
        self.run(admit(Arc::clone(&self.shared), request)).await
    }
}

/// A rate as go-redis/redis_rate writes it: `rate` events per `period`, bursting to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events per period.
    pub rate: u64,
    /// The period.
    pub period: Duration,
    /// Most events at once.
    pub burst: u64,
}

impl RateLimit {
    /// `rate` per second, burst `rate`.
    pub fn per_second(rate: u64) -> RateLimit {
        RateLimit {
            rate,
            period: Duration::from_secs(1),
            burst: rate,
        }
    }

    /// `rate` per minute, burst `rate`.
    pub fn per_minute(rate: u64) -> RateLimit {
        RateLimit {
            rate,
            period: Duration::from_secs(60),
            burst: rate,
        }
    }
}

/// The answer of [`RedisLimiter::allow_n`], as redis_rate's `Result`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateResult {
    /// Events allowed now (`n`, or 0 when refused or peeking with `n = 0`).
    pub allowed: u64,
    /// Events that would still be allowed right after.
    pub remaining: u64,
    /// When refused: how long until `n` events would be allowed.
    pub retry_after: Option<Duration>,
    /// How long until the key is back to its full burst.
    pub reset_after: Duration,
}

/// A GCRA rate limiter in Redis with go-redis/redis_rate's semantics, on the script tollgate's
/// Redis budgets use (server clock, atomic, one round trip). Budgets in a policy are the usual
/// way to use it; this is the same machinery for keys of your own.
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::store::StoreError> {
/// use tollgate::policy::Redis;
/// use tollgate::store::{RateLimit, RedisLimiter};
///
/// let limiter = RedisLimiter::connect(&Redis::default())?;
/// let r = limiter.allow_n("user:42", RateLimit::per_second(10), 1).await?;
/// assert_eq!((r.allowed, r.remaining), (1, 9));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisLimiter {
    store: Arc<RedisStore>,
}

impl RedisLimiter {
    /// Connects to the server of a `[redis]` section (waiting at most its `connect_timeout`;
    /// later calls fail with [`StoreError::Unavailable`] until the server answers).
    pub fn connect(config: &Redis) -> Result<RedisLimiter, StoreError> {
        super::client(config)?;
        Ok(RedisLimiter {
            store: RedisStore::connect(config)?,
        })
    }

    /// Takes `n` events from `key` if they fit; `n = 0` only looks.
    pub async fn allow_n(
        &self,
        key: &str,
        limit: RateLimit,
        n: u64,
    ) -> Result<RateResult, StoreError> {
        let (request, ei, tau) = self.request(key, limit, n)?;
        let reply = self.store.admit_async(Arc::clone(&request)).await?;
        Ok(Self::result(&reply, n, ei, tau))
    }

    /// [`RedisLimiter::allow_n`] for threads that are not in async code.
    pub fn allow_n_blocking(
        &self,
        key: &str,
        limit: RateLimit,
        n: u64,
    ) -> Result<RateResult, StoreError> {
        let (request, ei, tau) = self.request(key, limit, n)?;
        let reply = self.store.admit_blocking(request)?;
        Ok(Self::result(&reply, n, ei, tau))
    }

    fn request(
        &self,
        key: &str,
        limit: RateLimit,
        n: u64,
    ) -> Result<(Arc<AdmitRequest>, f64, f64), StoreError> {
        if limit.rate == 0 || limit.burst == 0 || limit.period.is_zero() {
            return Err(StoreError::Config(
                "a rate limit needs a rate, a period and a burst above zero".to_owned(),
            ));
        }
        let ei = limit.period.as_secs_f64() * 1e6 / limit.rate as f64;
        let tau = ei * limit.burst as f64;
        let prefix = &self.store.config().key_prefix;
        let request = AdmitRequest {
            keys: vec![Arc::from(format!("{prefix}:rate:{key}"))],
            checks: vec![Check::Rate {
                want: 1,
                slots: smallvec::smallvec![RateSlot {
                    slot: 0,
                    ei,
                    tau,
                    inc: ei * n as f64,
                }],
            }],
        };
        Ok((Arc::new(request), ei, tau))
    }

    fn result(reply: &AdmitReply, n: u64, ei: f64, tau: f64) -> RateResult {
        let dur = |us: f64| Duration::from_secs_f64(us.max(0.0) / 1e6);
        match reply {
            AdmitReply::Granted { now, grants } => {
                let end = match grants.first() {
                    Some(Grant::Rate { ends, .. }) => ends.first().copied().unwrap_or(*now),
                    _ => *now,
                };
                let ahead = (end - now).max(0.0);
                RateResult {
                    allowed: n,
                    remaining: ((tau - ahead + 0.001) / ei).floor().max(0.0) as u64,
                    retry_after: None,
                    reset_after: dur(ahead),
                }
            }
            AdmitReply::Refused { wait, ahead, .. } => RateResult {
                allowed: 0,
                remaining: 0,
                retry_after: Some(dur(wait.unwrap_or(0.0))),
                reset_after: dur(*ahead),
            },
        }
    }
}
