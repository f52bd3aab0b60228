//! Watching the config file and `keys_file` for changes on disk.
//!
//! The parent directories are watched, not the files: editors that write a new file and rename
//! it over the old one, and Kubernetes ConfigMap symlink swaps, replace the inode. Events are
//! filtered by file name, and a reload is asked for only when the files' bytes changed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::state::Shared;

/// Whether a file event concerns the config file, `keys_file`, or a Kubernetes ConfigMap
/// swap (`..data`): other files in the same directory (an access log, say) must not wake us.
fn touches_config(shared: &Shared, event: &notify::Event) -> bool {
    let config = shared.config.load();
    let names: Vec<&std::ffi::OsStr> = std::iter::once(&config.sources.config_path)
        .chain(config.sources.keys_path.as_ref())
        .filter_map(|p| p.file_name())
        .collect();
    event
        .paths
        .iter()
        .filter_map(|p| p.file_name())
        .any(|name| names.contains(&name) || name.to_string_lossy().starts_with(".."))
}

/// Watches the directories of the config file and `keys_file` (not the files: editors that
/// rename a new file over the old one, and Kubernetes' symlink swaps, replace the inode).
pub(crate) struct FileWatch {
    shared: Arc<Shared>,
    watcher: notify::RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    fingerprint: Vec<u8>,
}

impl FileWatch {
    /// Starts watching; `None` (with a warning) when the platform has no watcher.
    pub(crate) fn start(shared: &Arc<Shared>, tx: mpsc::UnboundedSender<()>) -> Option<Self> {
        let watched = shared.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| touches_config(&watched, &e)) {
                let _ = tx.send(());
            }
        });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("file watching unavailable, SIGHUP still reloads: {e}");
                return None;
            }
        };
        let mut w = FileWatch {
            shared: shared.clone(),
            watcher,
            dirs: HashSet::new(),
            fingerprint: Vec::new(),
        };
        w.refresh();
        Some(w)
    }

    fn files(&self) -> Vec<PathBuf> {
        let cfg = self.shared.config.load();
        let mut files = vec![cfg.sources.config_path.clone()];
        files.extend(cfg.sources.keys_path.clone());
        files
    }

    /// Watches the directories of the current files and remembers their contents.
    pub(crate) fn refresh(&mut self) {
        for file in self.files() {
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if self.dirs.insert(dir.clone()) {
                if let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!("cannot watch {}: {e}", dir.display());
                }
            }
        }
        self.fingerprint = self.read_all();
    }

    fn read_all(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for f in self.files() {
            all.extend(std::fs::read(&f).unwrap_or_default());
            all.push(0);
        }
        all
    }

    /// Whether the watched files differ from what was last loaded (ignores unrelated events).
    pub(crate) fn files_changed(&mut self) -> bool {
        self.read_all() != self.fingerprint
    }
}
