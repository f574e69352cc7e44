//! Single-flight: identical requests in flight at the same time make one upstream call.
//!
//! The first caller to [`join`](SingleFlight::join) a key becomes the **leader** and makes the
//! call; callers joining while it runs become **followers** and receive a clone of whatever the
//! leader hands to [`LeaderGuard::complete`] — an answer or an error alike. Once completed, the
//! key is free: the next join leads a new call. A leader dropped without completing (a panic, a
//! cancelled task) wakes its followers with [`FlightError::Abandoned`], so the host can let one
//! of them try again as a new leader.
//!
//! Followers wait by blocking ([`FollowerWait::wait`], with a timeout) or by awaiting the
//! follower, which is a plain [`Future`] (no runtime needed).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use thiserror::Error;

use super::key::CacheKey;

/// Lock shards of a [`SingleFlight`] map.
const SHARDS: usize = 16;

/// Why a follower got no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FlightError {
    /// The leader went away without completing; join again to retry (the next join leads).
    #[error("the leading request was dropped before it completed; join again to retry")]
    Abandoned,
    /// The wait's timeout passed first; the leader may still complete.
    #[error("timed out waiting for the leading request")]
    Timeout,
}

impl FlightError {
    /// A stable machine-readable name: `abandoned` or `timeout`.
    pub fn code(&self) -> &'static str {
        match self {
            FlightError::Abandoned => "abandoned",
            FlightError::Timeout => "timeout",
        }
    }
}

/// Identical in-flight calls, merged by key. `T` is what the leader hands to its followers,
/// typically `Result<Arc<CachedResponse>, E>` so an error is shared too.
///
/// Cloning gives another handle on the same map.
///
/// ```
/// use std::time::Duration;
/// use tollgate::cache::{CacheKey, Flight, SingleFlight};
///
/// let flights: SingleFlight<u32> = SingleFlight::new();
/// let Flight::Leader(leader) = flights.join(CacheKey(1)) else { unreachable!() };
/// let Flight::Follower(follower) = flights.join(CacheKey(1)) else { unreachable!() };
/// leader.complete(7);
/// assert_eq!(follower.wait(Duration::from_secs(1)), Ok(7));
/// assert!(flights.join(CacheKey(1)).is_leader()); // completed: a new call
/// ```
pub struct SingleFlight<T: Clone> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    shards: Box<[Mutex<CallMap<T>>]>,
}

/// One shard of the in-flight calls, by key.
type CallMap<T> = HashMap<u128, Arc<Call<T>>>;

struct Call<T> {
    state: Mutex<State<T>>,
    done: Condvar,
    followers: AtomicUsize,
}

struct State<T> {
    result: Option<Result<T, FlightError>>,
    /// One slot per follower future that has been polled.
    wakers: Vec<Option<Waker>>,
}

/// The outcome of [`SingleFlight::join`].
#[must_use = "a leader must make the call and complete it; a follower must wait"]
pub enum Flight<T: Clone> {
    /// Nobody is calling for this key: make the call, then [`LeaderGuard::complete`].
    Leader(LeaderGuard<T>),
    /// A call for this key is in flight: wait for its result.
    Follower(FollowerWait<T>),
}

impl<T: Clone> Flight<T> {
    /// Whether this caller leads.
    pub fn is_leader(&self) -> bool {
        matches!(self, Flight::Leader(_))
    }
}

/// The leader's duty: complete the call. Dropping it uncompleted abandons the call.
#[must_use = "dropping the guard abandons the call for every follower"]
pub struct LeaderGuard<T: Clone> {
    inner: Arc<Inner<T>>,
    call: Arc<Call<T>>,
    key: CacheKey,
    completed: bool,
}

/// A follower's handle on the leader's result: [`wait`](FollowerWait::wait) or `.await` it.
pub struct FollowerWait<T: Clone> {
    call: Arc<Call<T>>,
    slot: Option<usize>,
}

impl<T: Clone> SingleFlight<T> {
    /// An empty map.
    pub fn new() -> SingleFlight<T> {
        SingleFlight {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }),
        }
    }

    /// Leads the call for `key` if none is in flight, else follows the one that is.
    pub fn join(&self, key: CacheKey) -> Flight<T> {
        let mut map = self.inner.shard(key).lock();
        if let Some(call) = map.get(&key.0) {
            call.followers.fetch_add(1, Relaxed);
            return Flight::Follower(FollowerWait {
                call: Arc::clone(call),
                slot: None,
            });
        }
        let call = Arc::new(Call {
            state: Mutex::new(State {
                result: None,
                wakers: Vec::new(),
            }),
            done: Condvar::new(),
            followers: AtomicUsize::new(0),
        });
        map.insert(key.0, Arc::clone(&call));
        Flight::Leader(LeaderGuard {
            inner: Arc::clone(&self.inner),
            call,
            key,
            completed: false,
        })
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl<T> Inner<T> {
    fn shard(&self, key: CacheKey) -> &Mutex<CallMap<T>> {
        &self.shards[(key.0 >> 64) as usize % SHARDS]
    }
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight::new()
    }
}

