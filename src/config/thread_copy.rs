//! A copy of a config snapshot for each worker thread.
//!
//! Every request holds its config snapshot, its key and its limit set by `Arc`. Cloning and
//! dropping an `Arc` writes its reference count, so with one shared snapshot every request
//! wrote cache lines that the other worker threads write too, and waited for each line to come
//! over from another core. Each worker thread serves requests from its own copy instead
//! ([`ConfigCopies`]): the same values, with reference counts of its own.
//!
//! A reload makes the copies before the new snapshot goes in force, so no request waits for a
//! copy except each worker's first after start-up. Copies the workers leave behind are freed
//! by the periodic sweep; a request still holding one when it is swept frees it as it ends. An
//! idle worker keeps its old copy (and the old snapshot) until its next request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;

use super::model::{ApiKey, Config, Limit, LimitSet, Plan, Route};
use crate::limiter::LimitSpec;
use crate::sync::{lock, PerThread};

/// The worker threads' copies of the config in force.
pub struct ConfigCopies {
    /// Each thread's copy, with the snapshot it was copied from.
    per_thread: PerThread<RefCell<Option<ThreadConfig>>>,
    /// How many threads have a copy.
    readers: AtomicUsize,
    /// Copies of the snapshot in force made by a reload ahead of time.
    prepared: Mutex<Vec<ThreadConfig>>,
    /// Copies the threads moved on from, for the sweep to free.
    retired: Mutex<Vec<ThreadConfig>>,
}

/// One thread's copy of a config snapshot. Holding `source` keeps its address from being
/// reused, so comparing addresses tells whether the copy is still current.
struct ThreadConfig {
    source: Arc<Config>,
    config: Arc<Config>,
}

impl ThreadConfig {
    fn of(source: Arc<Config>) -> Self {
        let config = Arc::new(source.thread_copy());
        ThreadConfig { source, config }
    }
}

