//! The shared life of a watching daemon: load config, start logging, take the single-instance
//! lock, long-poll one metadata subtree and hand each new snapshot to the service, then report to
//! systemd (`READY=1` after the first apply, `STATUS=` after each, `WATCHDOG=1`, `STOPPING=1`)
//! and handle SIGTERM/SIGINT (stop) and SIGHUP (reload config).
//!
//! The watcher runs in its own task and publishes into a `watch` channel, so a service's own
//! wakeups (an expiry timer, netlink events) never cancel the long poll, and a slow apply only
//! ever sees the newest snapshot.

use crate::cli::CommonArgs;
use crate::config::Config;
use crate::lock::InstanceLock;
use crate::signals::{Signal, Signals};
use crate::{logging, notify};
use anyhow::Context;
use gce_metadata::{Client, ClientOptions, Snapshot, Watcher, WatcherOptions};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;
use tracing::{error, info, warn};

/// What a daemon does with metadata. Everything has a default except the two essentials.
pub trait Service {
    type Snapshot: DeserializeOwned + Clone + Send + Sync + 'static;

    /// The metadata subtree to long-poll, relative to the base URL (`""` is the root).
    fn watch_path(&self) -> String;

    /// Make the machine match a new snapshot; returns a one-line summary for `STATUS=`.
    fn apply(
        &mut self,
        snap: &Snapshot<Self::Snapshot>,
    ) -> impl Future<Output = anyhow::Result<String>>;

    /// Resolves when the service has its own reason to act (a timer, a kernel event). Must be
    /// cancel-safe: it is raced against new snapshots and signals.
    fn wakeup(&mut self) -> impl Future<Output = ()> {
        std::future::pending()
    }

    /// Called after [`Service::wakeup`] resolved; returns a new status line, if any.
    fn on_wakeup(&mut self) -> impl Future<Output = anyhow::Result<Option<String>>> {
        async { Ok(None) }
    }

    /// A new configuration after SIGHUP.
    fn reload(&mut self, _config: &Config) -> impl Future<Output = ()> {
        async {}
    }
}

/// How long a daemon waits for its first snapshot before telling systemd it is ready anyway:
/// with the metadata server down at boot, units ordered after us (sshd) must still start.
pub const READY_GRACE: Duration = Duration::from_secs(20);

/// Load config and logging for `name`; returns the config. Warnings are logged once logging is up.
pub fn start(name: &str, args: &CommonArgs) -> Config {
    let (config, warnings) = Config::load(&args.config_paths());
    let level = args.effective_log_level(&config);
    if let Err(e) = logging::init(name, &level) {
        eprintln!("{name}: logging could not be initialised: {e}");
    }
    for w in warnings {
        warn!("configuration: {w}");
    }
    config
}

/// Run `service` until SIGTERM (or after one snapshot with `--once`).
pub async fn run<S, F>(name: &str, args: &CommonArgs, config: Config, make: F) -> anyhow::Result<()>
where
    S: Service,
    F: FnOnce(&Config, Client) -> anyhow::Result<S>,
{
    let _lock = InstanceLock::acquire(&args.lock_path(name))?;
    let endpoint = config.metadata_endpoint();
    let client = config
        .metadata_client(ClientOptions::default())
        .context("metadata client")?;
    let mut service = make(&config, client.clone())?;
    let path = service.watch_path();
    info!(METADATA = %endpoint, WATCH = %path, "{name} {} starting", env!("CARGO_PKG_VERSION"));

    let (tx, mut rx) = tokio::sync::watch::channel::<Option<Snapshot<S::Snapshot>>>(None);
    let mut watcher = Watcher::new(client, &path, WatcherOptions::default());
    let poller = tokio::spawn(async move {
        loop {
            let snap = watcher.next::<S::Snapshot>().await;
            if tx.send(Some(snap)).is_err() {
                return;
            }
        }
    });
    let _poller = AbortOnDrop(poller);
    let mut signals = Signals::new().context("installing signal handlers")?;
    let _watchdog = notify::spawn_watchdog().map(AbortOnDrop);
    let mut ready = false;
    let grace = tokio::time::sleep(READY_GRACE);
    tokio::pin!(grace);
    let mut config = config;
    // Freed heap goes back to the kernel once the daemon has been quiet for a moment (not after
    // every apply: a burst of changes would then page-fault its working set back in each time).
    let trim = tokio::time::sleep(TRIM_AFTER);
    tokio::pin!(trim);
    let mut trim_pending = false;

    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("metadata watcher stopped");
                }
                let snap = rx.borrow_and_update().clone();
                let Some(snap) = snap else { continue };
                match service.apply(&snap).await {
                    Ok(status) => {
                        notify::status(&status);
                        if !ready {
                            notify::ready();
                            ready = true;
                            info!(ETAG = %snap.etag, "first snapshot applied: {status}");
                        }
                    }
                    Err(e) => error!(ETAG = %snap.etag, "applying metadata failed, will retry on the next change: {e:#}"),
                }
                trim.as_mut().reset(tokio::time::Instant::now() + TRIM_AFTER);
                trim_pending = true;
                if args.once {
                    return Ok(());
                }
            }
            () = service.wakeup() => {
                match service.on_wakeup().await {
                    Ok(Some(status)) => notify::status(&status),
                    Ok(None) => {}
                    Err(e) => error!("{e:#}"),
                }
                trim.as_mut().reset(tokio::time::Instant::now() + TRIM_AFTER);
                trim_pending = true;
            }
            () = &mut trim, if trim_pending => {
                trim_pending = false;
                release_free_heap();
            }
            () = &mut grace, if !ready => {
                ready = true;
                warn!("no metadata snapshot within {READY_GRACE:?}; reporting ready and continuing to retry");
                notify::status("waiting for the metadata server");
                notify::ready();
            }
            sig = signals.recv() => match sig {
                Signal::Terminate => {
                    info!("{name} stopping");
                    notify::stopping();
                    return Ok(());
                }
                Signal::Reload => {
                    notify::reloading();
                    let (new, warnings) = Config::load(&args.config_paths());
                    for w in warnings {
                        warn!("configuration: {w}");
                    }
                    if new.metadata_endpoint() != config.metadata_endpoint() {
                        warn!("the metadata server address changed; it takes effect on restart");
                    }
                    service.reload(&new).await;
                    config = new;
                    info!("configuration reloaded");
                    notify::ready();
                }
            }
        }
    }
}

/// Quiet time after an apply before freed heap is returned to the kernel.
const TRIM_AFTER: Duration = Duration::from_secs(2);

/// Hands freed heap pages back to the kernel once the daemon is idle. glibc keeps them otherwise: a daemon
/// that once handled a thousand users would idle with that peak as its resident size.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
