//! Deadlines of requests in flight, kept by one thread of the process instead of tokio's timer.
//!
//! Every request has a first-byte, an idle and a total limit, and almost every request meets
//! them. A tokio timer per stage puts each request into the runtime's timer wheel and takes it
//! out again (twice for a JSON answer, once per chunk of a stream); measured against nginx with
//! canned answers that cost about a quarter of the client's CPU per call. Here a request only
//! files its deadline in a table (one short, rarely contended lock) and removes it when it is
//! done; one thread (`tollgate-deadline`) looks at the table every [`TICK`] while it is not
//! empty, wakes the requests whose deadline passed, and sleeps without waking while nothing is
//! in flight.
//!
//! A deadline therefore fires up to one [`TICK`] late: fine for limits of seconds, and for the
//! hundreds of milliseconds tests use. The thread lives as long as the process and is stopped
//! and joined at exit (`atexit`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How often the deadline thread looks at the table while requests are in flight.
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// How long the thread keeps ticking after the table went empty before it sleeps for good.
const LINGER: Duration = Duration::from_secs(1);
/// Tables, so that threads filing deadlines rarely wait for each other.
const SHARDS: usize = 8;

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// One filed deadline.
struct Entry {
    at: Instant,
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Option<Arc<Entry>>>,
    free: Vec<usize>,
}

struct Table {
    shards: Vec<Mutex<Shard>>,
    /// Deadlines filed and not yet removed.
    live: AtomicUsize,
    /// The thread sleeps until told (nothing was in flight for [`LINGER`]).
    sleeping: AtomicBool,
    sleep: Mutex<bool>,
    wake: Condvar,
    /// Round robin of shards for the next filing.
    next: AtomicUsize,
    /// Set at process exit: the thread ends.
    stop: AtomicBool,
}

/// The deadline thread, joined at process exit (so it does not run on while the process's
/// memory is torn down, and leak checkers see a finished thread).
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let table = Table {
        shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        live: AtomicUsize::new(0),
        sleeping: AtomicBool::new(false),
        sleep: Mutex::new(false),
        wake: Condvar::new(),
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    };
    let thread = super::with_sigpipe_blocked(|| {
        std::thread::Builder::new()
            .name("tollgate-deadline".into())
            .spawn(watch)
            .expect("the deadline thread starts")
    });
    *THREAD.lock() = Some(thread);
    #[cfg(unix)]
    // SAFETY: registers a function with no arguments that only touches this module's statics.
    unsafe {
        libc::atexit(stop_at_exit);
    }
    table
});

/// Ends the deadline thread and waits for it (a tick at most): registered with `atexit`.
#[cfg(unix)]
extern "C" fn stop_at_exit() {
    let table = &*TABLE;
    table.stop.store(true, Ordering::SeqCst);
    {
        let mut asleep = table.sleep.lock();
        *asleep = false;
        table.wake.notify_one();
    }
    if let Some(thread) = THREAD.lock().take() {
        let _ = thread.join();
    }
}

/// The deadline thread: wakes what is due every tick while anything is in flight.
fn watch() {
    let table = &*TABLE;
    let mut empty_since: Option<Instant> = None;
    while !table.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        let now = Instant::now();
        for shard in &table.shards {
            let due: Vec<Arc<Entry>> = {
                let shard = shard.lock();
                shard
                    .slots
                    .iter()
                    .flatten()
                    .filter(|e| e.at <= now && !e.fired.load(Ordering::Relaxed))
                    .cloned()
                    .collect()
            };
            for e in due {
                e.fired.store(true, Ordering::Release);
                if let Some(w) = e.waker.lock().take() {
                    w.wake();
                }
            }
        }
        if table.live.load(Ordering::SeqCst) > 0 {
            empty_since = None;
            continue;
        }
        let since = *empty_since.get_or_insert(now);
        if now.duration_since(since) < LINGER {
            continue;
        }
        // Nothing in flight for a while: sleep until a deadline is filed.
        let mut asleep = table.sleep.lock();
        table.sleeping.store(true, Ordering::SeqCst);
        if table.live.load(Ordering::SeqCst) == 0 && !table.stop.load(Ordering::SeqCst) {
            *asleep = true;
            while *asleep {
                table.wake.wait(&mut asleep);
            }
        }
        table.sleeping.store(false, Ordering::SeqCst);
        empty_since = None;
    }
}

