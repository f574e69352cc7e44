//! Calls that wait for room, in the budgets' priority queues.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use smallvec::SmallVec;

use crate::budget::{BudgetState, Cell, Signal};
use crate::clock::{Nanos, duration_nanos};
use crate::policy::Exhausted;

use super::Inner;
use super::admit::{
    RouteHint, Spec, blocked_verdict, count_admitted, count_denied, try_admit, try_admit_async,
    unavailable_wait,
};
use super::call::{Call, Counted, OwnedCall};
use super::compile::Compiled;
use super::deny::{Denial, DenyReason};
use super::pending::Try;
use super::permit::Permit;
use super::route::Attempt;

/// How often a call waiting for a concurrency slot of a Redis budget asks again.
const REMOTE_POLL: Nanos = 20_000_000;

/// What polling a [`Waiter`] gives.
#[derive(Debug)]
pub enum WaitPoll {
    /// Finished: admitted or refused.
    Ready(Result<Permit, Denial>),
    /// Not yet: poll again at clock time `until` (nanoseconds), or earlier when
    /// [`Waiter::signal`] fires.
    Pending {
        /// Clock time of the next useful poll.
        until: Nanos,
    },
}

/// A call waiting for room. It keeps its place in the queue of every budget that made it wait;
/// dropping it leaves the queues.
pub struct Waiter {
    inner: Arc<Inner>,
    call: OwnedCall,
    counted: Counted,
    attempt: Option<Attempt>,
    deadline_total: Option<std::time::Duration>,
    seq: u64,
    signal: Arc<Signal>,
    started: Nanos,
    deadline: Option<Nanos>,
    queued: SmallVec<[Arc<Cell>; 2]>,
    /// Budgets it waited in (for the `waited` counters).
    waited_in: SmallVec<[Arc<BudgetState>; 2]>,
    /// The budget and key that made it wait last.
    blocked_on: Option<(Arc<str>, Arc<str>)>,
    /// The route, when resolved ahead (the call API).
    route: Option<RouteHint>,
    /// Joined a queue in the last attempt: the poll makes one more attempt at once.
    just_queued: bool,
    done: bool,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("seq", &self.seq)
            .field("started", &self.started)
            .field("deadline", &self.deadline)
            .field("queued_in", &self.queued.len())
            .finish()
    }
}

impl Waiter {
    pub(crate) fn new(
        inner: Arc<Inner>,
        call: &Call<'_>,
        counted: Counted,
        seq: u64,
        now: Nanos,
        route: Option<RouteHint>,
    ) -> Waiter {
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        Waiter {
            inner,
            call: OwnedCall::from_view(call.view()),
            counted,
            attempt: call.attempt.cloned(),
            deadline_total: call.deadline,
            seq,
            signal: Arc::new(Signal::default()),
            started: now,
            deadline: None,
            queued: SmallVec::new(),
            waited_in: SmallVec::new(),
            blocked_on: None,
            route,
            just_queued: false,
            done: false,
        }
    }

    /// Fires when the waiter should be polled before its `until` (capacity came back, or it
    /// reached the head of a queue).
    pub fn signal(&self) -> &Arc<Signal> {
        &self.signal
    }

    /// When the waiter started waiting (clock nanoseconds).
    pub fn started(&self) -> Nanos {
        self.started
    }

    /// The budget and scope key that made this call wait most recently, if any did.
    pub fn blocked_on(&self) -> Option<(&str, &str)> {
        self.blocked_on.as_ref().map(|(b, k)| (&**b, &**k))
    }

    /// Tries to take room now. Budgets kept in Redis are asked on this thread (one round trip,
    /// at most `op_timeout`); async code should use [`Waiter::poll_async`].
    pub fn poll(&mut self) -> WaitPoll {
        loop {
            if self.done {
                return finished();
            }
            let compiled = self.inner.current();
            let now = compiled.clock.now();
            let mut call = Call::new("");
            call.deadline = self.deadline_total;
            call.attempt = self.attempt.as_ref();
            let mut spec = Spec::new(self.call.view(), self.counted, &call, self.started);
            spec.route = self.route;
            let result = try_admit(&compiled, &spec, Some(self.seq), now);
            let polled = self.conclude(&compiled, result, now);
            if !std::mem::take(&mut self.just_queued) {
                return polled;
            }
        }
    }

    /// [`Waiter::poll`] for async code: a round trip to Redis is awaited.
    pub async fn poll_async(&mut self) -> WaitPoll {
        loop {
            if self.done {
                return finished();
            }
            let compiled = self.inner.current();
            let now = compiled.clock.now();
            let result = {
                let mut call = Call::new("");
                call.deadline = self.deadline_total;
                call.attempt = self.attempt.as_ref();
                let mut spec = Spec::new(self.call.view(), self.counted, &call, self.started);
                spec.route = self.route;
                try_admit_async(&compiled, &spec, Some(self.seq), now).await
            };
            let polled = self.conclude(&compiled, result, now);
            if !std::mem::take(&mut self.just_queued) {
                return polled;
            }
        }
    }

