//! Hot reload: validate the whole new file, then swap it in atomically, or keep the old one.
//!
//! Like envoyproxy/ratelimit, the new config is built entirely outside the swap; requests hold
//! the snapshot they started with (`RequestCtx::config`), so no request ever sees a mix. The
//! limiter's state is keyed by (key id, limit name), so it carries over by itself; only state of
//! keys and limits that no longer exist is freed here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{load, Config, ConfigError};
use crate::state::Shared;

/// Reloads one config file into the shared state.
pub struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
}

impl Reloader {
    /// A reloader for the file the gateway was started with.
    pub fn new(shared: Arc<Shared>, path: PathBuf) -> Self {
        Reloader { shared, path }
    }

    /// The file being reloaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the file again; on success swaps it in, on failure keeps the running config.
    pub fn reload(&self, trigger: &str) -> Result<(), ConfigError> {
        match load(&self.path) {
            Ok(mut next) => {
                let current = self.shared.config.load_full();
                keep_restart_only_settings(&current, &mut next);
                self.free_removed_state(&next);
                if let (Some(store), Some(tls)) = (&self.shared.tls, &next.server.tls) {
                    store.replace(tls.pair.clone());
                }
                self.shared.install_config(Arc::new(next));
                self.shared.metrics.record_reload(true);
                tracing::info!(trigger, path = %self.path.display(), "config reloaded");
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.record_reload(false);
                tracing::error!(
                    trigger,
                    "config reload refused, keeping the running config: {e}"
                );
                Err(e)
            }
        }
    }

    /// Drops window state of keys that are gone and of limits their plan no longer has.
    fn free_removed_state(&self, next: &Config) {
        let limits_by_key: HashMap<&str, &super::Plan> =
            next.keys.values().map(|k| (&*k.id, &*k.plan)).collect();
        self.shared.limiter.memory().retain(|key_id, limit| {
            limits_by_key
                .get(key_id)
                .is_some_and(|plan| plan.limits.iter().any(|l| &*l.spec.name == limit))
        });
    }
}

/// Settings bound at start-up cannot change live: report them and keep the running values, so
/// the snapshot always describes what the process really does.
fn keep_restart_only_settings(current: &Config, next: &mut Config) {
    let mut needs_restart = Vec::new();
    if next.server.listen != current.server.listen {
        needs_restart.push("server.listen");
        next.server.listen = current.server.listen.clone();
    }
    if next.server.drain_timeout != current.server.drain_timeout {
        // Pingora takes its grace period once, when the server is built.
        needs_restart.push("server.drain_timeout_s");
        next.server.drain_timeout = current.server.drain_timeout;
    }
    if next.admin_listen != current.admin_listen {
        needs_restart.push("admin.listen");
        next.admin_listen = current.admin_listen;
    }
    // A new certificate pair is served live (see `Reloader::reload`); switching HTTPS on or off
    // needs new listeners.
    if next.server.tls.is_some() != current.server.tls.is_some() {
        needs_restart.push("server.tls_cert/tls_key (HTTPS on or off)");
        next.server.tls = current.server.tls.clone();
    }
    if next.limiter.backend != current.limiter.backend {
        needs_restart.push("limiter.backend/redis_url");
        next.limiter.backend = current.limiter.backend.clone();
    }
    for setting in needs_restart {
        tracing::warn!("{setting} changed: this needs a restart; the running value stays in force");
    }
}