/// A deadline filed in the table; removed when dropped.
struct Filed {
    entry: Arc<Entry>,
    shard: usize,
    slot: usize,
}

impl Filed {
    fn new(at: Instant, waker: &Waker) -> Filed {
        let table = &*TABLE;
        let entry = Arc::new(Entry {
            at,
            fired: AtomicBool::new(false),
            waker: Mutex::new(Some(waker.clone())),
        });
        let shard = table.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        let slot = {
            let mut s = table.shards[shard].lock();
            match s.free.pop() {
                Some(i) => {
                    s.slots[i] = Some(Arc::clone(&entry));
                    i
                }
                None => {
                    s.slots.push(Some(Arc::clone(&entry)));
                    s.slots.len() - 1
                }
            }
        };
        table.live.fetch_add(1, Ordering::SeqCst);
        if table.sleeping.load(Ordering::SeqCst) {
            let mut asleep = table.sleep.lock();
            *asleep = false;
            table.wake.notify_one();
        }
        Filed { entry, shard, slot }
    }
}

impl Drop for Filed {
    fn drop(&mut self) {
        let table = &*TABLE;
        {
            let mut s = table.shards[self.shard].lock();
            s.slots[self.slot] = None;
            s.free.push(self.slot);
        }
        table.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `fut`, or [`Elapsed`] once `at` has passed (checked before each poll and by the deadline
/// thread). Nothing is filed while `fut` is ready at once.
pub(crate) fn until<F: Future>(at: Instant, fut: F) -> Until<F> {
    Until {
        fut,
        at,
        filed: None,
    }
}

pin_project_lite::pin_project! {
    /// See [`until`].
    pub(crate) struct Until<F> {
        #[pin]
        fut: F,
        at: Instant,
        filed: Option<Filed>,
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            *this.filed = None;
            return Poll::Ready(Ok(out));
        }
        match this.filed {
            Some(f) if f.entry.fired.load(Ordering::Acquire) => {
                *this.filed = None;
                Poll::Ready(Err(Elapsed))
            }
            Some(f) => {
                let mut w = f.entry.waker.lock();
                match &*w {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            None if Instant::now() >= *this.at => Poll::Ready(Err(Elapsed)),
            None => {
                *this.filed = Some(Filed::new(*this.at, cx.waker()));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ready_future_is_never_filed() {
        let out = until(Instant::now() + Duration::from_secs(60), async { 7 }).await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test]
    async fn a_pending_future_ends_at_its_deadline() {
        let started = Instant::now();
        let out = until(
            Instant::now() + Duration::from_millis(50),
            std::future::pending::<()>(),
        )
        .await;
        assert_eq!(out, Err(Elapsed));
        // Not before the deadline (how late is the thread's business: no upper bound here).
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_past_deadline_ends_at_once() {
        let out = until(Instant::now(), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_before_the_deadline_win_and_leave_nothing_filed() {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            tasks.push(tokio::spawn(async move {
                let at = Instant::now() + Duration::from_secs(30);
                until(at, async move {
                    tokio::task::yield_now().await;
                    i
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Ok(i as u64));
        }
    }

    #[test]
    fn the_thread_sleeps_and_wakes_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let far = || Instant::now() + Duration::from_millis(20);
            assert_eq!(
                until(far(), std::future::pending::<()>()).await,
                Err(Elapsed)
            );
            // Long enough for the thread to give up ticking (LINGER), then a deadline again.
            std::thread::sleep(LINGER + TICK * 4);
            assert_eq!(
                until(far(), std::future::pending::<()>()).await,
                Err(Elapsed)
            );
        });
    }
}