    /// Waits until the call is admitted or refused, on the current tokio runtime: polls when the
    /// waiter's signal fires or its time is up. Dropping the future leaves the queues (a
    /// cancelled wait takes nothing).
    pub async fn wait(mut self) -> Result<Permit, Denial> {
        loop {
            match self.poll_async().await {
                WaitPoll::Ready(result) => return result,
                WaitPoll::Pending { until } => {
                    let now = self.inner.clock.now();
                    let sleep = Duration::from_nanos(until.saturating_sub(now).max(1));
                    let signal = Arc::clone(&self.signal);
                    tokio::select! {
                        () = tokio::time::sleep(sleep) => {}
                        () = signal.notified() => {}
                    }
                }
            }
        }
    }

    /// When the call's own deadline passes (clock nanoseconds), if it has one.
    fn call_deadline(&self) -> Option<Nanos> {
        self.deadline_total
            .map(|d| self.started.saturating_add(duration_nanos(d)))
    }

    /// What an admission attempt at `now` means for this waiter.
    fn conclude(&mut self, compiled: &Compiled, result: Try, now: Nanos) -> WaitPoll {
        let waited = now.saturating_sub(self.started);
        match result {
            Try::Remote(_) => {
                self.finish();
                WaitPoll::Ready(Err(Denial::new(DenyReason::StoreUnavailable {
                    store: "redis",
                    detail: "admission did not settle".to_owned(),
                })))
            }
            Try::Go(permit) => {
                self.finish();
                count_admitted(&permit, &self.waited_in);
                WaitPoll::Ready(Ok(permit))
            }
            Try::Deny(denial) => {
                // Every target passed over for a known time: wait for it (within
                // `retry.max_retry_after` over the whole wait and the call's deadline), not in a
                // queue: nothing will signal, the waiter is polled when the time is up.
                if let Some(after) = unavailable_wait(&compiled.policy, &denial, waited) {
                    let due = now.saturating_add(duration_nanos(after).max(1));
                    if self.call_deadline().is_none_or(|d| due <= d) {
                        return WaitPoll::Pending { until: due };
                    }
                }
                self.finish();
                count_denied(compiled, &denial);
                WaitPoll::Ready(Err(denial))
            }
            Try::Blocked(blocked) => {
                let budget = &compiled.budgets[blocked.budget];
                let refuse = |this: &mut Waiter, denial: Denial| {
                    this.finish();
                    budget
                        .state
                        .shared
                        .counters
                        .local()
                        .denied
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    WaitPoll::Ready(Err(denial))
                };
                if let Err(denial) = blocked_verdict(budget, &blocked, Some(waited)) {
                    return refuse(self, denial);
                }
                let max = match budget.exhausted {
                    Exhausted::Wait(max) => duration_nanos(max),
                    Exhausted::Deny => 0,
                };
                // Within the budget's wait_up_to, and within the call's own deadline.
                let deadline = self
                    .started
                    .saturating_add(max)
                    .min(self.deadline.unwrap_or(u64::MAX))
                    .min(self.call_deadline().unwrap_or(u64::MAX));
                self.deadline = Some(deadline);
                if now >= deadline {
                    let reason = DenyReason::WaitedTooLong {
                        waited: Duration::from_nanos(waited),
                    };
                    return refuse(
                        self,
                        Denial::by(&budget.state.name, blocked.cell.key(), reason),
                    );
                }
                self.blocked_on = Some((
                    Arc::clone(&budget.state.name),
                    Arc::clone(blocked.cell.key()),
                ));
                if !self.waited_in.iter().any(|w| Arc::ptr_eq(w, &budget.state)) {
                    self.waited_in.push(Arc::clone(&budget.state));
                }
                if !self.queued.iter().any(|c| Arc::ptr_eq(c, &blocked.cell)) {
                    blocked
                        .cell
                        .queue
                        .enqueue(self.call.view().priority, self.seq, &self.signal);
                    self.queued.push(Arc::clone(&blocked.cell));
                    // Room freed between the attempt above and joining the queue signalled
                    // nobody: the poll looks again now that a release will signal this waiter.
                    self.just_queued = true;
                }
                let until = match blocked.wait {
                    Some(wait) => now.saturating_add(wait.max(1)),
                    // A slot freed in Redis wakes nobody here: look again shortly.
                    None if budget.remote.is_some() => now.saturating_add(REMOTE_POLL),
                    None => deadline,
                };
                WaitPoll::Pending {
                    until: until.min(deadline),
                }
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        for cell in self.queued.drain(..) {
            cell.queue.remove(self.seq);
        }
    }
}

/// The answer of a waiter polled after it finished.
fn finished() -> WaitPoll {
    let message = "this waiter already finished; make a new one".to_owned();
    WaitPoll::Ready(Err(Denial::new(DenyReason::InvalidRequest { message })))
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done {
            self.finish();
        }
        self.inner.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}
