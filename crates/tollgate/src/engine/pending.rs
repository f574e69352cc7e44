//! An admission attempt's result ([`Try`]), and one waiting for Redis ([`Pending`]).
//!
//! A [`Pending`] holds the attempt's local reservations and one [`AdmitRequest`] with a check per
//! Redis budget ([`super::remote::Ask`]); admission sends it (awaited, or blocked on for at most
//! `op_timeout`) and [`Pending::finish`] turns Redis's answer into a [`Finished`]: a permit, a
//! refusal (with everything given back), or "the store failed, admit again".

use std::sync::Arc;

use smallvec::SmallVec;

use crate::budget::Cell;
use crate::clock::Nanos;
use crate::policy::LimitKind;
use crate::store::{AdmitReply, AdmitRequest, Check, Grant, RedisStore, StoreError};

use super::budgets;
use super::call::Demand;
use super::compile::Compiled;
use super::deny::Denial;
use super::hold::{Hold, RemoteCharge, RemoteHold};
use super::permit::{Held, Journey, Permit};
use super::remote::{Ask, Excluded};
use super::route::TargetCtx;

/// Why an admission attempt could not take capacity now.
pub(crate) struct Blocked {
    pub budget: usize,
    pub cell: Arc<Cell>,
    /// Time until the limit has room; `None` when a concurrency slot or earlier waiters block.
    pub wait: Option<Nanos>,
    pub limit: Option<LimitKind>,
}

pub(crate) enum Try {
    Go(Permit),
    Blocked(Blocked),
    Deny(Denial),
    /// Local budgets are held; Redis budgets need one round trip ([`super::admit::resolve`]).
    Remote(Box<Pending>),
}

/// An admission waiting for Redis: what is held locally meanwhile and the request.
pub(crate) struct Pending {
    pub holds: SmallVec<[Hold; 3]>,
    pub asks: Vec<Ask>,
    pub demand: Demand,
    pub target: Option<Box<TargetCtx>>,
    /// The route target it was admitted on (route, target index), for a routed call.
    pub candidate: Option<(usize, usize)>,
    pub journey: Journey,
    request: Arc<AdmitRequest>,
    /// Per request key: which ask, and whether it is the gate.
    map: SmallVec<[(usize, bool); 4]>,
    store: Arc<RedisStore>,
}

impl Pending {
    pub(crate) fn new(
        compiled: &Compiled,
        holds: SmallVec<[Hold; 3]>,
        asks: Vec<Ask>,
        demand: Demand,
    ) -> Pending {
        let store = asks
            .first()
            .and_then(|a| compiled.budgets[a.budget].remote.as_deref())
            .map(|r| Arc::clone(&r.store))
            .expect("a pending admission has a Redis budget");
        let mut request = AdmitRequest::default();
        let mut map = SmallVec::new();
        let ttl_us = store.config().concurrency_lease.as_micros() as f64;
        for (n, a) in asks.iter().enumerate() {
            if let Some(hash) = &a.hash {
                request.keys.push(Arc::clone(hash));
                request.checks.push(Check::Rate {
                    want: a.want,
                    slots: a.slots.clone(),
                });
                map.push((n, false));
            }
            if let Some((gate, max)) = &a.gate {
                request.keys.push(Arc::clone(gate));
                request.checks.push(Check::Gate {
                    max: *max,
                    ttl_us,
                    member: store.new_member(gate),
                });
                map.push((n, true));
            }
        }
        Pending {
            holds,
            asks,
            demand,
            target: None,
            candidate: None,
            journey: Journey::default(),
            request: Arc::new(request),
            map,
            store,
        }
    }