impl ConfigCopies {
    /// No copies yet.
    pub fn new() -> Self {
        ConfigCopies {
            per_thread: PerThread::new(),
            readers: AtomicUsize::new(0),
            prepared: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// This thread's copy of the snapshot in `config`: the same values as `config.load()`.
    pub fn current(&self, config: &ArcSwap<Config>) -> Arc<Config> {
        let current = config.load();
        let mut slot = self
            .per_thread
            .get_or(|| {
                self.readers.fetch_add(1, Ordering::Relaxed);
                RefCell::new(None)
            })
            .borrow_mut();
        match &*slot {
            Some(copy) if Arc::ptr_eq(&copy.source, &current) => copy.config.clone(),
            _ => {
                let copy = self
                    .take_prepared(&current)
                    .unwrap_or_else(|| ThreadConfig::of(arc_swap::Guard::into_inner(current)));
                let config = copy.config.clone();
                if let Some(old) = slot.replace(copy) {
                    lock(&self.retired).push(old);
                }
                config
            }
        }
    }

    /// Stores `next` in `config`, with one copy made first for each thread that has one of
    /// the snapshot before.
    pub fn install(&self, config: &ArcSwap<Config>, next: Arc<Config>) {
        let copies = (0..self.readers.load(Ordering::Relaxed))
            .map(|_| ThreadConfig::of(next.clone()))
            .collect();
        // The copies of an earlier reload that no thread took go to the sweep too.
        let unused = std::mem::replace(&mut *lock(&self.prepared), copies);
        lock(&self.retired).extend(unused);
        config.store(next);
    }

    /// Frees the copies threads have moved on from.
    pub fn release_retired(&self) {
        let retired = std::mem::take(&mut *lock(&self.retired));
        drop(retired);
    }

    fn take_prepared(&self, current: &Arc<Config>) -> Option<ThreadConfig> {
        let mut prepared = lock(&self.prepared);
        let i = prepared
            .iter()
            .position(|copy| Arc::ptr_eq(&copy.source, current))?;
        Some(prepared.swap_remove(i))
    }

    /// Copies made ahead and not taken yet (tests).
    #[cfg(test)]
    pub fn prepared_count(&self) -> usize {
        lock(&self.prepared).len()
    }

    /// Copies waiting for the sweep (tests).
    #[cfg(test)]
    pub fn retired_count(&self) -> usize {
        lock(&self.retired).len()
    }
}

impl Default for ConfigCopies {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// An equal config that shares no reference-counted value with `self`.
    pub fn thread_copy(&self) -> Config {
        let plans: HashMap<Arc<str>, Arc<Plan>> = self
            .plans
            .iter()
            .map(|(name, plan)| (Arc::clone(name), Arc::new(plan.thread_copy())))
            .collect();
        let keys = self
            .keys
            .iter()
            .map(|(hash, key)| {
                let plan = plans
                    .get(&key.plan.name)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(key.plan.thread_copy()));
                let key = ApiKey {
                    id: Arc::from(&*key.id),
                    header: value_copy(&key.header),
                    plan,
                };
                (*hash, Arc::new(key))
            })
            .collect();
        Config {
            server: self.server.clone(),
            admin_listen: self.admin_listen,
            routes: self.routes.iter().map(Route::thread_copy).collect(),
            plans,
            keys,
            limiter: self.limiter.clone(),
            abuse: self.abuse.clone(),
            sources: self.sources.clone(),
        }
    }
}

impl Plan {
    fn thread_copy(&self) -> Plan {
        Plan {
            name: Arc::from(&*self.name),
            header: value_copy(&self.header),
            limits: self
                .limits
                .iter()
                .map(|limit| Limit {
                    spec: spec_copy(&limit.spec),
                    route: limit.route,
                })
                .collect(),
            by_route: self.by_route.iter().map(LimitSet::thread_copy).collect(),
            unrouted: self.unrouted.thread_copy(),
        }
    }
}

impl LimitSet {
    fn thread_copy(&self) -> LimitSet {
        LimitSet {
            specs: self.specs.iter().map(spec_copy).collect(),
            policy: value_copy(&self.policy),
            maxima: self
                .maxima
                .as_ref()
                .map(|maxima| maxima.iter().map(value_copy).collect()),
        }
    }
}

impl Route {
    fn thread_copy(&self) -> Route {
        Route {
            name: Arc::from(&*self.name),
            ..self.clone()
        }
    }
}

/// `HeaderValue::clone` would share the bytes' reference count; this copies them.
fn value_copy(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
}

fn spec_copy(spec: &LimitSpec) -> LimitSpec {
    LimitSpec {
        name: Arc::from(&*spec.name),
        ..spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_thread_copy_is_equal_and_shares_no_reference_count_the_request_path_clones() {
        let text = crate::config::tests::base("", "");
        let config = crate::config::load_str(&text, Path::new("t.toml")).expect("config");
        let copy = config.thread_copy();
        assert_eq!(copy.summary(), config.summary());
        let (hash, key) = config.keys.iter().next().expect("a key");
        let copied = &copy.keys[hash];
        assert_eq!(copied.id, key.id);
        assert!(!std::sync::Arc::ptr_eq(&copied.id, &key.id));
        assert_eq!(copied.header, key.header);
        assert_eq!(key.header.as_bytes(), key.id.as_bytes());
        assert_ne!(
            copied.header.as_bytes().as_ptr(),
            key.header.as_bytes().as_ptr()
        );
        assert!(!std::sync::Arc::ptr_eq(&copied.plan, &key.plan));
        assert!(std::sync::Arc::ptr_eq(&copied.plan, &copy.plans["free"]));
        // The limits of a request to the `spawn` route (mask bit 0).
        let (a, b) = (key.plan.limits_for(1), copied.plan.limits_for(1));
        assert_eq!(a.policy, b.policy);
        assert_eq!(a.specs.len(), 2);
        assert_eq!(b.specs.len(), 2);
        assert!(!std::sync::Arc::ptr_eq(&a.specs, &b.specs));
        assert_ne!(a.policy.as_bytes().as_ptr(), b.policy.as_bytes().as_ptr());
        let (a_max, b_max) = (a.maxima.expect("built at load"), b.maxima.expect("copied"));
        assert_eq!(a_max, b_max);
        assert_eq!(b_max.len(), 2);
        assert!(!std::sync::Arc::ptr_eq(&a_max, &b_max));
        for (x, y) in a_max.iter().zip(b_max.iter()) {
            assert_ne!(x.as_bytes().as_ptr(), y.as_bytes().as_ptr());
        }
        assert_eq!(copied.plan.header, "free");
        assert_eq!(copied.plan.header, key.plan.header);
        assert_ne!(
            copied.plan.header.as_bytes().as_ptr(),
            key.plan.header.as_bytes().as_ptr()
        );
        for (x, y) in a.specs.iter().zip(b.specs.iter()) {
            assert_eq!(x.name, y.name);
            assert!(!std::sync::Arc::ptr_eq(&x.name, &y.name));
        }
        assert_eq!(copy.routes[0].name, config.routes[0].name);
        assert!(!std::sync::Arc::ptr_eq(
            &copy.routes[0].name,
            &config.routes[0].name
        ));
    }
}
