//! Shared-state helpers: values kept per thread on cache lines of their own, and locks that
//! survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::CachePadded;
use thread_local::ThreadLocal;

/// One `T` per thread that uses it. Each thread writes only its own, and each sits on cache
/// lines of its own (`thread_local` packs values side by side, so two workers' small values
/// would otherwise share a line and every write would pull it from the other core). A reader
/// such as a metrics scrape visits them all with [`PerThread::iter`].
pub struct PerThread<T: Send> {
    slots: ThreadLocal<CachePadded<T>>,
}

impl<T: Send> PerThread<T> {
    /// No thread has a value yet.
    pub fn new() -> Self {
        PerThread {
            slots: ThreadLocal::new(),
        }
    }

    /// This thread's value, made by `init` on its first use.
    pub fn get_or(&self, init: impl FnOnce() -> T) -> &T {
        self.slots.get_or(|| CachePadded::new(init()))
    }

    /// Every thread's value.
    pub fn iter(&self) -> impl Iterator<Item = &T>
    where
        T: Sync,
    {
        self.slots.iter().map(|slot| &**slot)
    }
}

impl<T: Send> Default for PerThread<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks `mutex`. A panic while another thread held it leaves a value that is still whole
/// here (counters, buffers, lists), so the gateway goes on with it instead of panicking too.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_gets_its_own_value_on_its_own_cache_line() {
        let values: PerThread<Mutex<u64>> = PerThread::new();
        // All three alive at once, so none can take over another's slot.
        let together = std::sync::Barrier::new(3);
        std::thread::scope(|s| {
            for n in 1..=3 {
                let (values, together) = (&values, &together);
                s.spawn(move || {
                    *lock(values.get_or(|| Mutex::new(0))) += n;
                    together.wait();
                });
            }
        });
        let mut seen: Vec<u64> = values.iter().map(|v| *lock(v)).collect();
        seen.sort();
        assert_eq!(seen, vec![1, 2, 3]);
        let line = std::mem::align_of::<CachePadded<u8>>();
        assert!(line >= 64);
        for value in values.iter() {
            let address = value as *const Mutex<u64> as usize;
            assert_eq!(address % line, 0, "a value starts a cache line of its own");
        }
    }

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let m = Mutex::new(7);
        let _ = std::panic::catch_unwind(|| {
            let _held = m.lock().expect("lock");
            panic!("while holding it");
        });
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }
}