    /// Turns Redis's answer into the attempt's result.
    pub(crate) fn finish(
        mut self,
        compiled: &Compiled,
        reply: Result<AdmitReply, StoreError>,
        now: Nanos,
    ) -> Finished {
        match reply {
            Ok(AdmitReply::Granted { grants, .. }) => {
                let mut remote: SmallVec<[Hold; 2]> = SmallVec::new();
                for (n, a) in self.asks.iter().enumerate() {
                    let mut hold = RemoteHold {
                        store: Arc::clone(&self.store),
                        key: a.hash.clone().unwrap_or_else(|| Arc::from("")),
                        charges: SmallVec::new(),
                        gate: None,
                        leased: false,
                    };
                    for (k, (ask, gate)) in self.map.iter().enumerate() {
                        if *ask != n {
                            continue;
                        }
                        match (gate, grants.get(k)) {
                            (true, _) => {
                                if let (Some((g, _)), Some(Check::Gate { member, .. })) =
                                    (&a.gate, self.request.checks.get(k))
                                {
                                    hold.gate = Some((Arc::clone(g), Arc::clone(member)));
                                }
                            }
                            (false, Some(Grant::Rate { calls, ends })) => {
                                for (s, end) in a.slots.iter().zip(ends.iter()) {
                                    hold.charges.push(RemoteCharge {
                                        slot: s.slot,
                                        ei: s.ei,
                                        inc: s.inc,
                                        end: *end,
                                    });
                                }
                                if *calls > 1
                                    && let (Some(r), Some(hash)) =
                                        (compiled.budgets[a.budget].remote.as_deref(), &a.hash)
                                {
                                    budgets::keep_lease(
                                        r,
                                        a.cell.key(),
                                        hash,
                                        &a.slots,
                                        *calls - 1,
                                        ends,
                                        now,
                                    );
                                }
                            }
                            (false, _) => {}
                        }
                    }
                    remote.push(Hold {
                        cell: Arc::clone(&a.cell),
                        slots: 0,
                        charges: SmallVec::new(),
                        concurrency: false,
                        remote: Some(Box::new(hold)),
                    });
                }
                let mut holds = std::mem::take(&mut self.holds);
                holds.extend(remote);
                let held = Held {
                    holds,
                    demand: self.demand,
                    settled: false,
                    target: self.target.take(),
                    journey: std::mem::take(&mut self.journey),
                };
                Finished::Done(Try::Go(Permit::new(held)))
            }
            Ok(AdmitReply::Refused {
                key, slot, wait, ..
            }) => {
                let (ask, gate) = self.map.get(key).copied().unwrap_or((0, false));
                let a = &self.asks[ask];
                let limit = match (gate, slot) {
                    (false, Some(s)) => a.slots.get(s).map(|s| LimitKind::ALL[usize::from(s.slot)]),
                    _ => None,
                };
                let blocked = Try::Blocked(Blocked {
                    budget: a.budget,
                    cell: Arc::clone(&a.cell),
                    wait: if gate {
                        None
                    } else {
                        wait.map(|w| (w * 1000.0).ceil() as Nanos)
                    },
                    limit,
                });
                let specific = compiled.budgets[a.budget].target_specific;
                let tried = self
                    .candidate
                    .zip(self.target.as_ref().map(|t| Arc::clone(&t.key.id)));
                self.undo(compiled, now);
                match tried {
                    Some(tried) if specific => Finished::Retarget(blocked, tried),
                    _ => Finished::Done(blocked),
                }
            }
            Err(e) => {
                self.undo(compiled, now);
                // Down now even when the wait gave up before the store noticed: the next
                // attempt applies `on_failure` instead of asking again.
                self.store.mark_down(&e.to_string());
                Finished::StoreFailed
            }
        }
    }

    /// Gives back everything held locally (and the unused concurrency lease name).
    fn undo(&mut self, compiled: &Compiled, now: Nanos) {
        for c in &self.request.checks {
            if let Check::Gate { member, .. } = c {
                self.store.drop_member(member);
            }
        }
        for h in self.holds.drain(..) {
            if h.remote.is_some() {
                budgets::return_leased(&compiled.budgets, &h);
            } else {
                h.undo(now);
            }
        }
        if let Some(mut t) = self.target.take()
            && let Some(p) = t.breaker.take()
        {
            t.health.breaker.release(p);
        }
    }

    /// The request to send.
    pub(crate) fn request(&self) -> Arc<AdmitRequest> {
        Arc::clone(&self.request)
    }

    /// The store to send it to.
    pub(crate) fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }
}

/// What a pending admission became.
pub(crate) enum Finished {
    /// The attempt's result.
    Done(Try),
    /// Refused by a budget about this route target and key: try another key or target.
    Retarget(Try, Excluded),
    /// Redis failed: admit again (the store is down now, so `on_failure` applies).
    StoreFailed,
}
