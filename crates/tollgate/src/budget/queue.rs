//! Calls waiting for a budget, in priority order (higher first), first come first served within a
//! priority. A call that is not at the head may not take capacity, and a new call may pass the
//! queue only with a priority higher than every queued call's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Wakes a waiting call: a flag for event loops (simulation), a condition variable for threads
/// and a [`tokio::sync::Notify`] for async tasks.
#[derive(Debug, Default)]
pub struct Signal {
    flag: AtomicBool,
    lock: Mutex<()>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Signal {
    /// Marks the signal and wakes a thread blocked in [`Signal::wait`].
    pub fn notify(&self) {
        self.flag.store(true, Ordering::Release);
        let _guard = self.lock.lock();
        self.cond.notify_all();
        // Stores a permit when no task is waiting, so a notification between a poll and the
        // next `notified().await` is not lost.
        self.notify.notify_one();
    }

    /// Waits (asynchronously) until notified; clears the mark. Returns at once when a
    /// notification came since the last wait.
    pub async fn notified(&self) {
        self.notify.notified().await;
        self.take();
    }

    /// Clears the mark and says whether it was set.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    /// Blocks until notified or `timeout` passes; clears the mark.
    pub fn wait(&self, timeout: Duration) {
        let mut guard = self.lock.lock();
        if !self.flag.load(Ordering::Acquire) {
            let _ = self.cond.wait_for(&mut guard, timeout);
        }
        drop(guard);
        self.take();
    }
}

#[derive(Debug)]
struct Entry {
    priority: i16,
    seq: u64,
    signal: Arc<Signal>,
}

/// The queue of one budget cell.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    len: AtomicU32,
    entries: Mutex<Vec<Entry>>,
}

impl WaitQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Acquire) == 0
    }

    /// Whether a call may take capacity now: the queue is empty, the call heads it, or the call
    /// is not queued here and outranks everyone queued.
    #[inline]
    pub(crate) fn may_pass(&self, priority: i16, seq: Option<u64>) -> bool {
        if self.is_empty() {
            return true;
        }
        let entries = self.entries.lock();
        match entries.first() {
            None => true,
            Some(head) => match seq {
                Some(s) if head.seq == s => true,
                Some(s) if entries.iter().any(|e| e.seq == s) => false,
                _ => priority > head.priority,
            },
        }
    }

    /// Queues a call (once); returns its position (0 = head).
    pub(crate) fn enqueue(&self, priority: i16, seq: u64, signal: &Arc<Signal>) -> usize {
        let mut entries = self.entries.lock();
        if let Some(pos) = entries.iter().position(|e| e.seq == seq) {
            return pos;
        }
        let pos = entries
            .iter()
            .position(|e| e.priority < priority || (e.priority == priority && e.seq > seq))
            .unwrap_or(entries.len());
        entries.insert(
            pos,
            Entry {
                priority,
                seq,
                signal: Arc::clone(signal),
            },
        );
        self.len.store(entries.len() as u32, Ordering::Release);
        pos
    }

    /// Removes a call; when it headed the queue, the next one is woken.
    pub(crate) fn remove(&self, seq: u64) {
        let mut entries = self.entries.lock();
        if let Some(pos) = entries.iter().position(|e| e.seq == seq) {
            entries.remove(pos);
            self.len.store(entries.len() as u32, Ordering::Release);
            if pos == 0
                && let Some(head) = entries.first()
            {
                head.signal.notify();
            }
        }
    }

    /// Wakes the head, if any (capacity came back).
    #[inline]
    pub(crate) fn wake_head(&self) {
        if self.is_empty() {
            return;
        }
        if let Some(head) = self.entries.lock().first() {
            head.signal.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_then_fifo() {
        let q = WaitQueue::default();
        let s = Arc::new(Signal::default());
        q.enqueue(0, 1, &s);
        q.enqueue(0, 2, &s);
        assert_eq!(q.enqueue(5, 3, &s), 0);
        assert!(q.may_pass(0, Some(3)));
        assert!(!q.may_pass(0, Some(1)));
        assert!(!q.may_pass(5, None), "equal priority queues behind");
        assert!(q.may_pass(6, None));
        q.remove(3);
        assert!(s.take(), "new head woken");
        assert!(q.may_pass(0, Some(1)));
        q.remove(1);
        q.remove(2);
        assert!(q.is_empty());
    }
}
