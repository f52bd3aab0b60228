//! The control thread: SIGHUP and file-change reloads (the watcher is `config::watch`),
//! periodic sweeping of idle window state, and a graceful exit as soon as a SIGTERM drain is
//! complete.
//!
//! It runs on its own small tokio runtime, started (with its SIGHUP handler installed) before
//! Pingora serves anything, so an early SIGHUP can never hit the default "terminate" action.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pingora::server::ExecutionPhase;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc};

use crate::config::reload::Reloader;
use crate::config::watch::FileWatch;
use crate::state::Shared;

/// File events closer together than this are one change (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(250);
/// How often idle window state is dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Starts the control thread; returns once the SIGHUP handler is installed.
pub fn start(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    phases: broadcast::Receiver<ExecutionPhase>,
) -> std::io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let signals = match (
                    signal(SignalKind::hangup()),
                    signal(SignalKind::interrupt()),
                ) {
                    (Ok(hup), Ok(int)) => Signals { hup, int },
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                control_loop(shared, config_path, signals, phases).await;
            });
        })?;
    ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("control thread died at start"))?
}

/// The signals the control thread handles itself.
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

async fn control_loop(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    mut signals: Signals,
    mut phases: broadcast::Receiver<ExecutionPhase>,
) {
    let reloader = config_path.map(|p| Reloader::new(shared.clone(), p));
    let (fs_tx, mut fs_rx) = mpsc::unbounded_channel();
    let mut watch = reloader
        .as_ref()
        .and_then(|_| FileWatch::start(&shared, fs_tx));
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = signals.int.recv() => {
                // Pingora's own fast shutdown can spin in its accept loops instead of exiting;
                // the contract says SIGINT exits at once, so do exactly that.
                shared.access_log.drain(Duration::from_millis(200));
                std::process::exit(0);
            },
            _ = signals.hup.recv() => match &reloader {
                Some(r) => { reload(r, &mut watch, "SIGHUP"); }
                None => tracing::info!("SIGHUP ignored: the demo config is built in"),
            },
            Some(()) = fs_rx.recv() => {
                // Let the burst of events from one save settle, then reload once.
                tokio::time::sleep(DEBOUNCE).await;
                while fs_rx.try_recv().is_ok() {}
                if let (Some(r), Some(w)) = (&reloader, &mut watch) {
                    if shared.config.load().server.watch && w.files_changed() {
                        reload(r, &mut watch, "file change");
                    }
                }
            },
            _ = sweep.tick() => {
                shared.limiter.memory().sweep();
                shared.abuse.sweep();
                shared.release_old_configs();
                shared.metrics.limiter_keys.set(shared.limiter.memory().key_count() as i64);
            },
            phase = phases.recv() => match phase {
                // A task of its own, so that this loop still answers SIGINT while draining.
                Ok(ExecutionPhase::GracefulTerminate) => { tokio::spawn(drain_then_exit(shared.clone())); }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            },
        }
    }
}

fn reload(reloader: &Reloader, watch: &mut Option<FileWatch>, trigger: &str) {
    let _ = reloader.reload(trigger);
    // Remember what was seen, good or bad, so one bad save is reported once, not on every event.
    if let Some(w) = watch {
        w.refresh();
    }
}

/// SIGTERM: Pingora has stopped accepting; exit as soon as the requests in flight are done
/// (Pingora's own grace period, `drain_timeout_s`, is the upper bound).
async fn drain_then_exit(shared: Arc<Shared>) {
    shared.draining.store(true, Ordering::Release);
    tracing::info!("SIGTERM: draining in-flight requests");
    // Connections accepted just before the signal need a moment to become requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while shared.inflight() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.access_log.drain(Duration::from_secs(2));
    tracing::info!("drained; exiting");
    std::process::exit(0)
}
