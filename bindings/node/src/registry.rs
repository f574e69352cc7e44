//! The engines registered on this thread for the decide path, and each one's permits held by
//! JavaScript as numbers (a slot and a generation, so a stale handle never settles another call).
//!
//! `NativeEngine` registers itself here when it is made and leaves when it is collected; the
//! decide functions find it by index.

use std::cell::RefCell;

use tollgate::{Attempt, Engine, Permit};

use crate::error::ErrorInfo;

/// Permit handles: `generation × 2^26 + slot`, exact in an f64.
const SLOT_BITS: u32 = 26;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const MAX_GENERATION: u32 = 1 << 26;

/// An engine's permits held by JavaScript.
#[derive(Default)]
pub(crate) struct Permits {
    slots: Vec<(u32, Option<Permit>)>,
    free: Vec<u32>,
}

impl Permits {
    pub(crate) fn insert(&mut self, permit: Permit) -> f64 {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.0 = (entry.0 % (MAX_GENERATION - 1)) + 1;
        entry.1 = Some(permit);
        (u64::from(entry.0) << SLOT_BITS | u64::from(slot)) as f64
    }

    pub(crate) fn take(&mut self, handle: f64) -> Option<Permit> {
        if !(handle >= 0.0 && handle < 2f64.powi(52)) {
            return None;
        }
        let h = handle as u64;
        let slot = (h & SLOT_MASK) as usize;
        let generation = (h >> SLOT_BITS) as u32;
        let entry = self.slots.get_mut(slot)?;
        if entry.0 != generation {
            return None;
        }
        let permit = entry.1.take()?;
        self.free.push(slot as u32);
        Some(permit)
    }

    pub(crate) fn get(&self, handle: f64) -> Option<&Permit> {
        if !(handle >= 0.0 && handle < 2f64.powi(52)) {
            return None;
        }
        let h = handle as u64;
        let (gen_, slot) = ((h >> SLOT_BITS) as u32, (h & SLOT_MASK) as usize);
        self.slots
            .get(slot)
            .filter(|e| e.0 == gen_)
            .and_then(|e| e.1.as_ref())
    }
}

/// An engine registered for the decide path.
pub(crate) struct Registered {
    pub(crate) engine: Engine,
    pub(crate) permits: Permits,
    /// The retry state the next admission carries (`NativeEngine::set_attempt`).
    pub(crate) attempt: Option<Box<Attempt>>,
}

thread_local! {
    static ENGINES: RefCell<Vec<Option<Registered>>> = const { RefCell::new(Vec::new()) };
}

/// Registers an engine on this thread; returns its index.
pub(crate) fn register(engine: Engine) -> u32 {
    ENGINES.with(|e| {
        let mut engines = e.borrow_mut();
        let entry = Registered {
            engine,
            permits: Permits::default(),
            attempt: None,
        };
        match engines.iter().position(Option::is_none) {
            Some(i) => {
                engines[i] = Some(entry);
                i as u32
            }
            None => {
                engines.push(Some(entry));
                (engines.len() - 1) as u32
            }
        }
    })
}

/// Forgets an engine (its object was collected): its unsettled permits are released.
pub(crate) fn unregister(index: u32) {
    let _ = ENGINES.try_with(|e| {
        if let Ok(mut engines) = e.try_borrow_mut()
            && let Some(slot) = engines.get_mut(index as usize)
        {
            *slot = None;
        }
    });
}

/// Runs `f` on engine `index` of this thread.
pub(crate) fn with_engine<T>(
    index: u32,
    f: impl FnOnce(&mut Registered) -> napi::Result<T>,
) -> napi::Result<T> {
    ENGINES.with(|e| {
        let mut engines = e.borrow_mut();
        match engines.get_mut(index as usize).and_then(Option::as_mut) {
            Some(r) => f(r),
            None => Err(ErrorInfo::invalid_argument("this engine is gone").into_napi()),
        }
    })
}
