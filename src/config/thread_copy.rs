//! A copy of a config snapshot for one worker thread.
//!
//! Every request holds its config snapshot, its key and its limit set by `Arc`. Cloning and
//! dropping an `Arc` writes its reference count, so with one shared snapshot every request
//! wrote cache lines that the other worker threads write too, and waited for each line to come
//! over from another core. Each worker thread serves requests from its own copy instead (see
//! `Shared::request_config`): the same values, with reference counts of its own.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;

use super::model::{ApiKey, Config, LimitSet, Plan};

impl Config {
    /// An equal config that shares no reference-counted value the request path clones.
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
                    plan,
                };
                (*hash, Arc::new(key))
            })
            .collect();
        Config {
            server: self.server.clone(),
            admin_listen: self.admin_listen,
            routes: self.routes.clone(),
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
            limits: self.limits.clone(),
            by_route: self.by_route.iter().map(LimitSet::thread_copy).collect(),
            unrouted: self.unrouted.thread_copy(),
        }
    }
}

impl LimitSet {
    fn thread_copy(&self) -> LimitSet {
        LimitSet {
            specs: self.specs.iter().cloned().collect(),
            // `HeaderValue::clone` would share the bytes' reference count; this copies them.
            policy: HeaderValue::from_bytes(self.policy.as_bytes())
                .unwrap_or_else(|_| self.policy.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:9000"

[admin]
listen = "127.0.0.1:9090"

[[routes]]
name = "spawn"
method = "POST"
path = "/api/v1/agents"

[[plans]]
name = "free"
limits = [
  { name = "spawns_per_minute", route = "spawn", max = 5, window = "1m" },
  { name = "requests_per_day", max = 10000, window = "24h" },
]

[[keys]]
id = "key_a"
plan = "free"
sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
"#;

    #[test]
    fn a_thread_copy_is_equal_and_shares_no_reference_count_the_request_path_clones() {
        let config = crate::config::load_str(CONFIG, Path::new("t.toml")).expect("config");
        let copy = config.thread_copy();
        assert_eq!(copy.summary(), config.summary());
        let (hash, key) = config.keys.iter().next().expect("a key");
        let copied = &copy.keys[hash];
        assert_eq!(copied.id, key.id);
        assert!(!std::sync::Arc::ptr_eq(&copied.id, &key.id));
        assert!(!std::sync::Arc::ptr_eq(&copied.plan, &key.plan));
        assert!(std::sync::Arc::ptr_eq(&copied.plan, &copy.plans["free"]));
        for mask in [0, 1] {
            let (a, b) = (key.plan.limits_for(mask), copied.plan.limits_for(mask));
            assert_eq!(a.policy, b.policy);
            assert_eq!(a.specs.len(), b.specs.len());
            assert!(!std::sync::Arc::ptr_eq(&a.specs, &b.specs));
            assert_ne!(a.policy.as_bytes().as_ptr(), b.policy.as_bytes().as_ptr());
        }
    }
}