impl<T: Clone> Clone for SingleFlight<T> {
    fn clone(&self) -> Self {
        SingleFlight {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Clone> std::fmt::Debug for SingleFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight")
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<T: Clone> LeaderGuard<T> {
    /// The key this call is for.
    pub fn key(&self) -> CacheKey {
        self.key
    }

    /// Followers that have joined so far.
    pub fn followers(&self) -> usize {
        self.call.followers.load(Relaxed)
    }

    /// Hands `value` to every follower and frees the key: a later join leads a new call.
    pub fn complete(mut self, value: T) {
        self.completed = true;
        self.finish(Ok(value));
    }

    fn finish(&self, result: Result<T, FlightError>) {
        {
            let mut map = self.inner.shard(self.key).lock();
            if map
                .get(&self.key.0)
                .is_some_and(|c| Arc::ptr_eq(c, &self.call))
            {
                map.remove(&self.key.0);
            }
        }
        let wakers = {
            let mut state = self.call.state.lock();
            state.result = Some(result);
            std::mem::take(&mut state.wakers)
        };
        self.call.done.notify_all();
        for waker in wakers.into_iter().flatten() {
            waker.wake();
        }
    }
}

impl<T: Clone> Drop for LeaderGuard<T> {
    fn drop(&mut self) {
        if !self.completed {
            self.finish(Err(FlightError::Abandoned));
        }
    }
}

impl<T: Clone> std::fmt::Debug for LeaderGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("key", &self.key)
            .field("followers", &self.followers())
            .finish()
    }
}

impl<T: Clone> FollowerWait<T> {
    /// Blocks until the leader completes or abandons, or `timeout` passes
    /// ([`FlightError::Timeout`]; waiting again is allowed).
    pub fn wait(&self, timeout: Duration) -> Result<T, FlightError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.call.state.lock();
        loop {
            if let Some(result) = &state.result {
                return result.clone();
            }
            let timed_out = match deadline {
                Some(d) => self.call.done.wait_until(&mut state, d).timed_out(),
                None => {
                    self.call.done.wait(&mut state);
                    false
                }
            };
            if timed_out {
                return state.result.clone().unwrap_or(Err(FlightError::Timeout));
            }
        }
    }

    /// The result, if the leader has finished.
    pub fn try_result(&self) -> Option<Result<T, FlightError>> {
        self.call.state.lock().result.clone()
    }
}

impl<T: Clone> Future for FollowerWait<T> {
    type Output = Result<T, FlightError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = this.call.state.lock();
        if let Some(result) = &state.result {
            return Poll::Ready(result.clone());
        }
        match this.slot {
            Some(i) => match &mut state.wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                this.slot = Some(state.wakers.len());
                state.wakers.push(Some(cx.waker().clone()));
            }
        }
        Poll::Pending
    }
}

impl<T: Clone> Drop for FollowerWait<T> {
    fn drop(&mut self) {
        // Free this follower's waker so a long call does not keep a finished task alive.
        if let Some(i) = self.slot
            && let Some(slot) = self.call.state.lock().wakers.get_mut(i)
        {
            *slot = None;
        }
    }
}

impl<T: Clone> std::fmt::Debug for FollowerWait<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerWait")
            .field("done", &self.call.state.lock().result.is_some())
            .finish()
    }
}

impl<T: Clone> std::fmt::Debug for Flight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flight::Leader(g) => g.fmt(f),
            Flight::Follower(w) => w.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn a_polled_follower_is_woken_once_with_the_value() {
        let f: SingleFlight<&'static str> = SingleFlight::new();
        let Flight::Leader(leader) = f.join(CacheKey(9)) else {
            panic!("first join leads")
        };
        let Flight::Follower(mut follower) = f.join(CacheKey(9)) else {
            panic!("second join follows")
        };
        let counter = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut follower).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut follower).poll(&mut cx).is_pending()); // same slot reused
        assert_eq!(follower.call.state.lock().wakers.len(), 1);
        leader.complete("done");
        assert_eq!(counter.0.load(Relaxed), 1);
        assert_eq!(
            Pin::new(&mut follower).poll(&mut cx),
            Poll::Ready(Ok("done"))
        );
    }

    #[test]
    fn a_dropped_follower_frees_its_waker() {
        let f: SingleFlight<u8> = SingleFlight::new();
        let leader = f.join(CacheKey(3));
        let Flight::Follower(mut follower) = f.join(CacheKey(3)) else {
            panic!("second join follows")
        };
        let counter = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        assert!(
            Pin::new(&mut follower)
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let call = Arc::clone(&follower.call);
        drop(follower);
        assert!(call.state.lock().wakers[0].is_none());
        drop(leader);
        assert_eq!(counter.0.load(Relaxed), 0);
    }
}
